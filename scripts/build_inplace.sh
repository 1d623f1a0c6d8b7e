#!/usr/bin/env bash
# Build the native extension trmcore._C for a source checkout and copy it into
# python/trmcore/, so that `PYTHONPATH=python python -c "import trmcore._C"` works.
#
# Usage: bash scripts/build_inplace.sh [--cuda] [--clean]
#   --cuda    also build the CUDA kernels (needs nvcc; default is CPU-only, faster)
#   --clean   remove build/ first
# Environment: PYTHON (default: /work/venv/bin/python if present, else python3),
#   TRMCORE_CUDA=AUTO|ON|OFF overrides the CUDA choice, BUILD_DIR (default build),
#   JOBS (parallel build jobs, default: number of CPUs), CUDAARCHS (CMake's own
#   variable: CUDA architectures to build for, e.g. 90; default: sm_75..sm_90 + PTX).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

cuda="${TRMCORE_CUDA:-OFF}"
clean=0
for arg in "$@"; do
  case "$arg" in
    --cuda) cuda=ON ;;
    --clean) clean=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "build_inplace.sh: unknown argument '$arg' (expected --cuda or --clean)" >&2; exit 2 ;;
  esac
done

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x /work/venv/bin/python ]]; then PYTHON=/work/venv/bin/python; else PYTHON="$(command -v python3)"; fi
fi
build_dir="${BUILD_DIR:-build}"
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

if [[ "$clean" == 1 ]]; then rm -rf "$build_dir"; fi

pybind11_dir="$("$PYTHON" -m pybind11 --cmakedir)"
generator=()
if command -v ninja >/dev/null 2>&1 && [[ ! -f "$build_dir/CMakeCache.txt" ]]; then generator=(-G Ninja); fi
# CMakeLists.txt sets its own architecture list unless one is given, so pass CUDAARCHS on.
cuda_archs=()
if [[ -n "${CUDAARCHS:-}" ]]; then cuda_archs=(-DCMAKE_CUDA_ARCHITECTURES="$CUDAARCHS"); fi

cmake -S . -B "$build_dir" "${generator[@]}" "${cuda_archs[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DTRMCORE_CUDA="$cuda" \
  -DPython_EXECUTABLE="$PYTHON" \
  -Dpybind11_DIR="$pybind11_dir" >/dev/null
cmake --build "$build_dir" --parallel "$jobs"

shopt -s nullglob
built=("$build_dir"/_C*.so)
if [[ ${#built[@]} -ne 1 ]]; then
  echo "build_inplace.sh: expected exactly one _C*.so in $build_dir, found ${#built[@]}" >&2
  exit 1
fi
rm -f python/trmcore/_C*.so
cp "${built[0]}" python/trmcore/
echo "built $(basename "${built[0]}") (TRMCORE_CUDA=$cuda) -> python/trmcore/"

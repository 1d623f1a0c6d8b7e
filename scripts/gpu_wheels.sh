#!/usr/bin/env bash
# Download the wheels that scripts/gpu_check.sh installs on a GPU machine without
# internet (the list and why: scripts/gpu_wheels.txt), for Python 3.12, pure
# Python only.
#
# Usage: bash scripts/gpu_wheels.sh [DIR]     (default DIR: .wheels, git-ignored)
# Then run the check with TRM_WHEELS=DIR (the default is .wheels too).
# Environment: PYTHON (default python3), the pip of which does the download.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$repo/.wheels}"
case "$dir" in -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
PYTHON="${PYTHON:-python3}"

requirements=()
while read -r module requirement _; do
  [[ -z "$module" || "$module" == \#* ]] && continue
  requirements+=("$requirement")
done < "$repo/scripts/gpu_wheels.txt"

mkdir -p "$dir"
# --only-binary + --platform any: a pure-Python wheel or nothing (a compiled
# wheel for this machine could not load there anyway).
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
  --platform any -d "$dir" "${requirements[@]}"
ls -l "$dir"
echo "carry $dir to the GPU machine (its size counts toward the device tool's 64 MiB) and run"
echo "  TRM_WHEELS=$dir bash scripts/gpu_check.sh OUT"

#!/usr/bin/env bash
# The GPU check in one command (issue 13): build trmcore with CUDA for this GPU
# only, run the CUDA tests, benchmarks/bench_ops.py --device cuda (GB/s against
# a device-to-device copy of the same run; target >= 70%), train a source U-Net
# and fine-tune it with each method (vanilla, class-weight, trs-map, trm) for
# 200 AMP iterations on a phantom, then the rest of the test suite as far as
# time allows; write OUT/summary.md (and .json) and the logs.
#
# Usage: bash scripts/gpu_check.sh [--dry-run] [--rehearse] [--no-build] [--overwrite] OUT
#   --dry-run    print the GPU path's commands (for this GPU, else sm_${TRM_CUDA_ARCH:-90}); run nothing
#   --rehearse   run the GPU path's steps on the CPU (CPU build, --device cpu): checks the script itself
#   --no-build   use the extension already in python/trmcore (a rerun on the same machine)
#   --overwrite  replace the files of an earlier check in OUT (OUT must otherwise be empty or new)
# Environment:
#   PYTHON              interpreter with torch (default python3)
#   TRM_WHEELS          folder of wheels for packages the machine lacks (default .wheels;
#                       the list: scripts/gpu_wheels.txt, fetched by scripts/gpu_wheels.sh)
#   TRM_CUDA_ARCH       compute capability to build for, e.g. 90 (default: the GPU's own)
#   TRM_GPU_BUDGET_S    seconds for the whole check (default 480); steps that no longer fit are skipped
#   TRM_GPU_ITERATIONS  training iterations per run (default 200)
#   TRM_GPU_WORK        scratch folder, kept (default: a new temporary folder, removed at the end);
#                       the check replaces its data/, runs/, site/, bench.json and junit-*.xml
# OUT receives at most 8 files (what the device tool brings back): summary.md,
# summary.json, env.log, build.log, tests.log, bench.log, train.log.
# Exit status: 0 when no step failed (also on a machine without a GPU, which
# builds what it can, says what it could not prepare - no wheels folder, no
# torch, no pybind11 - and prints "no GPU: skipped ..."), 1 when a step failed,
# 2 on bad usage.
set -uo pipefail  # no -e: a failed step is recorded and the next one runs

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 2

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; }
dry=0 rehearse=0 build=1 overwrite=0 out=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry=1 ;;
    --rehearse) rehearse=1 ;;
    --no-build) build=0 ;;
    --overwrite) overwrite=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option '$arg'" >&2; usage >&2; exit 2 ;;
    *) if [[ -n "$out" ]]; then echo "gpu_check.sh: one OUT folder only" >&2; exit 2; fi; out="$arg" ;;
  esac
done
if [[ -z "$out" ]]; then echo "gpu_check.sh: missing OUT folder" >&2; usage >&2; exit 2; fi
if (( dry && rehearse )); then echo "gpu_check.sh: --dry-run and --rehearse exclude each other" >&2; exit 2; fi

# An absolute path: CMake's FindPython and the steps run from other folders.
if ! PY="$(command -v "${PYTHON:-python3}")"; then echo "gpu_check.sh: no Python '${PYTHON:-python3}'" >&2; exit 2; fi

OUT_FILES=(summary.md summary.json env.log build.log tests.log bench.log train.log)
mkdir -p "$out" || { echo "gpu_check.sh: cannot create $out" >&2; exit 2; }
out="$(cd "$out" && pwd)"
if [[ -n "$(ls -A "$out")" ]]; then
  if (( ! overwrite )); then
    echo "gpu_check.sh: $out is not empty; pass --overwrite to replace an earlier check's files" >&2
    exit 2
  fi
  for name in "${OUT_FILES[@]}"; do rm -f "$out/$name"; done
fi

# A rehearsal runs on CPU cores: a smaller phantom and model, 3x the time limits.
if (( rehearse )); then budget="${TRM_GPU_BUDGET_S:-1500}" limit_scale=3; else budget="${TRM_GPU_BUDGET_S:-480}" limit_scale=1; fi
iterations="${TRM_GPU_ITERATIONS:-200}"
wheels="${TRM_WHEELS:-$repo/.wheels}"
if [[ -n "${TRM_GPU_WORK:-}" ]]; then
  work="$TRM_GPU_WORK"; mkdir -p "$work" || exit 2; keep_work=1
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/trm-gpu-check.XXXXXX")" || exit 2; keep_work=0
fi
work="$(cd "$work" && pwd)"
# An earlier check's scratch files would mix into this one's summary.
rm -rf "$work/data" "$work/runs" "$work/site" "$work/bench.json" "$work"/junit-*.xml
: > "$work/steps.tsv"; : > "$work/meta.tsv"
cleanup() { if (( ! keep_work )); then rm -rf "$work"; fi; }
trap cleanup EXIT

t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
say() { printf '[%s +%3ds] %s\n' "$(date -u +%H:%M:%S)" "$(elapsed)" "$*"; }
meta() { printf '%s\t%s\n' "$1" "${2//$'\t'/ }" >> "$work/meta.tsv"; }
summarize() { "$PY" "$repo/scripts/gpu_summary.py" write "$work" "$out" || say "(summary could not be written)"; }
record() {  # record NAME STATUS SECONDS NOTE: a step's result; the summary is rewritten after each step run
  local note="${4//$'\t'/ }"
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${note//$'\n'/ }" >> "$work/steps.tsv"
  if [[ "$2" == ok || "$2" == FAILED* || "$2" == TIMEOUT* ]]; then summarize; fi
}
failures=0
step_failed() { failures=$((failures + 1)); }

# run_step NAME LIMIT_S LOG CMD...: run CMD (output appended to OUT/LOG) under a
# time limit cut to what is left of the budget; record ok / FAILED / TIMEOUT.
run_step() {
  local name="$1" limit=$(( $2 * limit_scale )) log="$3"; shift 3
  local left=$(( budget - $(elapsed) ))
  if (( left < 15 )); then
    say "-- $name: skipped, the ${budget}s budget is spent"
    record "$name" "skipped (time budget)" 0 ""
    return 3
  fi
  (( limit > left )) && limit=$left
  say ">> $name (limit ${limit}s): $(printf '%q ' "$@")"
  if (( dry )); then record "$name" "dry-run" 0 "$(printf '%q ' "$@")"; return 0; fi
  printf '\n===== %s %s (limit %ss)\n$ %s\n' "$(date -u +%FT%TZ)" "$name" "$limit" "$(printf '%q ' "$@")" >> "$out/$log"
  local start rc seconds status note="${STEP_NOTE:-}"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$work/step.out" 2>&1
  rc=$?
  seconds=$(( $(date +%s) - start ))
  cat "$work/step.out" >> "$out/$log"
  if (( rc == 0 )); then status="ok"
  else
    # The last line of its output usually names the cause (an exception, a compiler error, pytest's tally).
    note="$(grep -v '^[[:space:]]*$' "$work/step.out" | tail -n 1 | cut -c 1-240)"
    if [[ -n "${PREPARE_STEP:-}" ]]; then
      status="not prepared (exit $rc)"; unprepared+=("$name: $note")  # no GPU: said, not a failure
    else
      if (( rc == 124 || rc == 137 )); then status="TIMEOUT after ${limit}s"; else status="FAILED (exit $rc)"; fi
      step_failed
    fi
  fi
  printf '===== %s: %s in %ss\n' "$name" "$status" "$seconds" >> "$out/$log"
  if (( rc == 0 )); then say "<< $name: ok (${seconds}s, log: $log)"
  else say "<< $name: $status (${seconds}s, log: $log): $note"; fi
  record "$name" "$status" "$seconds" "$note"
  return "$rc"
}
skip_step() {  # skip_step NAME REASON
  say "-- $1: skipped ($2)"
  record "$1" "skipped ($2)" 0 ""
}
# What a machine without a GPU lacks to build or test (no pybind11, no torch, no wheels folder) is said and
# listed at the end, not counted as a failure: the check's promise there is "no GPU: skipped", exit 0.
unprepared=()
not_prepared() {  # not_prepared NAME REASON
  say "-- $1: not prepared ($2)"
  record "$1" "not prepared" 0 "$2"
  unprepared+=("$1: $2")
}

# ---------------------------------------------------------------- environment
say "trmcore GPU check -> $out (work: $work, budget ${budget}s)"
meta started "$(date -u +%FT%TZ)"
meta cpus "$(nproc 2>/dev/null || echo '?')"
if commit="$(git rev-parse --short HEAD 2>/dev/null)"; then
  git diff --quiet HEAD 2>/dev/null || commit="$commit + local changes"
  meta commit "$commit"
fi
if ! command -v nvcc >/dev/null 2>&1; then
  # CUDA images often keep nvcc out of PATH.
  for candidate in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [[ -n "$candidate" && -x "$candidate/bin/nvcc" ]]; then export PATH="$candidate/bin:$PATH"; break; fi
  done
fi
nvcc_version=""
if command -v nvcc >/dev/null 2>&1; then
  nvcc_version="$(nvcc --version | sed -n 's/.*release \([0-9.]*\), \(V[0-9.]*\).*/\1 (\2)/p')"
fi
meta nvcc "${nvcc_version:-not found}"

smi_cc="" gpu_name="" driver=""
if command -v nvidia-smi >/dev/null 2>&1; then
  IFS=',' read -r gpu_name smi_cc driver < <(nvidia-smi --query-gpu=name,compute_cap,driver_version \
    --format=csv,noheader 2>/dev/null | head -n 1) || true
  gpu_name="$(echo "$gpu_name" | xargs)"; smi_cc="$(echo "$smi_cc" | tr -d ' .')"; driver="$(echo "$driver" | xargs)"
fi
# torch decides: the tests, the benchmark and training reach the GPU through it.
torch_info="$("$PY" - <<'EOF' 2>/dev/null
import torch
cc = "%d%d" % torch.cuda.get_device_capability(0) if torch.cuda.is_available() else ""
name = torch.cuda.get_device_name(0) if cc else ""
amp = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if cc else ""
print(f"{torch.__version__}\t{torch.version.cuda or 'none'}\t{cc}\t{name}\t{amp}")
EOF
)"
IFS=$'\t' read -r torch_version torch_cuda torch_cc torch_gpu amp_dtype <<< "$torch_info"
meta python "$("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)' 2>/dev/null || echo "$PY not found")"
meta torch "${torch_version:-not importable}"
meta torch_cuda "${torch_cuda:-}"

have_gpu=0
if [[ -n "$torch_cc" ]]; then have_gpu=1; fi
arch="${TRM_CUDA_ARCH:-${torch_cc:-${smi_cc:-}}}"
{
  echo "== date: $(date -u +%FT%TZ)"; echo "== uname: $(uname -a)"; echo "== nproc: $(nproc 2>/dev/null)"
  echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  echo "== nvcc"; nvcc --version 2>&1 || echo "(no nvcc)"
  echo "== cmake: $(cmake --version 2>&1 | head -n 1)"; echo "== ninja: $(ninja --version 2>&1)"
  echo "== python: $PY"; "$PY" -VV 2>&1
  echo "== torch: ${torch_version:-none}, CUDA ${torch_cuda:-none}, device '${torch_gpu:-}' sm_${torch_cc:-none}, AMP ${amp_dtype:-n/a}"
  echo "== packages"; "$PY" - <<'EOF'
import importlib.metadata as metadata
for name in ("torch", "numpy", "nibabel", "tqdm", "safetensors", "matplotlib", "scipy", "networkx", "onnx",
             "onnxscript", "onnxruntime", "pytest", "pytest-xdist", "hypothesis", "pybind11", "scikit-build-core"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "-")
EOF
} > "$out/env.log" 2>&1

mode="no GPU"
if (( dry )); then mode="dry run of the GPU path"; arch="${arch:-90}"
elif (( rehearse )); then mode="rehearsal of the GPU path on the CPU"
elif (( have_gpu )); then mode="GPU"
fi
meta mode "$mode"
if (( have_gpu )); then
  meta gpu "$torch_gpu"
  meta compute_capability "sm_$torch_cc; building for sm_$arch; AMP $amp_dtype"
fi
[[ -n "$driver" ]] && meta driver "$driver"
say "mode: $mode; GPU: ${torch_gpu:-${gpu_name:-none}} ${arch:+(sm_$arch)}; torch ${torch_version:-?} (CUDA ${torch_cuda:-none}); nvcc ${nvcc_version:-none}"
record env ok 0 "see env.log"
if [[ -n "$smi_cc" && -z "$torch_cc" ]] && (( ! dry && ! rehearse )); then
  say "!! nvidia-smi lists '$gpu_name' but torch sees no GPU (a CPU build of torch?)"
  record gpu-visible "FAILED (torch sees no GPU)" 0 "nvidia-smi: $gpu_name sm_$smi_cc; torch ${torch_version:-?} CUDA ${torch_cuda:-none}"
  step_failed
fi

# ------------------------------------------------------ Python packages (wheels)
site="$work/site"
export PYTHONPATH="$repo/python:$site${PYTHONPATH:+:$PYTHONPATH}"
needed=()
while read -r module requirement _; do
  [[ -z "$module" || "$module" == \#* ]] && continue
  if (( dry )) || ! "$PY" -c "import $module" >/dev/null 2>&1; then needed+=("$requirement"); fi
done < "$repo/scripts/gpu_wheels.txt"
meta wheels "$wheels"
no_gpu=0
if (( ! have_gpu && ! dry && ! rehearse )); then no_gpu=1; fi
if (( ${#needed[@]} )) && (( ! dry )) && [[ ! -d "$wheels" ]]; then
  not_prepared wheels "no wheels folder $wheels (bash scripts/gpu_wheels.sh $wheels makes it): ${needed[*]} not installed"
elif (( ${#needed[@]} )); then
  STEP_NOTE="installed from $wheels: ${needed[*]}" run_step wheels 120 env.log \
    "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --find-links "$wheels" --target "$site" "${needed[@]}"
else
  say "-- wheels: nothing to install (every package of scripts/gpu_wheels.txt imports)"
fi
# What the package, its tests and the training import (pyproject's train, cpu and dev extras).
modules=(numpy torch nibabel tqdm safetensors matplotlib scipy networkx onnx onnxscript onnxruntime pytest hypothesis)
prepare=""; (( no_gpu )) && prepare=1  # without a GPU a missing package only limits what can be checked
PREPARE_STEP="$prepare" STEP_NOTE="${modules[*]}" run_step imports 60 env.log \
  "$PY" -c '
import sys
missing = []
for name in sys.argv[1:]:
    try:
        __import__(name)
    except Exception as err:  # absent or broken: name them all, not only the first
        missing.append(name if isinstance(err, ModuleNotFoundError) else f"{name} ({type(err).__name__})")
print("not importable: " + ", ".join(missing) if missing else "all importable")
sys.exit(1 if missing else 0)' "${modules[@]}"

# ----------------------------------------------------------- no GPU: build only
if (( no_gpu )); then
  build_tools=""  # what a build needs that this machine lacks
  command -v cmake >/dev/null 2>&1 || build_tools="cmake"
  "$PY" -c "import pybind11" >/dev/null 2>&1 || build_tools="${build_tools:+$build_tools, }pybind11 for $PY"
  if (( build )) && [[ -n "$build_tools" ]]; then
    not_prepared build-cpu "no $build_tools"
    if [[ -n "$nvcc_version" ]]; then not_prepared nvcc-compile "no $build_tools"; else skip_step nvcc-compile "no nvcc"; fi
  elif (( build )); then
    run_step build-cpu 600 build.log env PYTHON="$PY" JOBS="$(nproc)" bash scripts/build_inplace.sh
    if [[ -n "$nvcc_version" ]]; then
      # The CUDA kernels compiled for one architecture into build/, not installed.
      check_arch="${TRM_CUDA_ARCH:-90}" check_dir="build/gpu-check-sm${TRM_CUDA_ARCH:-90}"
      generator=(); [[ ! -f "$check_dir/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
      run_step nvcc-configure 120 build.log cmake -S . -B "$check_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
          -DTRMCORE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$check_arch" -DPython_EXECUTABLE="$(command -v "$PY")" \
          -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir 2>/dev/null)" \
        && STEP_NOTE="nvcc $nvcc_version, sm_$check_arch only, not installed" \
          run_step "nvcc-compile-sm$check_arch" 900 build.log cmake --build "$check_dir" --parallel "$(nproc)"
    else
      skip_step nvcc-compile "no nvcc"
    fi
  else
    skip_step build "--no-build"
  fi
  for name in build-cuda tests_cuda bench_ops training tests_all; do record "$name" "skipped (no GPU)" 0 ""; done
  meta finished "$(date -u +%FT%TZ)"
  prepared="the builds passed"
  (( ${#unprepared[@]} )) && prepared="could not prepare ${#unprepared[@]} step(s)"
  if (( failures )); then meta verdict "no GPU: skipped the GPU steps; $failures step(s) FAILED"
  else meta verdict "no GPU: skipped the GPU steps; $prepared"; fi
  summarize
  for line in "${unprepared[@]}"; do say "could not prepare: $line"; done
  say "no GPU: skipped CUDA tests, bench_ops --device cuda and the AMP training (torch sees no CUDA device)"
  say "summary: $out/summary.md; $failures failed step(s)"
  (( failures )) && exit 1
  exit 0
fi

# ------------------------------------------------------------------- GPU path
device=cuda
if (( rehearse )); then device=cpu; fi
trm=("$PY" -m trmcore.cli.main)

built=1
if (( ! build )); then
  skip_step build "--no-build"
elif (( rehearse )); then
  run_step build-cpu 600 build.log env PYTHON="$PY" JOBS="$(nproc)" bash scripts/build_inplace.sh || built=0
else
  # One architecture, ninja, all cores: the build is most of the fixed cost.
  STEP_NOTE="sm_$arch, ninja, $(nproc) jobs" run_step build-cuda 300 build.log \
    env PYTHON="$PY" CUDAARCHS="$arch" BUILD_DIR="build/gpu-sm$arch" JOBS="$(nproc)" bash scripts/build_inplace.sh --cuda \
    || built=0
fi
if (( built )); then
  want=True; (( rehearse )) && want=False
  run_step extension 60 build.log "$PY" -c "import trmcore._C as C; print(C.__file__, 'built_with_cuda', \
C.built_with_cuda()); assert C.built_with_cuda() == $want, 'not the build this check expects'" || built=0
fi

pytest_step() {  # pytest_step NAME LIMIT ARGS...: pytest from tests/ (environment: pytest_env), JUnit XML for the summary
  local name="$1" limit="$2"; shift 2
  run_step "$name" "$limit" tests.log env -C "$repo/tests" "${pytest_env[@]}" "$PY" -m pytest -q -p no:cacheprovider \
    -rfE --continue-on-collection-errors --junitxml="$work/junit-$name.xml" "$@"
}
pytest_env=()
if (( built )); then
  # Every test marked cuda (tests/ops/test_cuda.py and any other); a collection error elsewhere does not stop them.
  pytest_step tests_cuda 150 -m cuda .
  if (( ! dry && ! rehearse )) && [[ -f "$work/junit-tests_cuda.xml" ]]; then
    read -r passed _ < <("$PY" "$repo/scripts/gpu_summary.py" junit "$work/junit-tests_cuda.xml")
    if [[ "${passed:-0}" == 0 ]]; then
      say "!! no CUDA test passed (all skipped?)"; record tests_cuda-ran "FAILED (no CUDA test passed)" 0 ""; step_failed
    fi
  fi
  bench_args=(--device "$device" --no-numpy --json "$work/bench.json")
  (( rehearse )) && bench_args+=(--repeats 2)
  run_step bench_ops 150 bench.log "$PY" benchmarks/bench_ops.py "${bench_args[@]}"
  if (( ! dry )) && [[ -f "$out/bench.log" ]]; then grep -E '^(##|memory|LEEP|loss)' "$out/bench.log" | sed 's/^/    /'; fi
else
  for name in tests_cuda bench_ops; do skip_step "$name" "no usable build"; done
fi

# AMP training on a phantom: a source model, then each fine-tuning method.
data="$work/data" runs="$work/runs"
common=(--device "$device" --iterations "$iterations" --val-every 0 --val-fraction 0.25 --batch-size 8 --lr 1e-3 -q)
if (( built )); then
  shape=(96 96 24) model=(--depth 4 --width 32)  # the default U-Net
  if (( rehearse )); then shape=(48 48 16) model=(--depth 3 --width 16); fi
  amp="AMP ${amp_dtype:-bfloat16}"; (( rehearse )) && amp="no AMP (CPU)"
  meta training "--device $device, $amp, $iterations iterations, batch 8; phantom of 8 cases ${shape[*]}; U-Net ${model[*]}; fine-tuning: 24 target slices, encoder frozen"
  run_step phantom 90 train.log "${trm[@]}" phantom "$data" --cases 8 --num-sites site-A,site-B --shape "${shape[@]}" --seed 0
  if run_step train-source 120 train.log "${trm[@]}" train "$data" --channel T1 --labels CSF,GM,WM --site site-A \
      -o "$runs/source" "${common[@]}" "${model[@]}"; then
    for method in vanilla class-weight trs-map trm; do
      run_step "finetune-$method" 90 train.log "${trm[@]}" finetune "$data" --channel T2 --labels CSF --site site-B \
        --source "$runs/source" -o "$runs/$method" --method "$method" --few-shot 24 "${common[@]}"
    done
  else
    for method in vanilla class-weight trs-map trm; do skip_step "finetune-$method" "no source model"; done
  fi
  if (( ! dry )); then
    for run in "$runs"/*/; do
      [[ -f "$run/metrics.csv" ]] && { echo "== $(basename "$run")/metrics.csv"; cat "$run/metrics.csv"; } >> "$out/train.log"
    done
  fi
else
  skip_step training "no usable build"
fi

# The rest of the suite on the GPU build, with whatever time is left (the
# training tests run on CUDA there: their device defaults to it).
if (( rehearse )); then
  skip_step tests_all "rehearsal: run the suite with scripts/test.sh"
elif (( built )); then
  xdist=()
  if "$PY" -c "import xdist" >/dev/null 2>&1; then
    xdist=(-n "$(( $(nproc) > 8 ? 8 : $(nproc) ))")
    pytest_env+=(OMP_NUM_THREADS=2)  # 8 workers with a thread per core each would oversubscribe
  fi
  # Not test_wheel (slow): it builds a wheel for every architecture and installs from an index.
  pytest_step tests_all 300 "${xdist[@]}" -m "not cuda and not slow" .
else
  skip_step tests_all "no usable build"
fi

meta finished "$(date -u +%FT%TZ)"
if (( dry )); then meta verdict "dry run: nothing was run"
elif (( failures )); then meta verdict "$failures step(s) FAILED"
else meta verdict "every step passed"
fi
summarize
say "done in $(elapsed)s; summary: $out/summary.md"
if (( ! dry )); then cat "$out/summary.md"; fi
(( failures )) && exit 1
exit 0

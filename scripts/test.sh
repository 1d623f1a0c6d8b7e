#!/usr/bin/env bash
# Install trmcore with the training, inference and test extras into .venv and
# run the test suite (what CI runs: .ci/run). Extra arguments go to pytest.
#
# trmcore is built once, as a wheel of this Python (build/test-wheel/): installed
# here, and handed to the tests as TRM_TEST_WHEEL (tests/deploy/test_wheel.py
# installs it into a venv without a compiler). The CUDA kernels are left out
# unless TRMCORE_CUDA=AUTO|ON is set (CI has no GPU: scripts/gpu_check.sh
# compiles and runs them); the manylinux wheels of five Pythons are built and
# tested by scripts/test_wheels.sh, not here.
# Environment: TRM_TEST_WORKERS  pytest-xdist workers (default 2; 0: one process).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
source scripts/_venv.sh
export TRMCORE_CUDA="${TRMCORE_CUDA:-OFF}"
wheels=build/test-wheel
rm -rf "$wheels"
pip wheel -q --no-deps -w "$wheels" .
wheel="$(cd "$wheels" && ls "$PWD"/trmcore-*.whl)"
pip uninstall -q -y trmcore 2>/dev/null || true  # the same version would count as installed
pip install -q "$wheel[train,cpu,dicom,dev]"
# The [monai] and [nnunet] extras, so their tests run rather than skip; --no-deps because they need
# only torch and numpy, and pip must never replace the installed torch.
pip install -q --no-deps "monai>=1.3" "dynamic_network_architectures>=0.4"
# nnunetv2 itself (86 packages with its dependencies) only for the test that builds a source network with
# its own get_network_from_plans: that module needs nothing but batchgenerators' file helpers.
pip install -q --no-deps "nnunetv2>=2.4" batchgenerators
export TRM_TEST_WHEEL="$wheel"
echo "test.sh: built and installed $(basename "$wheel") (TRMCORE_CUDA=$TRMCORE_CUDA) in $((SECONDS - started))s"

workers="${TRM_TEST_WORKERS:-2}"
parallel=()
if [[ "$workers" != 0 ]]; then
  # One test file per worker at a time (its module fixtures are built once); one thread each on 2 cores.
  parallel=(-n "$workers" --dist loadfile)
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
# Run from outside the source tree so the tests import the installed package.
cd tests
status=0
python -m pytest -q -p no:cacheprovider "${parallel[@]}" "$@" . || status=$?
echo "test.sh: $((SECONDS - started))s in all"
exit "$status"

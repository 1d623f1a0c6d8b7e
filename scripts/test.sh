#!/usr/bin/env bash
# Install trmcore with the training, inference and test extras into .venv,
# building the C++ core (and the CUDA kernels when nvcc is found), then run
# the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
pip install -q ".[train,cpu,dev]"
# The [monai] and [nnunet] extras, so their tests run rather than skip; --no-deps because they need
# only torch and numpy, and pip must never replace the installed torch.
pip install -q --no-deps "monai>=1.3" "dynamic_network_architectures>=0.4"
# Run from outside the source tree so the tests import the installed package.
cd tests
python -m pytest -q -p no:cacheprovider "$@" .

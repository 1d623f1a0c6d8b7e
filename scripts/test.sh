#!/usr/bin/env bash
# Install trmcore with the training, inference and test extras into .venv,
# building the C++ core (and the CUDA kernels when nvcc is found), then run
# the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
pip install -q ".[train,cpu,dev]"
# Run from outside the source tree so the tests import the installed package.
cd tests
python -m pytest -q -p no:cacheprovider "$@" .

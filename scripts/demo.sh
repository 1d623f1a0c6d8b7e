#!/usr/bin/env bash
# Install trmcore with the training and inference extras into .venv and run
# `trm demo`: a phantom dataset, a source model, risk maps, vanilla and trm
# fine-tuning, and the Dice table. Extra arguments go to `trm demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
pip install -q ".[train,cpu]"
trm demo -o demo-out "$@"

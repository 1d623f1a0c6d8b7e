# Sourced by the scripts: create and activate .venv with the pinned CPU torch.
# torch is pinned because an unpinned install pulls gigabytes of CUDA packages;
# set TRM_TORCH to choose another (e.g. TRM_TORCH="torch==2.13.0+cu128").
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
source .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q "${TRM_TORCH:-torch==2.13.0}"

"""What the network gives voxels it did not run on, and the crop default of ``trm predict``.

The planning (which slices, which in-plane window) is the ``crop`` step of the
preprocessing pipeline, :mod:`trmcore.data.crop` (torch-free, shared with
training's slicing); this module keeps what only inference needs.
"""

from __future__ import annotations

import numpy as np

# trm predict's default margin (cli/deploy.py reads it here); the crop itself is planned in trmcore.data.crop
from trmcore.data.crop import DEFAULT_CROP_MARGIN  # noqa: F401


def outside_logits(num_classes: int) -> np.ndarray:
    """float32 ``[C]`` logits given to voxels the network did not run on: background, certainly.

    Softmax of them is exactly one-hot background (the others underflow to 0).
    """
    logits = np.full(num_classes, -1e4, np.float32)
    logits[0] = 0.0
    return logits

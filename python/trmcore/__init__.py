"""trmcore: transfer learning for medical image segmentation that avoids negative transfer.

Subpackages are imported lazily so that the torch-free parts (``trmcore.ops``
on NumPy arrays, ``trmcore.infer``, ``trmcore.data``) never pull in torch.
"""

__version__ = "0.1.0"

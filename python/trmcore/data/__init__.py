"""Datasets for trmcore: the standard layout, tasks, slicing, phantom and importers.

Torch-free (NumPy + nibabel): inference on a machine without torch uses
:mod:`trmcore.data.preprocess` and the NIfTI reading from here.

Typical use::

    from trmcore.data import (make_phantom, parse_task, load_task_volumes,
                              split_cases, volumes_to_slices, few_shot)
    root = make_phantom("phantom", n_cases=6, sites=3)
    volumes, info = load_task_volumes(root, parse_task("T1", "CSF", site="site-A"))
    train, val = split_cases(volumes, val_fraction=0.2, seed=0)
    slices = few_shot(volumes_to_slices(train, axis=2, divisor=16, skip_empty=True), 50, seed=0)
"""

from .importers import IMPORTERS, Importer, create_importer, import_brats, import_iseg, register_importer
from .layout import DatasetLayout, read_sites_csv
from .phantom import SITE_PROFILES, SiteProfile, generate_case, make_phantom
from .preprocess import Pad, foreground_mask, pad_to_multiple, unpad, zscore_nonzero
from .slices import SliceSet, few_shot, slices_to_volume, volumes_to_slices
from .tasks import TaskInfo, TaskSpec, parse_task
from .volumes import Volume, load_task_volumes, split_cases

__all__ = [
    "DatasetLayout",
    "IMPORTERS",
    "Importer",
    "Pad",
    "SITE_PROFILES",
    "SiteProfile",
    "SliceSet",
    "TaskInfo",
    "TaskSpec",
    "Volume",
    "create_importer",
    "few_shot",
    "generate_case",
    "import_brats",
    "import_iseg",
    "load_task_volumes",
    "make_phantom",
    "pad_to_multiple",
    "parse_task",
    "read_sites_csv",
    "register_importer",
    "slices_to_volume",
    "split_cases",
    "unpad",
    "volumes_to_slices",
    "zscore_nonzero",
    "foreground_mask",
]

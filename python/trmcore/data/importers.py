"""Convert public datasets from their native layout into the standard layout.

* iSeg-2019 (and 2017): Analyze pairs ``subject-N-T1.hdr/.img``, ``-T2``,
  ``-label`` in one folder. Label values stay as shipped (CSF 10, GM 150,
  WM 250) and are declared so in dataset.json; tasks select labels by name, so
  ``--labels CSF`` works without remapping. Subjects without a label file
  (the iSeg test set) go to imagesTs/.
* BraTS / FeTS: one folder per case holding ``CASE_t1``, ``_t1ce``, ``_t2``,
  ``_flair`` and ``_seg`` NIfTI files (BraTS 2023 names ``-t1n``, ``-t1c``,
  ``-t2w``, ``-t2f``, ``-seg`` are recognised too). Labels stay as shipped:
  NCR 1, ED 2, ET 4 (ET 3 for BraTS 2023 names). FeTS partitions come from a
  CSV (Subject_ID, Partition_ID) and become dataset.json "sites". Cases
  without a segmentation go to imagesTs/.

Each format is an :class:`Importer` in the :data:`IMPORTERS` registry; ``trm import
NAME`` lists the registry, so a new format is one subclass with ``@register_importer``
(name, help texts, its own options, ``run``).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Type, Union

import nibabel as nib
import numpy as np

from trmcore.fileio import atomic_path, atomic_write_json, save_image, staged_output_folder
from trmcore.registry import Registry

from .layout import DATASET_ENTRIES, read_sites_csv
from .nifti import whole_number_labels

ISEG_CHANNELS = ("T1", "T2")
ISEG_LABELS = {"background": 0, "CSF": 10, "GM": 150, "WM": 250}

BRATS_CHANNELS = ("T1", "T1CE", "T2", "FLAIR")
BRATS_LABELS = {"background": 0, "NCR": 1, "ED": 2, "ET": 4}
# File suffix per channel (and "seg") for the naming schemes in use.
_BRATS_SUFFIXES = {
    "classic": {"T1": "t1", "T1CE": "t1ce", "T2": "t2", "FLAIR": "flair", "seg": "seg"},
    "2023": {"T1": "t1n", "T1CE": "t1c", "T2": "t2w", "FLAIR": "t2f", "seg": "seg"},
}
_NIFTI_ENDINGS = (".nii.gz", ".nii")


def import_iseg(src: Union[str, Path], dst: Union[str, Path], overwrite: bool = False, progress: bool = True) -> Path:
    """Convert an iSeg-2019 folder (Analyze ``subject-N-{T1,T2,label}.hdr``) to the standard layout.

    Returns:
        ``Path(dst)``. Raises FileNotFoundError for a subject missing a channel
        file, ValueError for label values other than 0/10/150/250.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"iSeg source folder not found: {src}")
    pattern = re.compile(r"^subject-(\d+)-(T1|T2|label)\.hdr$", re.IGNORECASE)
    subjects: Dict[int, Dict[str, Path]] = {}
    for path in sorted(src.rglob("*.hdr")):
        match = pattern.match(path.name)
        if match:
            subjects.setdefault(int(match.group(1)), {})[match.group(2).lower()] = path
    if not subjects:
        raise FileNotFoundError(f"no iSeg files (subject-N-T1.hdr, -T2, -label) found under {src}")
    with _staged(dst, overwrite, inputs=[src]) as out:  # dst appears only when complete
        n_train = 0
        for number in _progress(sorted(subjects), progress, "import iseg"):
            files, case = subjects[number], f"subject-{number}"
            for name in ISEG_CHANNELS:
                if name.lower() not in files:
                    raise FileNotFoundError(f"case {case}: channel file {src / f'{case}-{name}.hdr'} not found")
            labelled = "label" in files
            split = "Tr" if labelled else "Ts"
            for index, name in enumerate(ISEG_CHANNELS):
                img = _load_3d(files[name.lower()], case)
                _write(np.asanyarray(img.dataobj), img.affine, out / f"images{split}" / f"{case}_{index:04d}.nii.gz",
                       img.header)
            if labelled:
                img = _load_3d(files["label"], case)
                labels = _checked_labels(img, files["label"], case, ISEG_LABELS)
                _write(labels.astype(np.uint8), img.affine, out / "labelsTr" / f"{case}.nii.gz", None)
                n_train += 1
        _write_dataset_json(out, "iSeg-2019", ISEG_CHANNELS, ISEG_LABELS, n_train, sites={})
    return dst


def import_brats(
    src: Union[str, Path],
    dst: Union[str, Path],
    partitions: Union[str, Path, None] = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert a BraTS / FeTS folder (one folder per case) to the standard layout.

    Args:
        src: folder of case folders (``CASE/CASE_t1.nii.gz`` ...).
        dst: dataset folder to create.
        partitions: FeTS partitioning CSV (Subject_ID, Partition_ID); its
            partitions become the cases' sites.
    Returns:
        ``Path(dst)``.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"BraTS source folder not found: {src}")
    sites = read_sites_csv(partitions) if partitions is not None else {}
    cases = sorted(p for p in src.iterdir() if p.is_dir() and _find_any(p))
    if not cases:
        raise FileNotFoundError(f"no BraTS case folders (CASE/CASE_t1.nii.gz ...) found under {src}")
    with _staged(dst, overwrite, inputs=[src, partitions]) as out:  # dst appears only when complete
        n_train, labels_seen = 0, BRATS_LABELS
        for folder in _progress(cases, progress, "import brats"):
            case = folder.name
            scheme = "2023" if _find(folder, case, "t1n") else "classic"
            labels = dict(BRATS_LABELS, ET=3) if scheme == "2023" else BRATS_LABELS
            if n_train and labels != labels_seen:
                raise ValueError(f"case {case}: mixes BraTS 2023 file names with older ones in {src}")
            suffixes = _BRATS_SUFFIXES[scheme]
            seg = _find(folder, case, suffixes["seg"])
            split = "Tr" if seg is not None else "Ts"
            for index, name in enumerate(BRATS_CHANNELS):
                path = _find(folder, case, suffixes[name])
                if path is None:
                    expected = folder / f"{case}_{suffixes[name]}.nii.gz"
                    raise FileNotFoundError(f"case {case}: channel {name} file {expected} not found")
                _copy_nifti(path, out / f"images{split}" / f"{case}_{index:04d}.nii.gz", case)
            if seg is not None:
                img = _load_3d(seg, case)
                values = _checked_labels(img, seg, case, labels)
                _write(values.astype(np.uint8), img.affine, out / "labelsTr" / f"{case}.nii.gz", None)
                n_train += 1
                labels_seen = labels
        case_sites = {p.name: sites[p.name] for p in cases if p.name in sites}
        missing = [p.name for p in cases if sites and p.name not in sites]
        if sites and missing:
            raise ValueError(
                f"partitions CSV {partitions} has no partition for case(s) {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''} (of {len(missing)})"
            )
        # Subjects listed in the CSV but absent here are fine: a subset was downloaded.
        _write_dataset_json(out, "BraTS", BRATS_CHANNELS, labels_seen, n_train, case_sites)
    return dst


# ---------------------------------------------------------------------- registry
class Importer:
    """A native dataset format that ``trm import NAME SRC DST`` converts to the standard layout.

    Subclasses set ``name`` (the CLI word), ``summary`` (one line for ``trm import --help``),
    ``description`` and an ``example`` command line, add their own options in :meth:`add_arguments`, pick them out of the parsed
    command line in :meth:`options` and convert in :meth:`run`.
    """

    name: str = ""
    summary: str = ""
    description: str = ""
    example: str = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Options of this format beyond SRC, DST, --overwrite and -q."""

    def options(self, args: argparse.Namespace) -> Dict[str, Any]:
        """The keyword arguments of :meth:`run` taken from the parsed ``args``."""
        return {}

    def run(self, src: Union[str, Path], dst: Union[str, Path], overwrite: bool = False, progress: bool = True,
            **options: Any) -> Path:
        """Convert ``src`` into a new dataset folder ``dst``; returns ``Path(dst)``."""
        raise NotImplementedError


# name -> Importer subclass, in the order of `trm import --help`.
IMPORTERS: Registry[Type[Importer]] = Registry("dataset format")


def register_importer(cls: Type[Importer]) -> Type[Importer]:
    """Class decorator: add ``cls`` to :data:`IMPORTERS` under ``cls.name``."""
    return IMPORTERS.add(cls.name, cls)


def create_importer(name: str) -> Importer:
    """The importer of format ``name``; ValueError naming the registered formats for any other."""
    return IMPORTERS.lookup(name)()


@register_importer
class IsegImporter(Importer):
    name = "iseg"
    summary = "iSeg-2019 Analyze files subject-N-{T1,T2,label}.hdr/.img"
    description = ("Convert iSeg-2019 (Analyze subject-N-T1/-T2/-label .hdr/.img). Labels keep their values: "
                   "CSF 10, GM 150, WM 250.")
    example = "trm import iseg iSeg-2019-Training/ data/iseg"

    def run(self, src, dst, overwrite=False, progress=True, **options) -> Path:
        return import_iseg(src, dst, overwrite=overwrite, progress=progress)


@register_importer
class BratsImporter(Importer):
    name = "brats"
    summary = "BraTS / FeTS case folders (CASE_t1, _t1ce, _t2, _flair, _seg)"
    description = ("Convert BraTS/FeTS case folders. Labels keep their values: NCR 1, ED 2, ET 4. "
                   "--partitions takes the FeTS CSV (Subject_ID, Partition_ID); partitions become sites.")
    example = "trm import brats MICCAI_FeTS2022_TrainingData/ data/fets --partitions partitioning_1.csv"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--partitions", type=Path, default=None,
                            help="FeTS partitioning CSV (Subject_ID, Partition_ID)")

    def options(self, args: argparse.Namespace) -> Dict[str, Any]:
        return {"partitions": args.partitions}

    def run(self, src, dst, overwrite=False, progress=True, partitions=None, **options) -> Path:
        return import_brats(src, dst, partitions=partitions, overwrite=overwrite, progress=progress)


# ----------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _staged(dst: Path, overwrite: bool, inputs=()) -> Iterator[Path]:
    """The folder an importer writes into: hidden beside ``dst``, moved onto ``dst`` only when the import
    completes; a failed or interrupted import removes it and leaves ``dst`` as it was (every importer uses this)."""
    # --overwrite replaces only an earlier import's entries (by its marker), never the source data.
    with staged_output_folder(dst, "import", DATASET_ENTRIES, overwrite=overwrite, inputs=inputs) as out:
        for sub in ("imagesTr", "labelsTr"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        yield out


def _load_3d(path: Path, case: str):
    _check_declared(path, case)  # shape within the memory budget, usable affine: before reading a voxel
    try:
        img = nib.load(str(path))
        # Read now, once: nibabel is lazy, so a truncated file would fail later without its name.
        img = img.__class__(np.asanyarray(img.dataobj), img.affine, img.header)
    except Exception as err:
        detail = " ".join(str(err).split())  # nibabel's messages span lines; the error is one line
        raise ValueError(f"case {case}: cannot read {path}: {type(err).__name__}: {detail}") from None
    shape = img.shape
    squeezed = tuple(shape[:3]) if len(shape) > 3 and all(s == 1 for s in shape[3:]) else shape
    if len(squeezed) != 3:
        raise ValueError(f"case {case}: {path} has shape {shape}; expected one 3D volume")
    if squeezed != shape:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj).reshape(squeezed), img.affine, _nifti_header(img))
    return img


def _check_declared(path: Path, case: str) -> None:
    """:func:`trmcore.data.nifti.check_header` on ``path``'s header (the data stays unread)."""
    from .nifti import check_header, quiet_nibabel

    try:
        with quiet_nibabel():
            img = nib.load(str(path))
    except Exception:
        return  # _load_3d reports an unreadable file, naming it
    check_header(img, path, f"case {case}: ", copies=3)  # the data as stored, a copy, the written image


def _checked_labels(img, path: Path, case: str, declared: Dict[str, int]) -> np.ndarray:
    labels = whole_number_labels(np.asanyarray(img.dataobj), f"case {case}: label file {path}")
    unknown = sorted(set(np.unique(labels).tolist()) - set(declared.values()))
    if unknown:
        raise ValueError(
            f"case {case}: label file {path} holds values {unknown}; expected only {sorted(declared.values())} "
            f"({', '.join(f'{k} {v}' for k, v in declared.items())})"
        )
    return labels


def _write(data: np.ndarray, affine: np.ndarray, path: Path, header) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data)
    if data.ndim > 3:
        data = data.reshape(data.shape[:3])
    img = nib.Nifti1Image(data, affine)
    if header is not None:
        try:
            img.header.set_zooms(tuple(header.get_zooms()[:3]))
        except Exception:  # zooms are a nicety; the affine carries the geometry
            pass
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    save_image(img, path, overwrite=False)


def _nifti_header(img):
    return img.header if isinstance(img, nib.Nifti1Image) else None


def _copy_nifti(path: Path, out: Path, case: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".nii.gz"):
        with atomic_path(out, overwrite=False) as tmp:
            shutil.copyfile(path, tmp)  # already in the target format: no re-encoding
        return
    img = _load_3d(path, case)
    save_image(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, _nifti_header(img)), out, overwrite=False)


def _find(folder: Path, case: str, suffix: str) -> Optional[Path]:
    for sep in ("_", "-"):
        for ending in _NIFTI_ENDINGS:
            path = folder / f"{case}{sep}{suffix}{ending}"
            if path.is_file():
                return path
    return None


def _find_any(folder: Path) -> bool:
    return any(folder.glob("*.nii.gz")) or any(folder.glob("*.nii"))


def _progress(items, progress: bool, desc: str):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="case")


def _write_dataset_json(dst: Path, name: str, channels, labels, n_train: int, sites: Dict[str, str]) -> None:
    meta = {
        "name": name,
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": dict(labels),
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    }
    if sites:
        meta["sites"] = sites
    atomic_write_json(dst / "dataset.json", meta, overwrite=False)


from . import dicom_import  # noqa: E402,F401  (registers the "dicom" importer; pydicom is imported only when it runs)

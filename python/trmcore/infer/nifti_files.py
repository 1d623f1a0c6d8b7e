"""Finding input cases, reading their channels, writing outputs atomically.

Naming follows the nnU-Net convention: channel ``k`` of case ``CASE`` is
``CASE_000k.nii.gz`` (or ``.nii``); the label output is ``CASE.nii.gz``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np

from trmcore.data.nifti import quiet_nibabel
from trmcore.fileio import check_output_plan
from trmcore.limits import ResourceLimitError

CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ext>\.nii\.gz|\.nii)$")
NIFTI_EXTENSIONS = (".nii.gz", ".nii")


@dataclass
class CaseFiles:
    """One input case: its id and one file per model channel, in channel order."""

    case_id: str
    channel_paths: List[Path]


def nifti_stem(path: Path) -> str:
    """``case_0000.nii.gz`` -> ``case_0000``."""
    name = path.name
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_EXTENSIONS)


def find_cases(input_path: Path, num_channels: int,
               channel_indices: Optional[Sequence[int]] = None) -> List[CaseFiles]:
    """Cases under ``input_path`` (a NIfTI file or a folder of ``CASE_000k`` files).

    ``channel_indices`` are the file channel indices (``k`` of ``_000k``) that
    feed the model's channels, in the model's order (from the channel names
    in ``dataset.json`` or ``--channels``); other channel files are ignored.
    Without them a case must have exactly the files ``_0000`` ..
    ``_{num_channels - 1}``. A single file brings its sibling channel files
    along; a one-channel model also accepts a file without the channel suffix.
    """
    input_path = Path(input_path)
    strict = channel_indices is None
    indices = list(range(num_channels)) if strict else [int(k) for k in channel_indices]
    if len(indices) != num_channels:
        raise ValueError(f"{len(indices)} channel indices for a model with {num_channels} channel(s)")
    if not input_path.exists():
        raise FileNotFoundError(f"input not found: {input_path}")
    if input_path.is_dir():
        return _cases_in_folder(input_path, num_channels, indices, strict)
    if not is_nifti(input_path):
        raise ValueError(f"input {input_path} is not a NIfTI file (.nii or .nii.gz)")
    match = CHANNEL_FILE.match(input_path.name)
    if match is None:
        if num_channels != 1:
            raise ValueError(f"the model has {num_channels} channels: name the input CASE_0000.nii.gz with its "
                             f"other channels beside it as CASE_0001.nii.gz ..., got {input_path.name}")
        return [CaseFiles(nifti_stem(input_path), [input_path])]
    case, ext = match["case"], match["ext"]
    paths = [input_path.with_name(f"{case}_{k:04d}{ext}") for k in indices]
    if input_path.name not in {p.name for p in paths}:
        wanted = ", ".join(p.name for p in paths)
        raise ValueError(f"the model reads {wanted} of case {case!r}, not {input_path.name}; "
                         "check the channel names (dataset.json or --channels)")
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"case {case!r}: the model has {num_channels} channel(s) but "
                                f"{', '.join(missing)} is missing beside {input_path.name}")
    extra = input_path.with_name(f"{case}_{num_channels:04d}{ext}")
    if strict and extra.exists():
        raise ValueError(f"case {case!r} has more channel files than the model's {num_channels} "
                         f"(found {extra.name}); name the channels with --channels or a dataset.json")
    return [CaseFiles(case, paths)]


def _cases_in_folder(folder: Path, num_channels: int, indices: List[int], strict: bool) -> List[CaseFiles]:
    grouped: Dict[str, Dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = CHANNEL_FILE.match(path.name)
        if match is None or not path.is_file():
            continue
        channels = grouped.setdefault(match["case"], {})
        index = int(match["channel"])
        if index in channels:
            raise ValueError(f"case {match['case']!r} has channel {index} twice: "
                             f"{channels[index].name} and {path.name}")
        channels[index] = path
    if not grouped:
        raise FileNotFoundError(f"no input files named CASE_0000.nii.gz (or .nii) in folder {folder}")
    cases = []
    for case_id, channels in sorted(grouped.items()):
        found = ", ".join(f"_{k:04d}" for k in sorted(channels))
        if strict and sorted(channels) != indices:
            raise ValueError(f"case {case_id!r} has channel files [{found}] but the model expects "
                             f"{num_channels} channel(s) _0000 .. _{num_channels - 1:04d} (name the channels "
                             "with --channels or a dataset.json to pick some)")
        missing = [k for k in indices if k not in channels]
        if missing:
            raise ValueError(f"case {case_id!r} has channel files [{found}] but lacks "
                             f"{', '.join(f'_{k:04d}' for k in missing)}")
        cases.append(CaseFiles(case_id, [channels[k] for k in indices]))
    return cases


def declared_channel_names(input_path: Path) -> Optional[Dict[int, str]]:
    """{file index: channel name} from a ``dataset.json`` in the input folder or its parent, if any.

    Read with the training loader's rule (:func:`trmcore.data.layout.parse_channel_names`): the key is
    the file suffix number, so ``{"0": "T2", "2": "T1"}`` makes ``CASE_0002`` the T1 file here as in
    training. A dataset.json whose channel names break that rule is refused (ValueError naming it).
    """
    from trmcore.data.layout import declared_channels, parse_channel_names

    folder = Path(input_path) if Path(input_path).is_dir() else Path(input_path).parent
    for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
        if candidate.is_file():
            from trmcore.data.layout import read_dataset_json  # the one dataset.json schema

            record = read_dataset_json(candidate)
            raw = declared_channels(record)
            if raw is None:
                return None
            return parse_channel_names(raw, candidate)
    return None


class _NotReal(Exception):
    pass


class _BadHeader(Exception):
    pass


def check_header(image, path: Path) -> None:
    """:func:`trmcore.data.nifti.check_header` (size within the budget, usable affine and pixdim) before reading."""
    from trmcore.data.nifti import check_header as check

    try:
        check(image, path)
    except ResourceLimitError:
        raise
    except ValueError as err:
        raise _BadHeader(str(err)) from None


def load_image(path: Path) -> "nib.spatialimages.SpatialImage":
    """Load a NIfTI image and its data; ValueError naming the file when it is corrupt or not 3D."""
    try:
        with quiet_nibabel():  # header fixes are checked (check_header), not logged
            image = nib.load(str(path))
        kind = np.dtype(image.get_data_dtype()).kind
        if kind not in "biuf":  # checked before reading: get_fdata would drop an imaginary part silently
            raise _NotReal(f"{path} has data type {np.dtype(image.get_data_dtype())}; intensities must be real "
                           "numbers (a complex or structured image is not a scan trmcore can segment)")
        check_header(image, path)  # declared size within the memory budget, usable affine: before reading
        image.get_fdata(dtype=np.float32)  # read now so a truncated file fails here, by name
    except FileNotFoundError:
        raise FileNotFoundError(f"input file not found: {path}") from None
    except (_NotReal, _BadHeader) as err:
        raise ValueError(str(err)) from None
    except ResourceLimitError:
        raise
    except Exception as err:  # nibabel, gzip and zlib raise many types for damaged files
        raise ValueError(f"cannot read {path}: {type(err).__name__}: {err}") from None
    shape = tuple(image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        kind = {2: "2D", 4: "4D"}.get(len(shape), f"{len(shape)}D")
        raise ValueError(f"{path} is a {kind} image of shape {tuple(image.shape)}; each channel file must be "
                         "a 3D volume")
    return image


def load_case(case: CaseFiles) -> List["nib.spatialimages.SpatialImage"]:
    """The case's channel images, checked to share one shape and affine (as training checks)."""
    from trmcore.data.nifti import AFFINE_ATOL

    from trmcore.fileio import check_readable

    images = [load_image(check_readable(p)) for p in case.channel_paths]  # a permission problem named as such
    shapes = {tuple(img.shape[:3]) for img in images}
    if len(shapes) != 1:
        detail = ", ".join(f"{p.name} {tuple(img.shape)}" for p, img in zip(case.channel_paths, images))
        raise ValueError(f"case {case.case_id!r}: channel images differ in shape: {detail}")
    for path, image in zip(case.channel_paths[1:], images[1:]):
        if not np.allclose(image.affine, images[0].affine, atol=AFFINE_ATOL, rtol=0):
            shift = float(np.abs(np.asarray(image.affine) - np.asarray(images[0].affine)).max())
            raise ValueError(f"case {case.case_id!r}: channel file {path} has a different affine (voxel-to-world) "
                             f"than {case.channel_paths[0]} (up to {shift:.3g} mm apart): register the channels "
                             "to one grid first")
    return images


def output_complete(path: Path, reference, channels: Optional[int] = None) -> bool:
    """True when ``path`` is a readable NIfTI on ``reference``'s grid (``[X, Y, Z]`` or ``[X, Y, Z, channels]``)."""
    try:
        image = nib.load(str(path))
        expected = tuple(reference.shape[:3]) + ((channels,) if channels else ())
        if tuple(image.shape) != expected or not np.allclose(image.affine, reference.affine, atol=1e-6):
            return False
        np.asarray(image.dataobj)  # a truncated file fails here
        return True
    except Exception:  # any unreadable file is simply not complete
        return False


def image_like(data: np.ndarray, reference, dtype: np.dtype):
    """A NIfTI image of ``data`` with ``reference``'s affine and header (dtype and scaling reset)."""
    header = reference.header.copy()
    klass = type(reference) if isinstance(reference, (nib.Nifti1Image, nib.Nifti2Image)) else nib.Nifti1Image
    if not isinstance(header, klass.header_class):
        header = klass.header_class.from_header(header)
    image = klass(np.asarray(data, dtype=dtype), reference.affine, header=header)
    image.set_data_dtype(dtype)
    # The input's intensity scaling and display window mean nothing for labels.
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"] = 0
    image.header["cal_max"] = 0
    return image


def probabilities_path(label_path: Path) -> Path:
    """``out/case.nii.gz`` -> ``out/case_probabilities.nii.gz``."""
    label_path = Path(label_path)
    ext = ".nii.gz" if label_path.name.endswith(".nii.gz") else ".nii"
    return label_path.with_name(f"{nifti_stem(label_path)}_probabilities{ext}")


def provenance_path(input_path: Path, output: Path) -> Path:
    """Where ``trm predict`` records what it did: ``OUT/predict.json``, or ``OUT_STEM_predict.json`` for a file."""
    output = Path(output)
    if is_nifti(output) and Path(input_path).is_file():
        return output.with_name(f"{nifti_stem(output)}_predict.json")
    return output / "predict.json"


def plan_outputs(cases: Sequence[CaseFiles], input_path: Path, output: Path, probabilities: bool,
                 overwrite: bool, resume: bool = False) -> List[Tuple[Path, Optional[Path]]]:
    """(label path, probabilities path or None) per case; refuses to touch any input.

    A single input file with an ``-o`` ending in ``.nii``/``.nii.gz`` writes
    exactly there; otherwise ``output`` is a folder receiving ``CASE.nii.gz``.
    Existing outputs are refused unless ``overwrite`` or ``resume`` (``--continue``:
    complete outputs are kept, the rest redone).
    """
    output = Path(output)
    single_file = Path(input_path).is_file()
    if is_nifti(output):
        if not single_file:
            raise ValueError(f"input {input_path} is a folder, so the output must be a folder, not {output.name}")
        targets = [output]
    else:
        if output.exists() and not output.is_dir():
            raise ValueError(f"output {output} exists and is not a folder")
        targets = [output / f"{case.case_id}.nii.gz" for case in cases]
    planned = [(t, probabilities_path(t) if probabilities else None) for t in targets]
    inputs = {p.resolve() for case in cases for p in case.channel_paths}
    record = provenance_path(input_path, output)
    # The whole plan first: two cases named X and X_probabilities would otherwise write one file twice.
    whole = [(record, "the provenance record")]
    for case, (label_path, prob_path) in zip(cases, planned):
        whole.append((label_path, f"the labels of case {case.case_id!r}"))
        if prob_path is not None:
            whole.append((prob_path, f"the probabilities of case {case.case_id!r}"))
    check_output_plan(whole, overwrite=True, inputs=inputs)  # collisions, links, inputs: always refused
    for path, _ in whole:
        if path.exists() and not (overwrite or resume):
            raise FileExistsError(f"output {path} exists; pass --overwrite to replace it "
                                  "(or --continue to keep complete outputs)")
    return planned

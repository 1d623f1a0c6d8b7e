"""Train/serve identity (issue 23): one volume, the training path and the serving path, identical arrays.

The case is stored the way real scans come: PSR voxel order (no axis where RAS
has it, one flipped), 0.8 x 1.2 x 3 mm voxels, channel 0 as int16 with a
scale and an intercept (``scl_slope``/``scl_inter``: a non-zero background of
-40 after scaling), channel 1 as float32 with a constant background of -3.6
(BraTS style) over part of the volume.

Training path: ``load_task_volumes`` with the run's geometry and normalisation,
then ``volumes_to_slices`` (what training, validation, ``trm evaluate -m RUN``
and risk maps feed the network). Serving path: ``trm predict``'s
``predict_case`` and :class:`~trmcore.infer.Segmenter` with the same geometry
and normalisation in the ONNX metadata; the test records the batches handed to
the onnxruntime session. The two are asserted **bit-identical** (not merely
close): both paths run the same NumPy operations in the same order on float32
data, so any difference is a second implementation creeping back.

The inverse: a label map on the working grid is mapped back to the stored grid
by the training path (``GridMap.to_native(labels, "label")``, evaluation and
scores) and by the serving path (one-hot probabilities resampled linearly,
then arg-max, ``trm predict``); both give the same labels on the stored grid.

The network is a 1x1 convolution built with ``onnx.helper`` (no torch, no training): only what reaches it matters.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as ornt

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from trmcore.data import load_task_volumes, parse_task, volumes_to_slices  # noqa: E402
from trmcore.data.geometry import GeometryWarning  # noqa: E402
from trmcore.data.pipeline import Pipeline  # noqa: E402
from trmcore.infer.metadata import ModelMetadata  # noqa: E402
from trmcore.infer.predict_files import predict_case, predict_files  # noqa: E402
from trmcore.infer.segmenter import Segmenter  # noqa: E402

SHAPE_RAS = (42, 36, 9)  # x, y, z of the case in RAS order
SPACING_RAS = (0.8, 1.2, 3.0)
STORED_AS = "PSR"
CHANNELS = ["T1", "T2"]
LABELS = {"background": 0, "A": 1, "B": 2}
DIVISOR = 16

# (orientation, spacing, normalisation) of the model; each a grid a run can record.
GEOMETRIES = {
    "RAS-1mm": ("RAS", [1.0, 1.0, 3.0], "zscore-foreground"),  # reoriented and resampled in both in-plane axes
    "LPS-own-spacing": ("LPS", None, "zscore-foreground"),      # reoriented only
    "RAS-nonzero": ("RAS", [0.5, 1.2, 3.0], "zscore-nonzero"),  # one axis resampled, the older normalisation
    "native": ("native", None, "zscore-foreground"),          # --no-resample: volumes as stored
}


def _store(data: np.ndarray, affine: np.ndarray, codes: str):
    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(tuple(codes)))
    return ornt.apply_orientation(data, transform), affine @ ornt.inv_ornt_aff(transform, data.shape)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("identity") / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(23)
    brain = np.zeros(SHAPE_RAS, bool)
    brain[12:30, 10:26, 1:-1] = True  # empty first and last slices, background around the brain
    t1 = np.where(brain, rng.uniform(200, 900, SHAPE_RAS), 0.0)  # stored 0 -> -40 after the intercept
    t2 = np.where(brain, rng.uniform(-3, 5, SHAPE_RAS), -3.6).astype(np.float32)
    t2[brain & (rng.random(SHAPE_RAS) < 0.1)] = 0.0  # zeros inside the brain: zscore-nonzero differs
    label = np.zeros(SHAPE_RAS, np.uint8)
    label[14:26, 12:22, 2:7] = 1
    label[16:20, 14:18, 3:6] = 2
    affine = np.diag([*SPACING_RAS, 1.0])
    affine[:3, 3] = [20.0, -10.0, 5.0]
    stored, stored_affine = _store(t1, affine, STORED_AS)
    image = nib.Nifti1Image(np.round(stored).astype(np.int16), stored_affine)
    image.header.set_slope_inter(0.37, -40.0)
    nib.save(image, str(root / "imagesTr" / "case_0000.nii.gz"))
    nib.save(nib.Nifti1Image(_store(t2, affine, STORED_AS)[0].astype(np.float32), stored_affine),
             str(root / "imagesTr" / "case_0001.nii.gz"))
    nib.save(nib.Nifti1Image(_store(label, affine, STORED_AS)[0], stored_affine), str(root / "labelsTr" / "case.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T2"}, "labels": LABELS,
                                                   "file_ending": ".nii.gz"}))
    assert "".join(ornt.aff2axcodes(stored_affine)) == STORED_AS
    return root


def _model(path: Path, metadata: ModelMetadata) -> Path:
    """A 1x1 convolution [N, 2, H, W] -> [N, 3, H, W] carrying ``metadata``."""
    weights = np.random.default_rng(0).normal(size=(len(LABELS), len(CHANNELS), 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"])], "identity",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", len(CHANNELS), "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(LABELS), "H", "W"])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


class Recorder:
    """Records every batch the Segmenter hands to its onnxruntime session."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def run(self, outputs, feeds, *options):
        (batch,) = feeds.values()
        self.batches.append(np.array(batch, copy=True))
        return self.session.run(outputs, feeds, *options)

    def __getattr__(self, name):
        return getattr(self.session, name)


def _paths(dataset: Path):
    return [str(dataset / "imagesTr" / f"case_{k:04d}.nii.gz") for k in range(len(CHANNELS))]


def _both_paths(dataset: Path, tmp_path: Path, key: str, crop_margin=None):
    """(training volume, training slices, batches served), the model's metadata carrying the training record."""
    orientation, spacing, normalization = GEOMETRIES[key]
    fields = dict(channels=CHANNELS, label_names=list(LABELS), label_values=list(LABELS.values()),
                  normalization=normalization, orientation=orientation, spacing=spacing, axis=2, divisor=DIVISOR)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)  # a recorded geometry: no "as stored" fallback
        volumes, info = load_task_volumes(dataset, parse_task("T1,T2", "A,B"), progress=False,
                                          geometry=ModelMetadata(**fields).geometry(), normalization=normalization)
        # what training writes to run.json and export copies into the model (trainer._preprocessing_record)
        record = Pipeline.standard(info.geometry, info.normalization, DIVISOR, 2).record()
        metadata = ModelMetadata(**fields, preprocessing=record)
        segmenter = Segmenter(_model(tmp_path / f"{key}.onnx", metadata), providers="cpu", crop_margin=crop_margin)
        assert segmenter.preprocessing == Pipeline.from_record(record)  # serving rebuilt it from the list
        recorder = Recorder(segmenter.session)
        segmenter.session = recorder
        predict_case(segmenter, [nib.load(p) for p in _paths(dataset)])
    return volumes[0], volumes_to_slices(volumes, axis=2, divisor=DIVISOR), recorder.batches


@pytest.mark.parametrize("key", list(GEOMETRIES))
def test_network_input_is_identical(dataset, tmp_path, key):
    volume, slices, batches = _both_paths(dataset, tmp_path, key)
    served = np.concatenate(batches)
    if key != "native":
        assert volume.grid.reoriented
    assert volume.grid.resampled == (GEOMETRIES[key][1] is not None)
    assert served.dtype == slices.images.dtype == np.float32
    assert served.shape == slices.images.shape
    assert np.array_equal(served, slices.images)  # bit for bit
    assert np.count_nonzero(served) > served.size // 25  # the brain (~6 % of the voxels) is in there


@pytest.mark.parametrize("key", ["RAS-1mm", "native"])
def test_cropped_serving_sees_the_training_voxels(dataset, tmp_path, key):
    """``trm predict``'s default crop runs an aligned window of the foreground slices: a block of the training slices.

    The window is cut from the uncropped padded plane at multiples of the divisor, padding included, so each
    served slice is exactly ``slices.images[k, :, s:s+h, t:t+w]`` for a slice ``k`` (ascending) and aligned ``s, t``.
    """
    _, slices, batches = _both_paths(dataset, tmp_path, key, crop_margin=2)
    served = np.concatenate(batches)
    assert served.shape[2:] < slices.images.shape[2:] or len(served) < len(slices)  # it did crop
    h, w = served.shape[2:]
    H, W = slices.images.shape[2:]
    last = -1
    for window in served:
        match = next(((k, s, t) for k in range(last + 1, len(slices)) for s in range(0, H - h + 1, DIVISOR)
                      for t in range(0, W - w + 1, DIVISOR)
                      if np.array_equal(slices.images[k, :, s:s + h, t:t + w], window)), None)
        assert match is not None, "a served slice is not an aligned block of a later training slice"
        last = match[0]


@pytest.mark.parametrize("key", ["RAS-1mm", "RAS-nonzero", "LPS-own-spacing"])
def test_labels_back_on_the_stored_grid_are_identical(dataset, tmp_path, key):
    volume, _, _ = _both_paths(dataset, tmp_path, key)
    grid = volume.grid
    rng = np.random.default_rng(5)
    labels = np.asarray(volume.label).copy()  # structure, plus noise so that resampling has ties and edges
    noise = rng.random(labels.shape) < 0.2
    labels[noise] = rng.integers(0, len(LABELS), int(noise.sum()))
    training = grid.to_native(labels, "label")  # evaluation / scores
    one_hot = np.stack([(labels == k).astype(np.float32) for k in range(len(LABELS))])
    serving = grid.to_native(one_hot, "linear").argmax(axis=0)  # trm predict: probabilities back, then arg-max
    assert training.shape == serving.shape == nib.load(_paths(dataset)[0]).shape
    assert np.array_equal(training, serving)
    # and the stored label file comes back exactly from its own working-grid copy where nothing was resampled
    if not grid.resampled:
        stored = np.asarray(nib.load(str(dataset / "labelsTr" / "case.nii.gz")).dataobj)
        assert np.array_equal(grid.to_native(volume.label, "label"), stored)


def test_records_without_the_list_build_the_same_pipeline_and_a_disagreeing_list_is_refused():
    from trmcore.models.config import UNetConfig
    from trmcore.training.runinfo import RunInfo

    fields = dict(channels=CHANNELS, label_names=list(LABELS), label_values=list(LABELS.values()),
                  normalization="zscore-foreground", orientation="RAS", spacing=[1.0, 1.0, 3.0], axis=2,
                  divisor=DIVISOR)
    record = Pipeline.standard(ModelMetadata(**fields).geometry(), "zscore-foreground", DIVISOR, 2).record()
    old, new = ModelMetadata(**fields), ModelMetadata(**fields, preprocessing=record)
    assert old.preprocessing is None and old.pipeline() == new.pipeline() == Pipeline.from_record(record)
    assert ModelMetadata.from_json(new.to_json()) == new
    model = UNetConfig(in_channels=2, num_classes=3, depth=4)
    run = dict(model=model, channels=CHANNELS, label_names=list(LABELS), label_values=list(LABELS.values()),
               axis=2, divisor=DIVISOR, orientation="RAS", spacing=[1.0, 1.0, 3.0])
    assert RunInfo(**run).pipeline() == RunInfo(**run, preprocessing=record).pipeline() == new.pipeline()
    assert RunInfo.from_json(RunInfo(**run, preprocessing=record).to_json()).preprocessing == record
    # a model from before geometry was recorded: no reorient/resample step (volumes as stored, with a warning)
    legacy = ModelMetadata(**{**fields, "orientation": None, "spacing": None, "normalization": "zscore-nonzero"})
    assert [s.name for s in legacy.pipeline().steps] == ["normalize", "slice"]
    altered = [dict(step) for step in record]
    altered[1]["spacing"] = [0.5, 0.5, 3.0]
    with pytest.raises(ValueError, match="disagrees"):
        ModelMetadata(**fields, preprocessing=altered)
    with pytest.raises(ValueError, match="disagrees"):
        RunInfo(**run, preprocessing=altered)
    with pytest.raises(ValueError, match=r"preprocessing\[1\].*unknown key 'blur'"):
        ModelMetadata.from_json(json.dumps({**json.loads(new.to_json()),
                                            "preprocessing": [record[0], {**record[1], "blur": 1}]}), "m.onnx")


def test_trm_predict_on_a_dataset_folder_maps_channels_as_training_does(dataset, tmp_path):
    """Files in another channel order, named by dataset.json (one stored as float64): ``predict_files`` picks
    the model's channels by name as the training loader does, and feeds the network the training slices."""
    swapped = tmp_path / "swapped"
    (swapped / "imagesTr").mkdir(parents=True)
    (swapped / "labelsTr").mkdir()
    t1, t2 = (nib.load(p) for p in _paths(dataset))
    nib.save(t2, str(swapped / "imagesTr" / "case_0000.nii.gz"))
    nib.save(nib.Nifti1Image(t1.get_fdata(dtype=np.float64), t1.affine), str(swapped / "imagesTr" / "case_0001.nii.gz"))
    nib.save(nib.load(str(dataset / "labelsTr" / "case.nii.gz")), str(swapped / "labelsTr" / "case.nii.gz"))
    (swapped / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2", "1": "T1"}, "labels": LABELS,
                                                      "file_ending": ".nii.gz"}))
    orientation, spacing, normalization = GEOMETRIES["RAS-1mm"]
    volumes, info = load_task_volumes(swapped, parse_task("T1,T2", "A,B"), progress=False,
                                      geometry=ModelMetadata(channels=CHANNELS, label_names=list(LABELS),
                                                             label_values=list(LABELS.values()), orientation=orientation,
                                                             spacing=spacing).geometry(),
                                      normalization=normalization)
    metadata = ModelMetadata(channels=CHANNELS, label_names=list(LABELS), label_values=list(LABELS.values()),
                             normalization=normalization, orientation=orientation, spacing=spacing, divisor=DIVISOR,
                             preprocessing=Pipeline.standard(info.geometry, normalization, DIVISOR, 2).record())
    segmenter = Segmenter(_model(tmp_path / "m.onnx", metadata), providers="cpu")
    recorder = Recorder(segmenter.session)
    segmenter.session = recorder
    predict_files(segmenter, swapped / "imagesTr", tmp_path / "out", progress=False)
    slices = volumes_to_slices(volumes, axis=2, divisor=DIVISOR)
    assert np.array_equal(np.concatenate(recorder.batches), slices.images)
    assert (tmp_path / "out" / "case.nii.gz").is_file()

"""The preprocessing pipeline (trmcore.data.pipeline): steps, records, inverses, old records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trmcore.data.geometry import Geometry, native_geometry, plan_grid
from trmcore.data.pipeline import (PIPELINE_JSON, STEPS, Crop, Normalize, Pipeline, Reorient, Resample, Sample, Slice,
                                   step_from_dict)
from trmcore.data.preprocess import normalize
from trmcore.schema import parse_json

# x runs left, y posterior; 0.8 x 1.2 x 3 mm
PSR_LIKE = np.array([[0.0, 0.0, -3.0, 10.0], [-0.8, 0.0, 0.0, 4.0], [0.0, 1.2, 0.0, -7.0], [0.0, 0.0, 0.0, 1.0]])


def _volume(shape=(2, 11, 14, 9), seed=0):
    rng = np.random.default_rng(seed)
    image = np.full(shape, -3.6, np.float32)
    image[:, 2:-2, 3:-3, 1:-1] = rng.uniform(-3, 5, (shape[0], shape[1] - 4, shape[2] - 6, shape[3] - 2))
    label = np.zeros(shape[1:], np.int64)
    label[3:8, 4:10, 2:6] = 1
    label[4:6, 5:8, 3:5] = 2
    return image, label


def test_registry_and_standard_records():
    assert list(STEPS) == ["reorient", "resample", "crop", "normalize", "slice"]
    pipeline = Pipeline.standard(Geometry("RAS", (1.0, 1.0, 3.0)), "zscore-foreground", 16)
    assert pipeline.record() == [
        {"step": "reorient", "orientation": "RAS"},
        {"step": "resample", "spacing": [1.0, 1.0, 3.0], "axis": 2, "tolerance": 0.05},
        {"step": "normalize", "method": "zscore-foreground"},
        {"step": "slice", "axis": 2, "divisor": 16}]
    assert Pipeline.from_record(json.loads(json.dumps(pipeline.record()))) == pipeline
    assert pipeline.geometry() == Geometry("RAS", (1.0, 1.0, 3.0))
    assert [s.name for s in Pipeline.standard(Geometry("LPS", None, 1), "zscore-nonzero", 8).steps] == \
        ["reorient", "normalize", "slice"]
    native = Pipeline.standard(native_geometry(0), "zscore-nonzero", 8)
    assert native.record() == [{"step": "normalize", "method": "zscore-nonzero"},
                               {"step": "slice", "axis": 0, "divisor": 8}]
    assert native.geometry() == native_geometry(0)
    # a crop is a serving choice: inserted before normalize, never recorded
    cropped = pipeline.with_crop(4)
    assert [s.name for s in cropped.steps] == ["reorient", "resample", "crop", "normalize", "slice"]
    assert cropped.step("crop") == Crop(4, "zscore-foreground", 2, 16)
    assert cropped.record() == pipeline.record() and pipeline.with_crop(None) is pipeline


@pytest.mark.parametrize("record, match", [
    ([{"step": "rotate", "angle": 3}], "unknown preprocessing step 'rotate'"),
    ([{"step": "crop", "margin": 8, "normalization": "zscore-foreground", "axis": 2, "divisor": 16}], "never recorded"),
    ([{"step": "resample", "spacing": [1.0, 0.0, 1.0], "axis": 2, "tolerance": 0.05}], "spacing"),
    ([{"step": "resample", "spacing": [1.0, 1.0, 1.0], "axis": 2}], "tolerance"),
    ([{"step": "normalize", "method": "minmax"}], "unknown normalisation"),
    ([{"step": "reorient", "orientation": "RAX"}], "three axis codes"),
    ([{"step": "slice", "axis": 2, "divisor": 0}], "divisor"),
    ([{"step": "normalize", "method": "zscore-foreground", "clip": 3}], "unknown key 'clip'"),
    ([{"step": "slice", "axis": 2, "divisor": 8}, {"step": "normalize", "method": "zscore-foreground"}], "last"),
    ([{"step": "normalize", "method": "zscore-foreground"}] * 2, "appears 2 times"),
])
def test_bad_records_are_one_value_error_naming_the_step(record, match):
    with pytest.raises(ValueError, match=match):
        Pipeline.from_record(record)
    with pytest.raises(ValueError, match=r"run.json: preprocessing\[\d\]|run.json: preprocessing"):
        parse_json(json.dumps({"preprocessing": record}), "run.json",
                   __import__("trmcore.schema", fromlist=["Object"]).Object({"preprocessing": PIPELINE_JSON}))


def test_steps_equal_the_one_step_grid_and_invert_exactly():
    """reorient + resample applied in turn equal plan_grid's composite map, forwards and back, bit for bit."""
    image, label = _volume()
    geometry = Geometry("RAS", (1.0, 0.5, 3.0))
    pipeline = Pipeline.standard(geometry, "zscore-foreground", 16)
    sample = pipeline.apply(Sample.of(image, PSR_LIKE, label.copy()))
    grid = plan_grid(image.shape[1:], PSR_LIKE, geometry)
    assert grid.reoriented and grid.resampled
    for name in ("native_shape", "native_affine", "transform", "reoriented_shape", "working_shape", "working_affine",
                 "orientation"):
        assert np.array_equal(getattr(sample.grid, name), getattr(grid, name)), name
    working = grid.to_working(image, "linear")
    assert np.array_equal(sample.image, np.stack([normalize(c, "zscore-foreground") for c in working]))
    assert np.array_equal(sample.label, grid.to_working(label, "label"))
    probs = np.random.default_rng(1).random((3, *sample.shape)).astype(np.float32)
    assert np.array_equal(pipeline.invert(probs, sample, "linear"), grid.to_native(probs, "linear"))
    assert np.array_equal(pipeline.invert(sample.label, sample, "label"), grid.to_native(sample.label, "label"))
    # a lossless pipeline (reorient only) gives the stored labels back exactly
    lossless = Pipeline.standard(Geometry("RAS", None), "zscore-foreground", 16)
    again = lossless.apply(Sample.of(image, PSR_LIKE, label.copy()))
    assert again.shape != image.shape[1:] and np.array_equal(lossless.invert(again.label, again, "label"), label)


def test_apply_resumes_after_a_prefix_and_refuses_another_one():
    image, label = _volume()
    full = Pipeline.standard(Geometry("RAS", (1.0, 1.0, 3.0)), "zscore-foreground", None)
    head = Pipeline(full.steps[:1])
    in_two = full.apply(head.apply(Sample.of(image, PSR_LIKE, label.copy())))
    at_once = full.apply(Sample.of(image, PSR_LIKE, label.copy()))
    assert np.array_equal(in_two.image, at_once.image) and np.array_equal(in_two.label, at_once.label)
    other = Pipeline((Reorient("LPS"),)).apply(Sample.of(image, PSR_LIKE))
    with pytest.raises(ValueError, match="do not begin the pipeline"):
        full.apply(other)


def test_slice_and_crop_steps_cut_and_paste_back():
    image = np.full((2, 40, 44, 9), -3.6, np.float32)
    image[:, 12:24, 14:26, 1:-1] = np.random.default_rng(2).uniform(-3, 5, (2, 12, 12, 7))
    pipeline = Pipeline((Normalize("zscore-foreground"), Slice(2, 8))).with_crop(1)
    sample = pipeline.apply(Sample.of(image, np.eye(4)))
    plan = sample.crop
    assert plan.slices.tolist() == list(range(1, image.shape[3] - 1))  # the empty first and last slices skipped
    (h0, h1), (w0, w1) = plan.window
    assert (h1 - h0, w1 - w0) < image.shape[1:3]
    out = np.zeros(image.shape, np.float32)
    for index, padded in pipeline.batches(sample, 3):
        assert padded.shape[2] % 8 == 0 and padded.shape[3] % 8 == 0
        (a, _), (b, _) = plan.pad
        Slice(2, 8).paste(out, padded[:, :, a:a + h1 - h0, b:b + w1 - w0], plan, index)
    inside = np.zeros(image.shape[1:], bool)
    inside[h0:h1, w0:w1, plan.slices] = True
    assert np.array_equal(out[:, inside], sample.image[:, inside]) and not out[:, ~inside].any()
    with pytest.raises(ValueError, match="before normalize"):
        Pipeline((Normalize(), Crop(), Slice()))


def test_step_from_dict_round_trips_every_recorded_step():
    for step in (Reorient("LAS"), Resample((0.5, 0.7, 2.0), 1, 0.1), Normalize("zscore-nonzero"), Slice(0, 32)):
        assert step_from_dict(json.loads(json.dumps(step.to_dict()))) == step

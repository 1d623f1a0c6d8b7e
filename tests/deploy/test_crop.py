"""Cropped inference: only slices with foreground, one aligned in-plane window; same labels, same grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from trmcore.cli.main import main
from trmcore.data.preprocess import foreground_mask, padding_for
from trmcore.infer import Segmenter
from trmcore.data.crop import DEFAULT_CROP_MARGIN, plan_crop, plan_full, volume_foreground

from .conftest import DIVISOR, case_files


class CountingSession:
    """Wraps an onnxruntime session and records the shape of every batch it runs."""

    def __init__(self, session):
        self.session, self.shapes = session, []

    def run(self, outputs, feeds, *run_options):
        (batch,) = feeds.values()
        self.shapes.append(batch.shape)
        return self.session.run(outputs, feeds, *run_options)

    def __getattr__(self, name):
        return getattr(self.session, name)


def _counting(segmenter: Segmenter) -> CountingSession:
    segmenter.session = CountingSession(segmenter.session)
    return segmenter.session


def _case(phantom, case="phantom_001"):
    return np.stack([nib.load(str(p)).get_fdata(dtype=np.float32) for p in case_files(phantom, case)])


@pytest.mark.parametrize("seed", range(6))
def test_plan_covers_the_foreground_on_the_uncropped_grid(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(9, 40, 3))
    axis, divisor, margin = int(rng.integers(0, 3)), int(rng.choice([4, 8, 16])), int(rng.integers(0, 6))
    mask = np.zeros(shape, bool)
    lo = [int(rng.integers(0, n)) for n in shape]
    hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, shape)]
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = rng.random(tuple(b - a for a, b in zip(lo, hi))) < 0.5
    mask[tuple(lo)] = mask[tuple(b - 1 for b in hi)] = True
    plan = plan_crop(mask, axis, divisor, margin)
    np.testing.assert_array_equal(plan.slices, np.flatnonzero(mask.any(axis=tuple(i for i in range(3) if i != axis))))
    plane = [n for i, n in enumerate(shape) if i != axis]
    box = [(a, b) for i, (a, b) in enumerate(zip(lo, hi)) if i != axis]
    full_pad = padding_for(tuple(plane), divisor)
    for dim in range(2):
        (a, b), (before, after) = plan.window[dim], plan.pad[dim]
        assert 0 <= a <= max(0, box[dim][0] - margin) and min(plane[dim], box[dim][1] + margin) <= b <= plane[dim]
        assert (before + b - a + after) % divisor == 0
        # the window's padded start sits where the uncropped path puts it, on a divisor boundary
        assert (a - before + full_pad[dim][0]) % divisor == 0
        # padding only where the window meets the plane's edge (as the uncropped path pads there)
        assert before == 0 or a == 0
        assert after == 0 or b == plane[dim]


def test_empty_mask_runs_nothing_and_full_plan_is_everything():
    assert plan_crop(np.zeros((5, 6, 7), bool), 2, 8).empty
    full = plan_full((5, 6, 7), 1, 8)
    assert full.slices.tolist() == list(range(6)) and full.window == ((0, 5), (0, 7))


def test_mask_is_the_normalisation_mask_united_over_channels():
    a = np.zeros((4, 5, 6), np.float32)
    b = np.zeros_like(a)
    a[1, 1, 1], b[2, 3, 4] = -3.0, 7.0  # negative intensities are foreground too
    mask = volume_foreground(np.stack([a, b]))
    np.testing.assert_array_equal(mask, foreground_mask(a) | foreground_mask(b))
    assert mask.sum() == 2


def test_cropped_labels_equal_uncropped_on_the_phantom(phantom, onnx_model):
    image = _case(phantom)
    whole = Segmenter(onnx_model, providers="cpu", batch_size=3)
    cropped = Segmenter(onnx_model, providers="cpu", batch_size=3, crop_margin=DEFAULT_CROP_MARGIN)
    expected, got = whole.predict_volume(image), cropped.predict_volume(image)
    assert len(np.unique(expected)) >= 3
    np.testing.assert_array_equal(got, expected)
    probabilities = cropped.predict_probabilities(image)
    np.testing.assert_array_equal(cropped.label_values[0] == 0 and probabilities.argmax(axis=0) == 0, got == 0)


def test_empty_slices_are_skipped_and_background_on_the_input_grid(phantom, onnx_model):
    image = _case(phantom)
    # a larger field of view: empty slices above and below, empty rows and columns around
    big = np.zeros((2, image.shape[1] + 30, image.shape[2] + 21, image.shape[3] + 9), np.float32)
    big[:, 17:17 + image.shape[1], 5:5 + image.shape[2], 4:4 + image.shape[3]] = image
    segmenter = Segmenter(onnx_model, providers="cpu", batch_size=4, crop_margin=2)
    calls = _counting(segmenter)
    labels = segmenter.predict_volume(big)
    assert labels.shape == big.shape[1:]
    fg_slices = np.flatnonzero(volume_foreground(big).any(axis=(0, 1)))
    assert sum(shape[0] for shape in calls.shapes) == fg_slices.size < big.shape[3]
    height, width = calls.shapes[0][2:]
    assert height * width < 0.6 * (big.shape[1] + 6) * (big.shape[2] + 3)  # the window, not the plane
    assert height % DIVISOR == 0 and width % DIVISOR == 0
    plan = plan_crop(volume_foreground(big), 2, DIVISOR, 2)
    ran = np.zeros(big.shape[1:], bool)
    ran[plan.window[0][0]:plan.window[0][1], plan.window[1][0]:plan.window[1][1], plan.slices] = True
    assert (labels[~ran] == 0).all() and labels[ran].any()
    # the uncropped path sees more background context (the wider field of view), so a few labels at the
    # brain's border may differ; on the phantom's own field of view they are equal (test above)
    whole = Segmenter(onnx_model, providers="cpu").predict_volume(big)
    foreground = volume_foreground(big)
    assert np.mean(labels[foreground] == whole[foreground]) > 0.99


def test_all_background_volume_never_runs_the_network(onnx_model):
    segmenter = Segmenter(onnx_model, providers="cpu", crop_margin=0)
    calls = _counting(segmenter)
    labels = segmenter.predict_volume(np.zeros((2, 12, 9, 5), np.float32))
    assert calls.shapes == [] and labels.shape == (12, 9, 5) and not labels.any()
    logits = segmenter.predict_logits(np.zeros((2, 12, 9, 5), np.float32))
    assert (logits.argmax(axis=0) == 0).all()


def test_predict_crops_by_default_and_no_crop_turns_it_off(phantom, onnx_model, tmp_path, monkeypatch):
    from trmcore.infer import segmenter as segmenter_module

    made = []
    original = segmenter_module.Segmenter.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self.crop_margin)

    monkeypatch.setattr(segmenter_module.Segmenter, "__init__", recording)
    source = case_files(phantom, "phantom_002")[0]
    outputs = []
    for extra in ([], ["--no-crop"], ["--crop-margin", "3"]):
        out = tmp_path / f"out{len(outputs)}.nii.gz"
        assert main(["predict", "-m", str(onnx_model), "-i", str(source), "-o", str(out), "-q", *extra]) == 0
        outputs.append(nib.load(str(out)))
    assert made == [DEFAULT_CROP_MARGIN, None, 3]
    reference = nib.load(str(source))
    for written in outputs:
        assert written.shape == reference.shape
        np.testing.assert_allclose(written.affine, reference.affine)
    np.testing.assert_array_equal(np.asarray(outputs[0].dataobj), np.asarray(outputs[1].dataobj))

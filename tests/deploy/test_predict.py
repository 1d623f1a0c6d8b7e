"""Segmenter and trm predict: same labels as torch, geometry kept, folder mode, atomic outputs."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from trmcore.cli.main import main
from trmcore.infer import Segmenter

from .conftest import LABEL_VALUES, case_files, file_digest, torch_labels

# Max |onnxruntime - torch| on logits, relative to max(1, max |logit|) (docs/deploy.md):
# labels may differ only where torch's two best logits are closer than this.
LOGIT_TOLERANCE = 1e-4


def test_segmenter_labels_equal_torch(run_dir, phantom, onnx_model):
    expected, margin, logits = torch_labels(run_dir, phantom, "phantom_001")
    segmenter = Segmenter(onnx_model, providers="cpu", batch_size=3)
    images = [nib.load(str(p)) for p in case_files(phantom, "phantom_001")]
    got_logits = segmenter.predict_logits(images)
    allowed = LOGIT_TOLERANCE * max(1.0, float(np.abs(logits).max()))
    assert got_logits.shape == logits.shape
    assert np.abs(got_logits - logits).max() <= allowed
    labels = segmenter.predict_volume(images)
    assert labels.dtype == np.uint8 and labels.shape == expected.shape
    decided = margin > 2 * allowed
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(labels[decided], expected[decided])
    # the test means something only if several label values are predicted
    assert len(np.unique(expected)) >= 2
    assert set(np.unique(labels)) <= set(LABEL_VALUES)


def test_segmenter_accepts_arrays_and_reorders_named_channels(phantom, onnx_model):
    segmenter = Segmenter(onnx_model, providers="cpu")
    t1, t2 = (nib.load(str(p)).get_fdata(dtype=np.float32) for p in case_files(phantom, "phantom_000"))
    from_list = segmenter.predict_volume([t1, t2])
    np.testing.assert_array_equal(segmenter.predict_volume(np.stack([t1, t2])), from_list)
    np.testing.assert_array_equal(segmenter.predict_volume([t2, t1], channels=["T2", "T1"]), from_list)
    probabilities = segmenter.predict_probabilities([t1, t2])
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="do not match the model"):
        segmenter.predict_volume([t1, t2], channels=["T1", "FLAIR"])


def _reoriented_copy(src, dst):
    """Save ``src`` stored as ALS (same world content, shifted), x3 intensities, distinctive header fields."""
    image = nib.load(str(src))
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(image.affine),
                                                nib.orientations.axcodes2ornt("ALS"))
    data = nib.orientations.apply_orientation(image.get_fdata(dtype=np.float32), transform)
    affine = image.affine @ nib.orientations.inv_ornt_aff(transform, image.shape)
    affine[:3, 3] += [90.5, -120.25, -60.0]
    out = nib.Nifti1Image(data * 3.0, affine)
    out.header["descrip"] = b"scanner XYZ"
    out.header.set_xyzt_units("mm", "sec")
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=2)
    nib.save(out, str(dst))
    return out


def test_cli_file_mode_keeps_affine_and_header(phantom, onnx_model, tmp_path, capsys):
    case = tmp_path / "in"
    case.mkdir()
    refs = [_reoriented_copy(src, case / f"subj_{k:04d}.nii.gz")
            for k, src in enumerate(case_files(phantom, "phantom_002"))]
    out = tmp_path / "out" / "subj_seg.nii.gz"
    assert main(["predict", "-m", str(onnx_model), "-i", str(case / "subj_0000.nii.gz"), "-o", str(out),
                 "--threads", "1", "-q"]) == 0
    assert "CPUExecutionProvider" in capsys.readouterr().err
    written = nib.load(str(out))
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, refs[0].affine, atol=1e-6)
    for field in ("pixdim", "qform_code", "sform_code", "xyzt_units", "descrip", "quatern_b", "srow_x"):
        np.testing.assert_array_equal(written.header[field], refs[0].header[field], err_msg=field)
    labels = np.asarray(written.dataobj)
    assert labels.shape == refs[0].shape
    assert set(np.unique(labels)) <= set(LABEL_VALUES)
    # x3 intensities and the ALS storage change nothing: z-scoring, reorientation to the model's RAS and back
    segmenter = Segmenter(onnx_model, providers="cpu")
    direct = segmenter.predict_volume([nib.load(str(p)) for p in case_files(phantom, "phantom_002")])
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                nib.orientations.axcodes2ornt("ALS"))
    assert (labels == nib.orientations.apply_orientation(direct, transform)).mean() > 0.999
    # no temporary left behind; the provenance record beside the output
    assert sorted(p.name for p in out.parent.iterdir()) == ["subj_seg.nii.gz", "subj_seg_predict.json"]


def test_cli_folder_mode_with_probabilities(phantom, onnx_model, tmp_path):
    """imagesTr holds T1, T2 and FLAIR; dataset.json names them, so T1 and T2 are picked by name."""
    inputs = sorted((phantom / "imagesTr").iterdir())
    before = {p: file_digest(p) for p in inputs}
    out = tmp_path / "pred"
    assert main(["predict", "-m", str(onnx_model), "-i", str(phantom / "imagesTr"), "-o", str(out),
                 "--probabilities", "--batch-size", "4", "-q"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"phantom_00{i}.nii.gz" for i in range(3)]
                           + [f"phantom_00{i}_probabilities.nii.gz" for i in range(3)] + ["predict.json"])
    segmenter = Segmenter(onnx_model, providers="cpu")
    for i in range(3):
        labels = np.asarray(nib.load(str(out / f"phantom_00{i}.nii.gz")).dataobj)
        direct = segmenter.predict_volume([nib.load(str(p)) for p in case_files(phantom, f"phantom_00{i}")])
        np.testing.assert_array_equal(labels, direct)
        probs = nib.load(str(out / f"phantom_00{i}_probabilities.nii.gz")).get_fdata(dtype=np.float32)
        assert probs.shape == (*labels.shape, len(LABEL_VALUES))
        np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(LABEL_VALUES)[probs.argmax(axis=-1)], labels)
    assert {p: file_digest(p) for p in inputs} == before
    # a second run refuses to replace outputs unless asked
    assert main(["predict", "-m", str(onnx_model), "-i", str(phantom / "imagesTr"), "-o", str(out),
                 "-q"]) == 2
    assert main(["predict", "-m", str(onnx_model), "-i", str(phantom / "imagesTr"), "-o", str(out),
                 "-q", "--overwrite"]) == 0

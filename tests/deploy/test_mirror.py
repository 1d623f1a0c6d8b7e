"""Issue 22: test-time mirroring only along the axes a model was trained with flipped."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from trmcore.cli.main import main
from trmcore.infer import Segmenter
from trmcore.infer.metadata import ModelMetadata
from trmcore.infer.predict_files import _probabilities, mirror_axes_for
from trmcore.infer.segmenter import softmax


def _export(run_dir, tmp_path, axes, name):
    from trmcore.export import export_run
    from trmcore.training.runinfo import read_run_info, write_run_info

    run = tmp_path / f"run-{name}"
    shutil.copytree(run_dir, run)
    info = read_run_info(run)
    info.mirror_axes = axes
    write_run_info(run, info)
    return export_run(run, tmp_path / f"{name}.onnx").path


@pytest.fixture(scope="module")
def width_flipped(run_dir, tmp_path_factory):
    """The deploy run exported as trained with flips along in-plane axis 1 only."""
    return _export(run_dir, tmp_path_factory.mktemp("mirror"), [1], "axis1")


def test_metadata_records_the_axes(width_flipped, onnx_model):
    assert Segmenter(width_flipped).metadata.mirror_axes == [1]
    assert Segmenter(onnx_model).metadata.mirror_axes is None  # trained before it was recorded: no flips
    record = ModelMetadata.from_json(Segmenter(width_flipped).metadata.to_json())
    assert record.mirror_axes == [1]
    with pytest.raises(ValueError, match="mirror_axes"):
        ModelMetadata(channels=["T1"], label_names=["bg", "a"], label_values=[0, 1], mirror_axes=[2])


def test_only_trained_axes_are_mirrored(width_flipped, onnx_model):
    flipped, plain = Segmenter(width_flipped), Segmenter(onnx_model)
    assert mirror_axes_for([flipped], True) == [1]
    assert mirror_axes_for([flipped], [1]) == [1]
    assert mirror_axes_for([flipped, plain], False) == []
    with pytest.raises(ValueError, match=r"cannot mirror along axes \[0\]: .* flips along in-plane axes \[1\] only"):
        mirror_axes_for([flipped], [0])
    with pytest.raises(ValueError, match="trained with no flips .it does not record mirror axes"):
        mirror_axes_for([plain], True)
    with pytest.raises(ValueError, match="no flips"):
        mirror_axes_for([flipped, plain], True)


def test_mirrored_probabilities_are_the_mean_over_the_trained_flips(width_flipped):
    """Axis 1 only: (p(x) + flip(p(flip(x)))) / 2 along the slice's second axis (volume axis Y for axial)."""
    segmenter = Segmenter(width_flipped)
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(2, 24, 20, 6)).astype(np.float32)
    got = _probabilities(segmenter, volume, [1], progress=False)
    plain = softmax(segmenter.predict_logits(volume), axis=0)
    mirrored = np.flip(softmax(segmenter.predict_logits(np.ascontiguousarray(np.flip(volume, axis=2))), axis=0),
                       axis=2)
    np.testing.assert_allclose(got, (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, plain, atol=1e-4)


def test_cli_refuses_untrained_axes_with_one_line(phantom, width_flipped, onnx_model, tmp_path, capsys):
    base = ["predict", "-i", str(phantom / "imagesTr"), "-q"]
    assert main(base + ["-m", str(onnx_model), "-o", str(tmp_path / "a"), "--mirror"]) == 2
    err = capsys.readouterr().err.strip()
    # the model line trm predict always prints, then the refusal as one line
    assert "Traceback" not in err and "never saw" in err.splitlines()[-1] and "no flips" in err.splitlines()[-1]
    assert main(base + ["-m", str(width_flipped), "-o", str(tmp_path / "b"), "--mirror-axes", "0"]) == 2
    assert "flips along in-plane axes [1] only" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").glob("*.nii.gz"))

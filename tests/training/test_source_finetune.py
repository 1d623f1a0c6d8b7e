"""trm finetune --source for an nnU-Net v2 2d result folder and a MONAI network, then trm export and trm predict.

The fine-tuned run keeps the source's network (run.json ``network``): its encoder frozen and
bitwise the source's, a fresh head for the target's classes, the rest trained; trm export turns it
into ONNX whose logits match torch's, and trm predict serves it.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from trmcore.cli.main import main

from .test_sources import CHANNELS, monai_json, write_nnunet_2d

TINY = ["--iterations", "3", "--batch-size", "4", "--val-every", "0", "--val-fraction", "0.25", "--device", "cpu",
        "-q"]


def _finetune(phantom, source, out, *extra):
    return main(["finetune", str(phantom), "--channel", ",".join(CHANNELS), "--labels", "CSF", "--source",
                 str(source), "-o", str(out), *TINY, *extra])


def test_finetune_an_nnunet_2d_source_export_and_predict(phantom, tmp_path):
    folder = write_nnunet_2d(tmp_path, schemes=("ZScoreNormalization",) * 2, masks=(True, True))
    run = tmp_path / "run"
    assert _finetune(phantom, folder, run, "--source-fold", "1", "--method", "trm") == 0
    info = json.loads((run / "run.json").read_text())
    assert info["network"]["kind"] == "nnunet" and info["network"]["swap"] is True
    assert (info["model"]["in_channels"], info["model"]["num_classes"]) == (2, 2)
    assert (info["normalization"], info["axis"], info["divisor"]) == ("zscore-nonzero", 2, 4)
    assert info["orientation"] == "RAS" and info["spacing"][:2] == [6.25, 6.875]

    from trmcore.models.foreign import ForeignNet
    from trmcore.models.nnunet import load_nnunet_model
    from trmcore.training.checkpoint import load_run

    source = load_nnunet_model(folder, fold=1).network.state_dict()
    model, _ = load_run(run)
    assert isinstance(model, ForeignNet)
    tuned = model.network.state_dict()
    encoder = [k for k in tuned if k.startswith("encoder.")]
    assert encoder and all(torch.equal(tuned[k], source[k]) for k in encoder)  # frozen (SPEC 5)
    assert tuned["decoder.seg_layers.1.weight"].shape[0] == 2  # a head for background + CSF
    trained = [k for k in tuned if k.startswith("decoder.stages.") and k.endswith("weight")]
    assert any(not torch.equal(tuned[k], source[k]) for k in trained)
    x = torch.randn(2, 2, 16, 12)
    with torch.no_grad():  # the run's forward is the nnU-Net network on (y, x) slices
        torch.testing.assert_close(model(x), model.network(x.transpose(-1, -2)).transpose(-1, -2))

    # The fine-tuned run is a source in turn (sequential transfer): the same network, its head kept (2 classes).
    again = tmp_path / "again"
    assert _finetune(phantom, run, again, "--method", "vanilla") == 0
    second = json.loads((again / "run.json").read_text())
    assert second["network"] == info["network"] and second["divisor"] == 4
    model2, _ = load_run(again)
    state2 = model2.network.state_dict()
    assert all(torch.equal(state2[k], tuned[k]) for k in encoder)
    assert torch.equal(state2["decoder.seg_layers.1.weight"], tuned["decoder.seg_layers.1.weight"]) is False

    # run.json's network record cannot make trmcore import or call anything else.
    import shutil

    hostile = tmp_path / "hostile"
    shutil.copytree(run, hostile)
    record = json.loads((hostile / "run.json").read_text())
    record["network"]["architecture"]["network_class_name"] = "os.system"
    (hostile / "run.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="not under dynamic_network_architectures"):
        load_run(hostile)
    record["network"] = {"kind": "monai", "network": "monai.networks.nets:UNet",
                         "kwargs": {"spatial_dims": "$__import__('os').system('touch pwned')"}}
    (hostile / "run.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="evaluates no code"):
        load_run(hostile)

    # trm rank --validate fine-tunes nnU-Net sources too.
    ranked = tmp_path / "rank.json"
    assert main(["rank", str(phantom), "--channel", ",".join(CHANNELS), "--labels", "CSF", "--sources", str(folder),
                 "--fold", "1", "--validate", "--iterations", "2", "--method", "vanilla", "--device", "cpu",
                 "-o", str(ranked)]) == 0
    validation = json.loads(ranked.read_text())["validation"]
    assert len(validation["dice"]) == 1 and 0.0 <= validation["dice"][0] <= 1.0

    onnx_path = tmp_path / "model.onnx"
    assert main(["export", str(run), "-o", str(onnx_path)]) == 0
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    out = tmp_path / "pred"
    assert main(["predict", "-m", str(onnx_path), "-i", str(phantom / "imagesTr"), "-o", str(out), "-q"]) == 0
    written = sorted(out.glob("*.nii.gz"))
    assert len(written) == len(list((phantom / "labelsTr").glob("*.nii.gz")))
    label = nib.load(phantom / "labelsTr" / written[0].name)
    seg = np.asarray(nib.load(written[0]).dataobj)
    assert seg.shape == label.shape and set(np.unique(seg)) <= {0, 1}
    np.testing.assert_allclose(nib.load(written[0]).affine, label.affine)


def test_finetune_a_monai_network(phantom, tmp_path, capsys):
    spec = monai_json(tmp_path)
    assert _finetune(phantom, spec, tmp_path / "frozen") == 2  # a MONAI UNet has no encoder to freeze
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--freeze none" in err
    run = tmp_path / "run"
    assert _finetune(phantom, spec, run, "--freeze", "none", "--method", "class-weight") == 0
    info = json.loads((run / "run.json").read_text())
    assert info["network"] == {"kind": "monai", "network": "monai.networks.nets:UNet",
                               "kwargs": {"spatial_dims": 2, "in_channels": 2, "out_channels": 3,
                                          "channels": [4, 8], "strides": [2], "num_res_units": 1}}
    assert info["model"]["num_classes"] == 2 and info["divisor"] == 2
    # --resume extends it: the same network record, source and data.
    assert _finetune(phantom, spec, run, "--freeze", "none", "--method", "class-weight", "--resume",
                     "--iterations", "4") == 0
    assert json.loads((run / "run.json").read_text())["iterations_done"] == 4
    from trmcore.training.checkpoint import load_run

    model, _ = load_run(run)
    assert model(torch.zeros(1, 2, 8, 6)).shape == (1, 2, 8, 6)
    assert main(["export", str(run), "-o", str(tmp_path / "monai.onnx")]) == 0


def test_sources_that_cannot_be_served_are_refused_with_one_line(phantom, tmp_path, capsys):
    folder = write_nnunet_2d(tmp_path)  # channel 2 normalised with nnU-Net's CT scheme
    assert _finetune(phantom, folder, tmp_path / "run", "--source-fold", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CTNormalization" in err and str(folder) in err
    assert not (tmp_path / "run" / "run.json").exists()

"""UNet structure, size checks, encoder freezing and checkpoint round trips."""

from __future__ import annotations

import json

import pytest
import torch

from trmcore.models import UNet, UNetConfig, create_unet, freeze_encoder
from trmcore.training import RunInfo, TrainConfig, read_run_info
from trmcore.training.checkpoint import load_run, save_run


def small_unet(**kwargs) -> UNet:
    torch.manual_seed(0)
    return create_unet(**{"depth": 2, "width": 4, **kwargs})


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_output_shape_for_every_norm(norm):
    model = small_unet(norm=norm, in_channels=2, num_classes=3)
    assert model(torch.randn(2, 2, 16, 24)).shape == (2, 3, 16, 24)


def test_submodules_split_the_network():
    model = small_unet()
    x = torch.randn(1, 1, 16, 16)
    features = model.encoder(x)
    assert [f.shape[1] for f in features] == [4, 8, 16]
    assert torch.allclose(model.head(model.decoder(features)), model(x))


@pytest.mark.parametrize("shape", [(1, 1, 15, 16), (1, 1, 16, 18)])
def test_size_not_divisible_raises(shape):
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth = 4"):
        small_unet()(torch.zeros(shape))


def test_wrong_channels_raise():
    with pytest.raises(ValueError, match="channels"):
        small_unet()(torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("bad", [{"norm": "layer"}, {"depth": 0}, {"num_classes": 1}, {"width": 2.5}])
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        UNetConfig(**bad)


def test_frozen_encoder_keeps_batchnorm_in_eval():
    model = freeze_encoder(small_unet())  # the 0.x function shim; the method is tested below
    model.train()
    assert not model.encoder.training
    assert model.decoder.training
    assert all(not p.requires_grad for p in model.encoder.parameters())
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model(torch.randn(4, 1, 16, 16) * 3 + 1)
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_freeze_and_unfreeze_are_model_methods():
    model = small_unet()
    assert model.freeze_encoder() is model and model.encoder_frozen
    model.train()
    assert not model.encoder.training and model.decoder.training
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert model.unfreeze_encoder() is model and not model.encoder_frozen
    assert model.encoder.training  # follows the model's mode again
    assert all(p.requires_grad for p in model.encoder.parameters())
    before = model.encoder.levels[0][1].running_mean.clone()
    model(torch.randn(4, 1, 16, 16) * 3 + 1)
    assert not torch.equal(before, model.encoder.levels[0][1].running_mean)
    model.freeze_encoder()
    model.eval()
    model.unfreeze_encoder()
    assert not model.encoder.training  # an eval-mode model stays in eval


def test_unfrozen_batchnorm_updates():
    model = small_unet().train()
    before = model.encoder.levels[0][1].running_mean.clone()
    model(torch.randn(4, 1, 16, 16) * 3 + 1)
    assert not torch.equal(before, model.encoder.levels[0][1].running_mean)


def test_checkpoint_round_trip(tmp_path):
    model = small_unet(num_classes=3)
    model.train()
    model(torch.randn(2, 1, 16, 16))  # move BatchNorm statistics away from their init
    info = RunInfo(model=model.config, channels=["T1"], label_names=["background", "NCR", "ED"],
                   label_values=[0, 1, 2], divisor=4, method="trm", source="runs/src",
                   training=TrainConfig(iterations=10, method="trm"))
    save_run(tmp_path / "run", model, info)
    loaded, loaded_info = load_run(tmp_path / "run")
    assert loaded_info == info
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(model.eval()(x), loaded(x))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["method"] == "trm"
    assert read_run_info(tmp_path / "run") == info
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_load_missing_run_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a trmcore run folder"):
        load_run(tmp_path)


def test_run_info_checks_label_count():
    with pytest.raises(ValueError, match="label names"):
        RunInfo(model=UNetConfig(num_classes=3), channels=["T1"], label_names=["background", "CSF"],
                label_values=[0, 1])


def test_onnx_export_traces_without_shape_guards(tmp_path):
    model = small_unet().eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 16, 16),), str(tmp_path / "m.onnx"), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    x = torch.randn(2, 1, 32, 24)
    (out,) = session.run(None, {"x": x.numpy()})
    assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-5)

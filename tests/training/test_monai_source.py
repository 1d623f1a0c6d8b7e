"""MONAI networks from a bundle folder or a JSON (trmcore.models.monai_net), built without evaluating code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("monai")

from monai.networks.nets import UNet  # noqa: E402

from trmcore.models.monai_net import load_monai_network  # noqa: E402
from trmcore.training.loss import source_risk_maps  # noqa: E402

KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2],
          "num_res_units": 1}


def trained_unet() -> UNet:
    torch.manual_seed(2)
    return UNet(**KWARGS).eval()


def write_bundle(root: Path, network_def: dict) -> Path:
    bundle = root / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def,
                                                                    "network": "$@network_def.to(@device)"}))
    torch.save(trained_unet().state_dict(), bundle / "models" / "model.pt")
    return bundle


def test_bundle_and_json_give_the_trained_network(tmp_path):
    expected_net = trained_unet()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = expected_net(x)
    bundle = write_bundle(tmp_path, {"_target_": "UNet", **KWARGS})
    spec = tmp_path / "net.json"
    torch.save(expected_net.state_dict(), tmp_path / "weights.pt")
    spec.write_text(json.dumps({"network": "monai.networks.nets:UNet", "kwargs": KWARGS, "weights": "weights.pt",
                                "channels": ["T1"], "normalization": "zscore-nonzero", "divisor": 2}))
    for source in (bundle, spec):
        loaded = load_monai_network(source)
        with torch.no_grad():
            torch.testing.assert_close(loaded.network(x), expected)
    assert (loaded.channels, loaded.normalization, loaded.divisor) == (["T1"], "zscore-nonzero", 2)
    labels = (x[:, 0] > 0.5).long()
    risk = source_risk_maps(loaded.network, [(x, labels)], num_classes=2)
    assert next(iter(risk)).risk.shape == (1, 16, 16, 16)


@pytest.mark.parametrize("network_def,message", [
    ({"_target_": "os.system", "command": "touch pwned"}, "not in monai.networks"),
    ({"_target_": "UNet", **KWARGS, "channels": "$__import__('os').system('touch pwned')"}, "evaluates no code"),
    ({"_target_": "UNet", **KWARGS, "act": {"_target_": "torch.nn.ReLU"}}, "only the network itself"),
])
def test_bundles_cannot_run_code(tmp_path, monkeypatch, network_def, message):
    monkeypatch.chdir(tmp_path)
    bundle = write_bundle(tmp_path, network_def)
    with pytest.raises(ValueError, match=message):
        load_monai_network(bundle)
    assert not (tmp_path / "pwned").exists()


class MarkerPayload:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pickled_weights_with_code_are_refused(tmp_path):
    bundle = write_bundle(tmp_path, {"_target_": "UNet", **KWARGS})
    marker = tmp_path / "pwned"
    torch.save({"x": MarkerPayload(marker)}, bundle / "models" / "model.pt")
    with pytest.raises(ValueError, match="cannot be read as plain tensors"):
        load_monai_network(bundle)
    assert not marker.exists()

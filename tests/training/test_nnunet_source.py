"""nnU-Net v2 result folders as sources (trmcore.models.nnunet): safe loading, the network, the normalisation.

The folders are written as nnU-Net v2 (>= 2.4) writes them: plans.json with an
``architecture`` entry per configuration (as ExperimentPlanner.get_plans_for_configuration),
dataset.json, and ``fold_0/checkpoint_final.pth`` with the keys of
nnUNetTrainer.save_checkpoint (NumPy scalars in the log, a torch.device in the init args).
The network is dynamic_network_architectures' PlainConvUNet, nnU-Net's own.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("dynamic_network_architectures")

from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: E402

from trmcore import ops  # noqa: E402
from trmcore.models.nnunet import is_nnunet_folder, load_nnunet_model, read_checkpoint  # noqa: E402
from trmcore.training.loss import source_risk_maps  # noqa: E402

LABELS = {"background": 0, "CSF": 1, "GM": 2, "WM": 3}


def _arch(dims: int) -> dict:
    conv = "torch.nn.modules.conv.Conv2d" if dims == 2 else "torch.nn.modules.conv.Conv3d"
    norm = "torch.nn.modules.instancenorm.InstanceNorm2d" if dims == 2 else \
        "torch.nn.modules.instancenorm.InstanceNorm3d"
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": conv,
                        "kernel_sizes": [[3] * dims] * 3, "strides": [[1] * dims, [2] * dims, [2] * dims],
                        "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                        "norm_op": norm, "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _network(arch: dict, dims: int) -> PlainConvUNet:
    kwargs = dict(arch["arch_kwargs"])
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    norm = torch.nn.InstanceNorm2d if dims == 2 else torch.nn.InstanceNorm3d
    kwargs.update(conv_op=conv, norm_op=norm, nonlin=torch.nn.LeakyReLU, dropout_op=None)
    # nnU-Net trains with deep supervision on; the checkpoint holds every seg layer either way.
    return PlainConvUNet(input_channels=2, num_classes=len(LABELS), deep_supervision=True, **kwargs)


def write_nnunet_folder(root: Path, configuration: str = "2d", extra: object = None, build=None) -> tuple:
    """An nnU-Net v2 result folder with a trained-looking checkpoint; returns (folder, the network).

    ``build(arch, dims)``: the network (default: dynamic_network_architectures' PlainConvUNet directly).
    """
    dims = 2 if configuration == "2d" else 3
    folder = root / "Dataset004_Brain" / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    (folder / "fold_0").mkdir(parents=True)
    arch = _arch(dims)
    plans = {
        "dataset_name": "Dataset004_Brain", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "transpose_forward": [2, 0, 1],
        "transpose_backward": [1, 2, 0], "image_reader_writer": "NibabelIOWithReorient",
        "configurations": {
            configuration: {"data_identifier": f"nnUNetPlans_{configuration}", "batch_size": 2,
                            "patch_size": [32] * dims, "spacing": [1.0] * dims,
                            "normalization_schemes": ["ZScoreNormalization", "CTNormalization"],
                            "use_mask_for_norm": [True, False], "architecture": arch},
        },
        "foreground_intensity_properties_per_channel": {
            "0": {"mean": 100.0, "std": 20.0, "percentile_00_5": 10.0, "percentile_99_5": 300.0},
            "1": {"mean": 40.0, "std": 10.0, "percentile_00_5": -100.0, "percentile_99_5": 200.0}},
    }
    dataset = {"channel_names": {"0": "T1", "1": "CT"}, "labels": LABELS, "numTraining": 4,
               "file_ending": ".nii.gz"}
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    torch.manual_seed(1)
    network = (build or _network)(arch, dims)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99)
    network(torch.randn(1, 2, *[32] * dims))[0].sum().backward()
    optimizer.step()
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5), np.float64(0.6)], "ema_fg_dice": [np.float32(0.55)],
                    "dice_per_class_or_region": [[np.float64(0.4), np.float64(0.7)]], "epoch_end_timestamps": [1.5],
                    "lrs": [0.01]},
        "_best_ema": np.float64(0.55),
        "current_epoch": 2,
        "init_args": {"plans": plans, "configuration": configuration, "fold": 0, "dataset_json": dataset,
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1),
    }
    if extra is not None:
        checkpoint["extra"] = extra
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder, network


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_loads_the_network_and_its_weights(tmp_path, configuration):
    folder, trained = write_nnunet_folder(tmp_path, configuration)
    assert is_nnunet_folder(folder)
    model = load_nnunet_model(folder, fold=0)
    dims = 2 if configuration == "2d" else 3
    assert (model.configuration, model.spatial_dims, model.channels) == (configuration, dims, ["T1", "CT"])
    assert model.num_source_classes == 4 and model.divisor == (4,) * dims
    assert model.transpose_forward == (2, 0, 1) and not model.network.training
    x = torch.randn(2, 2, *[16] * dims)
    trained.eval()
    with torch.no_grad():
        expected = trained(x)[0]  # the full-resolution output of the deep-supervision list
        logits = model.network(x)
    assert logits.shape == (2, 4, *[16] * dims)
    torch.testing.assert_close(logits, expected)


def test_risk_maps_and_leep_of_an_nnunet_source(tmp_path):
    folder, _ = write_nnunet_folder(tmp_path, "3d_fullres")
    model = load_nnunet_model(folder)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        images = torch.randn(1, 2, 16, 16, 16, generator=gen)
        batches.append((images, (images[:, 0] > 0.8).long()))
    risk = source_risk_maps(model.network, batches, num_classes=2)
    maps = list(risk)
    assert maps[0].risk.shape == (1, 16, 16, 16)
    assert float(maps[0].risk.min()) >= 1.0 and float(maps[0].risk.max()) <= 10.0 + 1e-5
    with torch.no_grad():
        logits = torch.cat([model.network(b[0]) for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert risk.leep() == pytest.approx(ops.leep(logits, labels, 2), rel=1e-6)


class MarkerPayload:
    """Unpickling this creates ``path``: what a hostile checkpoint would do."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_hostile_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    folder, _ = write_nnunet_folder(tmp_path, "2d", extra=MarkerPayload(marker))
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    refused = r"holds a pickled \S+, which trmcore does not load \(it could run code\)"
    with pytest.raises(ValueError, match=refused) as err:
        load_nnunet_model(folder, fold=0)
    assert str(checkpoint) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    # The payload is live: loading as nnU-Net itself does (weights_only=False) runs it.
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_plain_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint_final.pth"
    path.write_bytes(pickle.dumps({"network_weights": {}, "x": MarkerPayload(marker)}))
    with pytest.raises(ValueError, match=str(path)):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("field,value,message", [
    ("network_class_name", "os.system", "not under dynamic_network_architectures"),
    ("network_class_name", "dynamic_network_architectures.architectures.unet.Nope", "does not exist"),
    ("conv_op", "subprocess.Popen", "not under torch.nn"),
])
def test_plans_cannot_import_or_call_anything_else(tmp_path, field, value, message):
    folder, _ = write_nnunet_folder(tmp_path, "2d")
    plans = json.loads((folder / "plans.json").read_text())
    arch = plans["configurations"]["2d"]["architecture"]
    (arch if field == "network_class_name" else arch["arch_kwargs"])[field] = value
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ValueError, match=message):
        load_nnunet_model(folder)


def test_missing_fold_and_old_plans(tmp_path):
    folder, _ = write_nnunet_folder(tmp_path, "2d")
    with pytest.raises(FileNotFoundError, match="fold_3.*folds here: fold_0"):
        load_nnunet_model(folder, fold=3)
    plans = json.loads((folder / "plans.json").read_text())
    del plans["configurations"]["2d"]["architecture"]
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ValueError, match="nnU-Net >= 2.4"):
        load_nnunet_model(folder)


def test_normalization_is_nnunets(tmp_path):
    folder, _ = write_nnunet_folder(tmp_path, "2d")
    model = load_nnunet_model(folder)
    rng = np.random.default_rng(0)
    t1 = rng.uniform(50, 150, size=(6, 7)).astype(np.float32)
    t1[:2] = 0  # outside the nonzero region: left at 0 (use_mask_for_norm)
    ct = rng.uniform(-500, 800, size=(6, 7)).astype(np.float32)
    ct[:2] = 0  # nnU-Net's nonzero mask is over all channels: these rows are outside it
    out = model.normalize(np.stack([t1, ct]))
    inside = t1[2:]
    np.testing.assert_allclose(out[0, 2:], (inside - inside.mean()) / inside.std(), rtol=1e-5, atol=1e-5)
    assert (out[0, :2] == 0).all()
    np.testing.assert_allclose(out[1], (np.clip(ct, -100.0, 200.0) - 40.0) / 10.0, rtol=1e-6)
    with pytest.raises(ValueError, match="expected \\[2, \\*spatial\\]"):
        model.normalize(t1[None])


def test_fine_tune_an_nnunet_2d_source_with_the_risk_weighted_loss(tmp_path):
    """New head for the target's classes, encoder frozen, a few steps of RiskWeightedCE with the source's maps."""
    from trmcore.models.nnunet import freeze_encoder, replace_head
    from trmcore.training.loss import RiskWeightedCE

    folder, _ = write_nnunet_folder(tmp_path, "2d")
    source = load_nnunet_model(folder).network
    target = replace_head(load_nnunet_model(folder).network, num_classes=2)
    freeze_encoder(target)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        images = torch.randn(2, 2, 32, 32, generator=gen)
        batches.append((images, (images[:, 0] > 0.7).long()))
    risk = source_risk_maps(source, batches, num_classes=2)
    criterion = RiskWeightedCE(expected_foreground=risk.expected_foreground)
    encoder_before = {k: v.clone() for k, v in target.encoder.state_dict().items()}
    head_before = target.decoder.seg_layers[-1].weight.clone()
    optimizer = torch.optim.Adam([p for p in target.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(2):
        for images, labels in batches:
            target.train()
            target.encoder.eval()
            _, weights = risk.maps(images, labels)
            loss = criterion(target(images), labels, weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[3] < losses[0]  # batch 0, second epoch vs first
    assert target(batches[0][0]).shape == (2, 2, 32, 32)
    for key, value in target.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    assert not torch.equal(target.decoder.seg_layers[-1].weight, head_before)


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_a_network_built_by_nnunetv2_itself(tmp_path, configuration):
    # The folder's network built by nnunetv2's own code (get_network_from_plans, as
    # nnUNetTrainer.build_network_architecture calls it) and saved as its trainer saves it: trmcore rebuilds
    # the same network from plans.json and gives the same logits. (nnunetv2's full dependency set is 86
    # packages; CI installs nnunetv2 and batchgenerators with --no-deps, which is all this module needs.)
    nnunet_plans = pytest.importorskip("nnunetv2.utilities.get_network_from_plans")

    def build(arch: dict, dims: int):
        return nnunet_plans.get_network_from_plans(
            arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 2, len(LABELS),
            allow_init=True, deep_supervision=True)

    folder, trained = write_nnunet_folder(tmp_path, configuration, build=build)
    assert type(trained).__module__.startswith("dynamic_network_architectures")
    model = load_nnunet_model(folder, fold=0)
    dims = 2 if configuration == "2d" else 3
    x = torch.randn(2, 2, *[16] * dims)
    trained.eval()
    with torch.no_grad():
        expected = trained(x)[0]  # deep supervision: the full-resolution output first
        logits = model.network(x)
    assert type(model.network) is type(trained)
    torch.testing.assert_close(logits, expected)

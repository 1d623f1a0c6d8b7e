"""--source of trm riskmap and trm rank: nnU-Net v2 2d result folders and MONAI networks (trmcore.training.sources).

The expected maps are computed here from the NIfTI files with NumPy, the network's own forward
pass and trmcore.ops, independently of trmcore's loading, slicing and orientation handling: the
phantom is stored in RAS at the spacing the nnU-Net plans name, so no resampling is involved, and
nnU-Net's 2d network reads each axial slice as (y, x) rows and columns where trmcore slices (x, y).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from trmcore import ops
from trmcore.cli.main import main
from trmcore.training.risk_scaling import scaled_risk_map

CHANNELS = ["T1", "T2"]
LABELS = "CSF,GM,WM"
# The phantom's voxel size (FIELD_OF_VIEW_MM / (32, 32, 8)): nnU-Net (z, y, x) order.
PHANTOM_SPACING_ZYX = [20.0, 6.875, 6.25]
NNUNET_STATS = {"0": {"mean": 0.5, "std": 0.2, "percentile_00_5": 0.0, "percentile_99_5": 1.0},
                "1": {"mean": 0.4, "std": 0.25, "percentile_00_5": 0.05, "percentile_99_5": 0.8}}


def write_nnunet_2d(root: Path, configuration: str = "2d",
                    schemes=("ZScoreNormalization", "CTNormalization"), masks=(True, False)) -> Path:
    """An nnU-Net v2 result folder (2 channels: z-score over the nonzero mask, CT scheme) for the phantom's grid."""
    pytest.importorskip("dynamic_network_architectures")
    from .test_nnunet_source import _arch, _network

    dims = 2 if configuration == "2d" else 3
    folder = root / "Dataset001_Phantom" / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    (folder / "fold_1").mkdir(parents=True)
    plans = {"dataset_name": "Dataset001_Phantom", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": PHANTOM_SPACING_ZYX, "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2], "image_reader_writer": "NibabelIOWithReorient",
             "configurations": {configuration: {
                 "data_identifier": "x", "batch_size": 2, "patch_size": [32] * dims,
                 "spacing": PHANTOM_SPACING_ZYX[3 - dims:],
                 "normalization_schemes": list(schemes),
                 "use_mask_for_norm": list(masks), "architecture": _arch(dims)}},
             "foreground_intensity_properties_per_channel": NNUNET_STATS}
    dataset = {"channel_names": {"0": "T1", "1": "T2"}, "file_ending": ".nii.gz", "numTraining": 4,
               "labels": {"background": 0, "CSF": 1, "GM": 2, "WM": 3}}
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    torch.manual_seed(3)
    network = _network(_arch(dims), dims)
    with torch.no_grad():  # confident logits: LEEP of a freshly initialised head hardly depends on the input
        for layer in network.decoder.seg_layers:
            layer.weight.mul_(40.0)
    torch.save({"network_weights": network.state_dict(), "current_epoch": 1, "trainer_name": "nnUNetTrainer"},
               folder / "fold_1" / "checkpoint_final.pth")
    return folder


def nnunet_normalise(raw: np.ndarray) -> np.ndarray:
    """nnU-Net's ZScoreNormalization (nonzero mask over all channels) and CTNormalization, by hand."""
    mask = (raw != 0).any(axis=0)
    out = np.zeros(raw.shape, np.float32)
    inside = raw[0][mask].astype(np.float64)
    out[0][mask] = (inside - inside.mean()) / inside.std()
    stats = NNUNET_STATS["1"]
    out[1] = (np.clip(raw[1], stats["percentile_00_5"], stats["percentile_99_5"]) - stats["mean"]) / stats["std"]
    return out


def monai_json(root: Path) -> Path:
    pytest.importorskip("monai")
    from monai.networks.nets import UNet

    kwargs = {"spatial_dims": 2, "in_channels": 2, "out_channels": 3, "channels": [4, 8], "strides": [2],
              "num_res_units": 1}
    torch.manual_seed(4)
    torch.save(UNet(**kwargs).state_dict(), root / "unet.pt")
    spec = root / "unet.json"
    spec.write_text(json.dumps({"network": "monai.networks.nets:UNet", "kwargs": kwargs, "weights": "unet.pt",
                                "channels": CHANNELS, "normalization": "zscore-nonzero"}))
    return spec


def zscore_nonzero(raw: np.ndarray) -> np.ndarray:
    out = np.zeros(raw.shape, np.float32)
    for c, channel in enumerate(raw):
        mask = channel != 0
        values = channel[mask].astype(np.float64)
        out[c][mask] = (values - values.mean()) / values.std()
    return out


def read_case(data: Path, case: str):
    """Raw channels [2, X, Y, Z] and labels [X, Y, Z] of a phantom case (tissue labels are the classes)."""
    raw = np.stack([np.asarray(nib.load(data / "imagesTr" / f"{case}_{k:04d}.nii.gz").dataobj, np.float64)
                    for k in range(2)])
    label = np.asarray(nib.load(data / "labelsTr" / f"{case}.nii.gz").dataobj).astype(np.int64)
    return raw, np.where(label <= 3, label, 0)


def direct_logits(network, image: np.ndarray, swap: bool) -> torch.Tensor:
    """Logits [Z, K, X, Y] of the axial slices of image [C, X, Y, Z]; ``swap``: the network reads (y, x)."""
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, 3, 0))).float()  # [Z, C, X, Y]
    with torch.no_grad():
        if swap:
            return network(slices.transpose(-1, -2)).transpose(-1, -2)
        return network(slices)


def expected_maps(data: Path, cases, network, normalise, swap: bool):
    """(T, R) volumes per case with the joint over all slices of all cases (trm riskmap's definition)."""
    logits, labels = [], []
    for case in cases:
        raw, label = read_case(data, case)
        logits.append(direct_logits(network, normalise(raw), swap))
        labels.append(torch.from_numpy(np.ascontiguousarray(np.moveaxis(label, 2, 0))))
    joint = ops.LeepAccumulator(4)
    for lg, lb in zip(logits, labels):
        joint.update(lg, lb)
    joint = joint.all_reduce()
    out = {}
    for case, lg, lb in zip(cases, logits, labels):
        t = ops.pixel_leep(lg, lb, joint)
        r = scaled_risk_map(t, lb, 10.0, "image", "minmax", 0.05, -100)
        out[case] = (np.moveaxis(t.numpy(), 0, 2), np.moveaxis(r.numpy(), 0, 2))
    return out


def _cases(data: Path):
    return sorted(p.name[: -len(".nii.gz")] for p in (data / "labelsTr").glob("*.nii.gz"))


def direct_leep(data: Path, network, normalise, swap: bool) -> torch.Tensor:
    """Dataset LEEP of ``network`` by hand: its own logits on every case's slices with tissue (rank and
    transferability skip empty slices), 4 target classes."""
    logits, labels = [], []
    for case in _cases(data):
        raw, label = read_case(data, case)
        image = normalise(raw)
        keep = np.flatnonzero(np.any(image != 0, axis=(0, 1, 2)))
        logits.append(direct_logits(network, image, swap)[keep])
        labels.append(torch.from_numpy(np.ascontiguousarray(np.moveaxis(label, 2, 0)[keep])))
    return ops.leep(torch.cat(logits), torch.cat(labels), 4)


def _riskmap(data, source, out, *extra):
    return main(["riskmap", str(data), "--channel", ",".join(CHANNELS), "--labels", LABELS, "--source", str(source),
                 "-o", str(out), "--device", "cpu", "-q", *extra])


def test_riskmap_of_an_nnunet_2d_source_equals_the_ops_on_its_logits(phantom, tmp_path):
    folder = write_nnunet_2d(tmp_path)
    assert _riskmap(phantom, folder, tmp_path / "maps", "--fold", "1") == 0
    from trmcore.models.nnunet import load_nnunet_model

    network = load_nnunet_model(folder, fold=1).network
    cases = _cases(phantom)
    expected = expected_maps(phantom, cases, network, nnunet_normalise, swap=True)
    for case in cases:
        t = np.asarray(nib.load(tmp_path / "maps" / f"{case}_transferability.nii.gz").dataobj)
        r = np.asarray(nib.load(tmp_path / "maps" / f"{case}_risk.nii.gz").dataobj)
        np.testing.assert_allclose(t, expected[case][0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(r, expected[case][1], rtol=1e-4, atol=1e-4)
    # The test sees the orientation: the network read (x, y) instead of (y, x) gives other maps.
    wrong = expected_maps(phantom, cases[:1], network, nnunet_normalise, swap=False)
    t = np.asarray(nib.load(tmp_path / "maps" / f"{cases[0]}_transferability.nii.gz").dataobj)
    assert np.abs(t - wrong[cases[0]][0]).max() > 1e-2


def test_riskmap_of_a_monai_network_equals_the_ops_on_its_logits(phantom, tmp_path):
    spec = monai_json(tmp_path)
    assert _riskmap(phantom, spec, tmp_path / "maps") == 0
    from trmcore.models.monai_net import load_monai_network

    network = load_monai_network(spec).network
    cases = _cases(phantom)
    expected = expected_maps(phantom, cases, network, zscore_nonzero, swap=False)
    for case in cases:
        t = np.asarray(nib.load(tmp_path / "maps" / f"{case}_transferability.nii.gz").dataobj)
        np.testing.assert_allclose(t, expected[case][0], rtol=1e-4, atol=1e-4)


def test_rank_scores_nnunet_and_monai_sources_with_their_leep(phantom, source_run, tmp_path):
    folder = write_nnunet_2d(tmp_path)
    spec = monai_json(tmp_path)
    out = tmp_path / "rank.json"
    assert main(["rank", str(phantom), "--channel", ",".join(CHANNELS), "--labels", LABELS, "--sources",
                 str(folder), str(spec), str(source_run), "--fold", "1", "--val-fraction", "0", "--device", "cpu",
                 "-o", str(out)]) == 2  # the T1 source run takes one channel: refused, nothing written
    assert not out.exists()
    assert main(["rank", str(phantom), "--channel", ",".join(CHANNELS), "--labels", LABELS, "--sources",
                 str(folder), str(spec), "--fold", "1", "--val-fraction", "0", "--device", "cpu",
                 "-o", str(out)]) == 0
    ranking = {Path(r["source"]).name: r for r in json.loads(out.read_text())["ranking"]}
    assert ranking[folder.name]["kind"] == "nnunet" and ranking["unet.json"]["kind"] == "monai"
    assert ranking[folder.name]["num_source_classes"] == 4 and ranking["unet.json"]["num_source_classes"] == 3
    from trmcore.models.monai_net import load_monai_network
    from trmcore.models.nnunet import load_nnunet_model

    for name, network, normalise, swap in [
            (folder.name, load_nnunet_model(folder, fold=1).network, nnunet_normalise, True),
            ("unet.json", load_monai_network(spec).network, zscore_nonzero, False)]:
        leep = direct_leep(phantom, network, normalise, swap)
        assert ranking[name]["leep"] == pytest.approx(float(leep), rel=1e-4, abs=1e-5), name


def test_unknown_ambiguous_and_3d_sources_are_one_line(phantom, source_run, tmp_path, capsys):
    stray = tmp_path / "stray"
    stray.mkdir()
    assert _riskmap(phantom, stray, tmp_path / "m1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(stray) in err and "none of the source kinds" in err
    both = tmp_path / "both"
    (both / "configs").mkdir(parents=True)
    (both / "configs" / "inference.json").write_text("{}")
    (both / "run.json").write_text("{}")
    assert _riskmap(phantom, both, tmp_path / "m2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "more than one kind" in err and "run, monai" in err
    assert not any((tmp_path / name).exists() for name in ("m1", "m2"))


def test_a_3d_nnunet_source_maps_and_ranks_whole_volumes(phantom, tmp_path, capsys):
    """3d_fullres: each case whole through the network in nnU-Net's axis order (z, y, x), T and R in 3-D."""
    folder = write_nnunet_2d(tmp_path, "3d_fullres")
    assert _riskmap(phantom, folder, tmp_path / "maps", "--fold", "1") == 0
    from trmcore.models.nnunet import load_nnunet_model

    network = load_nnunet_model(folder, fold=1).network
    cases = _cases(phantom)
    logits, labels = [], []
    for case in cases:
        raw, label = read_case(phantom, case)
        volume = torch.from_numpy(np.ascontiguousarray(nnunet_normalise(raw).transpose(0, 3, 2, 1)))[None]
        with torch.no_grad():
            logits.append(network(volume).permute(0, 1, 4, 3, 2))  # back to [1, K, X, Y, Z]
        labels.append(torch.from_numpy(label)[None])
    accumulator = ops.LeepAccumulator(4)
    for lg, lb in zip(logits, labels):
        accumulator.update(lg, lb)
    joint = accumulator.all_reduce()
    for case, lg, lb in zip(cases, logits, labels):
        t = ops.pixel_leep(lg, lb, joint)
        r = scaled_risk_map(t, lb, 10.0, "image", "minmax", 0.05, -100)
        got_t = np.asarray(nib.load(tmp_path / "maps" / f"{case}_transferability.nii.gz").dataobj)
        got_r = np.asarray(nib.load(tmp_path / "maps" / f"{case}_risk.nii.gz").dataobj)
        np.testing.assert_allclose(got_t, t[0].numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got_r, r[0].numpy(), rtol=1e-4, atol=1e-4)
    out = tmp_path / "rank.json"
    assert main(["rank", str(phantom), "--channel", ",".join(CHANNELS), "--labels", LABELS, "--sources",
                 str(folder), "--fold", "1", "--val-fraction", "0", "--device", "cpu", "-o", str(out)]) == 0
    score = json.loads(out.read_text())["ranking"][0]
    assert score["pixels"] == 4 * 32 * 32 * 8
    assert score["leep"] == pytest.approx(float(ops.leep(torch.cat(logits), torch.cat(labels), 4)), rel=1e-4)
    # Fine-tuning trains on slices: a 3-D source is refused with one line.
    assert main(["finetune", str(phantom), "--channel", ",".join(CHANNELS), "--labels", "CSF", "--source",
                 str(folder), "--source-fold", "1", "-o", str(tmp_path / "run"), "--iterations", "1", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3-D network" in err
    # trm transferability scores slices too: refused with one line pointing at riskmap / rank.
    assert main(["transferability", "-m", str(folder), "--fold", "1", str(phantom), "--channel", ",".join(CHANNELS),
                 "--labels", LABELS, "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3-D network" in err and "trm riskmap" in err


def test_a_run_source_goes_through_the_registry_unchanged(phantom, source_run, tmp_path):
    """The run kind keeps today's behaviour: same maps as the run's own network on its grid."""
    from trmcore.training.sources import load_source, source_kind

    assert source_kind(source_run) == "run"
    loaded = load_source(source_run)
    assert loaded.run_info is not None and loaded.channels == ["T1"] and loaded.kind == "run"
    assert (tmp_path / "x").exists() is False
    assert main(["riskmap", str(phantom), "--labels", "CSF", "--source", str(source_run), "-o",
                 str(tmp_path / "maps"), "--device", "cpu", "-q"]) == 0
    assert len(list((tmp_path / "maps").glob("*_risk.nii.gz"))) == len(_cases(phantom))


def test_3d_risk_maps_cost_one_forward_pass_per_volume_set_of_one():
    """Pass 2 reuses pass 1's logits of the first volume; padding (to the size multiple) is ignored."""
    from trmcore.data.volumes import Volume
    from trmcore.training.riskmap3d import risk_volumes_3d, source_leep_3d

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 3, 1)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            assert all(s % 4 == 0 for s in x.shape[2:])
            return self.conv(x)

    gen = np.random.default_rng(0)
    volumes = [Volume(f"c{k}", None, gen.normal(size=(1, 6, 5, 7)).astype(np.float32),
                      gen.integers(0, 2, size=(6, 5, 7)), np.eye(4)) for k in range(2)]
    network = Counting()
    maps = risk_volumes_3d(network, volumes[:1], 2, (4, 4, 4), torch.device("cpu"))
    assert network.calls == 1 and maps[0].risk.shape == (6, 5, 7)
    network.calls = 0
    risk_volumes_3d(network, volumes, 2, (4, 4, 4), torch.device("cpu"))
    assert network.calls == 3
    value, z, voxels = source_leep_3d(network, volumes, 2, (4, 4, 4), torch.device("cpu"))
    assert (z, voxels) == (3, 2 * 6 * 5 * 7)  # the padding is not scored
    with torch.no_grad():
        logits = torch.cat([network.conv(torch.from_numpy(v.image)[None]) for v in volumes])
    labels = torch.from_numpy(np.stack([v.label for v in volumes]))
    assert value == pytest.approx(float(ops.leep(logits, labels, 2)), rel=1e-5)


def test_transferability_of_nnunet_and_monai_sources_equals_the_ops_on_their_logits(phantom, tmp_path, capsys):
    # `trm transferability -m` takes the torch sources too (trmcore.training.source_segmenter): dataset LEEP
    # = trmcore.ops.leep over the source network's own logits on the slices with tissue.
    folder = write_nnunet_2d(tmp_path)
    spec = monai_json(tmp_path)
    from trmcore.models.monai_net import load_monai_network
    from trmcore.models.nnunet import load_nnunet_model

    for model, fold, network, normalise, swap, classes in [
            (folder, ["--fold", "1"], load_nnunet_model(folder, fold=1).network, nnunet_normalise, True, 4),
            (spec, [], load_monai_network(spec).network, zscore_nonzero, False, 3)]:
        out = tmp_path / f"{model.name}.json"
        assert main(["transferability", "-m", str(model), str(phantom), "--channel", ",".join(CHANNELS),
                     "--labels", LABELS, "--device", "cpu", "-q", "-o", str(out), *fold]) == 0, \
            capsys.readouterr().err
        report = json.loads(out.read_text())
        leep = direct_leep(phantom, network, normalise, swap)
        assert report["leep"] == pytest.approx(float(leep), rel=1e-4, abs=1e-5), model.name
        assert len(report["source_labels"]) == classes and len(report["cases"]) == len(_cases(phantom))

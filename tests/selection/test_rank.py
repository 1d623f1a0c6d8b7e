"""`trm rank`: LEEP of source models on a target training set."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from trmcore.cli.main import main  # noqa: E402
from trmcore.selection.rank import RankConfig, kendall_tau, rank_sources, source_leep  # noqa: E402

from selection_helpers import make_source  # noqa: E402


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from trmcore.data import make_phantom

    return make_phantom(tmp_path_factory.mktemp("data") / "ph", n_cases=4, sites=2, size=(24, 24, 8))


def test_leep_matches_reference_on_all_slices(phantom, tmp_path):
    from trmcore.data import load_task_volumes, parse_task, split_cases, volumes_to_slices
    from trmcore.ops.reference import leep as reference_leep
    from trmcore.training import load_run

    src = make_source(tmp_path / "src", seed=0)
    config = RankConfig(channel="T1", labels="CSF", batch_size=3)
    [score] = rank_sources(phantom, [src], config)

    volumes, info = load_task_volumes(phantom, parse_task("T1", "CSF"), progress=False)
    train, _ = split_cases(volumes, 0.2, 0)
    slices = volumes_to_slices(train, axis=2, divisor=4, skip_empty=True)
    model, _ = load_run(src)
    with torch.no_grad():
        logits = model(torch.from_numpy(slices.images))
    expected = reference_leep(logits, torch.from_numpy(slices.labels), info.num_classes)
    assert score.leep == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert score.num_source_classes == 3 and score.pixels == slices.labels.size
    assert score.leep <= 0


def test_source_leep_is_batch_invariant():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(7, 1, 4, 4)).astype(np.float32)
    labels = rng.integers(0, 2, size=(7, 4, 4))
    weights = rng.normal(size=(3,)).astype(np.float32)

    def logits_fn(batch):
        return np.stack([batch[:, 0] * w for w in weights], axis=1)

    one, z, pixels = source_leep(logits_fn, images, labels, 2, batch_size=7)
    many, _, _ = source_leep(logits_fn, images, labels, 2, batch_size=2)
    assert one == pytest.approx(many, rel=1e-6) and z == 3 and pixels == 7 * 16


def test_rank_cli_sorts_and_writes_json(phantom, tmp_path, capsys):
    a = make_source(tmp_path / "a", seed=1)
    b = make_source(tmp_path / "b", seed=2, num_classes=2, bias=3.0)
    out = tmp_path / "rank.json"
    assert main(["rank", str(phantom), "--channel", "T1", "--labels", "CSF", "--sources", str(a), str(b),
                 "-o", str(out)]) == 0
    payload = json.loads(out.read_text())
    values = [r["leep"] for r in payload["ranking"]]
    assert values == sorted(values, reverse=True) and len(values) == 2
    assert {r["source"] for r in payload["ranking"]} == {str(a), str(b)}
    assert "LEEP" in capsys.readouterr().out



def test_rank_cli_refuses_existing_output_without_overwrite(phantom, tmp_path, capsys):
    a = make_source(tmp_path / "a", seed=1)
    out = tmp_path / "rank.json"
    out.write_text("mine\n")
    args = ["rank", str(phantom), "--channel", "T1", "--labels", "CSF", "--sources", str(a), "-o", str(out)]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "mine\n"
    assert main([*args[:-2], "-o", str(phantom / "dataset.json"), "--overwrite"]) == 2  # an input, even so
    assert "input" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert json.loads(out.read_text())["ranking"][0]["source"] == str(a)

def test_rank_bad_sources(phantom, tmp_path, capsys):
    assert main(["rank", str(phantom), "--channel", "T1", "--labels", "CSF", "--sources", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    two = make_source(tmp_path / "src", seed=0)
    assert main(["rank", str(phantom), "--channel", "T1,T2", "--labels", "CSF", "--sources", str(two)]) == 2
    assert "input channel" in capsys.readouterr().err


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40])[0] == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1])[0] == pytest.approx(-1.0)
    assert np.isnan(kendall_tau([1], [2])[0])


# ------------------------------------------------------------------ ONNX sources
@pytest.fixture(scope="module")
def trained_and_exported(phantom, tmp_path_factory):
    """A tiny run trained for 2 steps on the phantom (divisor 4) and its `trm export`."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from trmcore.data import parse_task
    from trmcore.export import export_run
    from trmcore.models import UNetConfig
    from trmcore.training import TrainConfig, train

    root = tmp_path_factory.mktemp("onnx-src")
    run = root / "run"
    train(phantom, parse_task("T2", "GM"), run, TrainConfig(iterations=2, batch_size=4, freeze="none", val_every=0),
          UNetConfig(depth=2, width=4), progress=False)
    onnx_path = root / "model.onnx"
    export_run(run, onnx_path)
    return run, onnx_path


def test_onnx_export_ranks_like_its_run(phantom, trained_and_exported):
    """The ONNX source scores the same slices (axis/divisor from its metadata) and the same LEEP.

    Tolerance 1e-6 absolute: the export is verified against torch in float32 and
    onnxruntime's logits differ from torch's by ~1e-7; LEEP is a pixel mean of
    log-probabilities built from those logits, so it moves by about as much
    (2e-10 was observed). Slicing the target differently (the ONNX default
    divisor 16 instead of the run's 4) changes LEEP by ~0.1 and the pixel count.
    """
    run, onnx_path = trained_and_exported
    config = RankConfig(channel="T1", labels="CSF", batch_size=5)
    scores = {s.kind: s for s in rank_sources(phantom, [run, onnx_path], config)}
    assert set(scores) == {"run", "onnx"}
    assert scores["onnx"].pixels == scores["run"].pixels
    assert scores["onnx"].num_source_classes == scores["run"].num_source_classes == 2
    assert scores["onnx"].leep == pytest.approx(scores["run"].leep, abs=1e-6)
    # An explicit divisor overrides the metadata: other padding, other pixel count.
    [padded] = rank_sources(phantom, [onnx_path], RankConfig(channel="T1", labels="CSF", divisor=16))
    assert padded.pixels > scores["onnx"].pixels


def test_rank_cli_lists_run_and_onnx(phantom, trained_and_exported, tmp_path, capsys):
    run, onnx_path = trained_and_exported
    out = tmp_path / "rank.json"
    assert main(["rank", str(phantom), "--channel", "T1", "--labels", "CSF", "--sources", str(run), str(onnx_path),
                 "-o", str(out)]) == 0
    ranking = json.loads(out.read_text())["ranking"]
    assert {(r["source"], r["kind"]) for r in ranking} == {(str(run), "run"), (str(onnx_path), "onnx")}
    assert ranking[0]["leep"] == pytest.approx(ranking[1]["leep"], abs=1e-6)
    table = capsys.readouterr().out
    assert str(onnx_path) in table and str(run) in table and " onnx " in table and " run " in table


def test_garbage_onnx_file_is_a_clear_error(phantom, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 8)
    with pytest.raises(ValueError, match="cannot load ONNX model .*garbage.onnx"):
        rank_sources(phantom, [bad], RankConfig(channel="T1", labels="CSF"))
    assert main(["rank", str(phantom), "--channel", "T1", "--labels", "CSF", "--sources", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
    other = tmp_path / "weights.bin"
    other.write_bytes(b"1234")
    with pytest.raises(ValueError, match="weights.bin is neither a run folder nor an .onnx model"):
        rank_sources(phantom, [other], RankConfig(channel="T1", labels="CSF"))


def test_onnx_channel_mismatch_is_a_clear_error(phantom, trained_and_exported, capsys):
    _, onnx_path = trained_and_exported
    with pytest.raises(ValueError, match=r"model.onnx takes 1 input channel\(s\); the target task has 2 \(T1, T2\)"):
        rank_sources(phantom, [onnx_path], RankConfig(channel="T1,T2", labels="CSF"))
    assert main(["rank", str(phantom), "--channel", "T1,T2", "--labels", "CSF", "--sources", str(onnx_path)]) == 2
    err = capsys.readouterr().err
    assert str(onnx_path) in err and "input channel" in err


def _conv_onnx(path, weights):
    """A metadata-free ONNX model: a 1x1 convolution [N, Cin, H, W] -> [N, Z, H, W], ``weights`` [Z, Cin]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.asarray(weights, dtype=np.float32)[:, :, None, None]
    in_channels = weight.shape[1]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", in_channels, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", weight.shape[0], "h", "w"])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return weight


def test_onnx_without_trmcore_metadata_uses_axis_and_divisor(phantom, tmp_path):
    pytest.importorskip("onnxruntime")
    from trmcore.data import load_task_volumes, parse_task, split_cases, volumes_to_slices

    path = tmp_path / "conv.onnx"
    weight = _conv_onnx(path, [[1.5], [-0.5], [0.25]])
    [score] = rank_sources(phantom, [path], RankConfig(channel="T1", labels="CSF", divisor=8))
    volumes, info = load_task_volumes(phantom, parse_task("T1", "CSF"), progress=False)
    train_volumes, _ = split_cases(volumes, 0.2, 0)
    slices = volumes_to_slices(train_volumes, axis=2, divisor=8, skip_empty=True)
    expected, z, pixels = source_leep(lambda x: np.einsum("zc,nchw->nzhw", weight[:, :, 0, 0], x),
                                      slices.images, slices.labels, info.num_classes)
    assert (score.num_source_classes, score.pixels) == (3, pixels) and z == 3
    assert score.leep == pytest.approx(expected, abs=1e-6)
    two = tmp_path / "conv2.onnx"
    _conv_onnx(two, [[1.0, -1.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match="conv2.onnx takes 2 input channel"):
        rank_sources(phantom, [two], RankConfig(channel="T1", labels="CSF"))


def test_channels_named_in_another_order_are_reordered():
    from trmcore.selection.rank import LoadedSource, _channel_order

    def source(channels, in_channels=2):
        return LoadedSource(lambda x: x, in_channels, channels, 2, 16, "run")

    assert _channel_order("m", source(["T2", "T1"]), ["T1", "T2"]) == [1, 0]
    assert _channel_order("m", source(["T1", "T2"]), ["T1", "T2"]) is None
    assert _channel_order("m", source(["FLAIR", "T1"]), ["T1", "T2"]) is None  # cross-modality: as given
    assert _channel_order("m", source(None, None), ["T1", "T2"]) is None
    with pytest.raises(ValueError, match="takes 2 input channel"):
        _channel_order("m", source(["T1", "T2"]), ["T1"])

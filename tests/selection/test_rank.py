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

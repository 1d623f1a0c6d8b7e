"""`trm transfer-path` and `trm rank --validate`: hop-by-hop fine-tuning through trmcore.training."""

import json

import pytest

pytest.importorskip("torch")

from selection_helpers import make_source  # noqa: E402

from trmcore.cli.main import main  # noqa: E402


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from trmcore.data import make_phantom

    return make_phantom(tmp_path_factory.mktemp("data") / "ph", n_cases=6, sites=2, size=(24, 24, 8))


def test_transfer_path_runs_each_hop_and_direct(phantom, tmp_path, capsys):
    src = make_source(tmp_path / "src", seed=0, num_classes=2)
    out = tmp_path / "seq"
    code = main(["transfer-path", str(phantom), "--path", "site-A/T1/CSF,site-A/T2/GM,site-B/T2/CSF",
                 "--source", str(src), "-o", str(out), "--method", "vanilla", "--iterations", "2", "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "transfer_path.json").read_text())
    assert [h["task"] for h in report["hops"]] == ["site-A/T2/GM", "site-B/T2/CSF"]
    for hop in report["hops"] + [report["direct"]]:
        assert (tmp_path / hop["run"]).joinpath("model.safetensors").is_file()
        assert hop["val_dice"] is None or 0.0 <= hop["val_dice"] <= 1.0
    hop2 = json.loads((out / "hop2-site-B_T2_CSF" / "run.json").read_text())
    assert hop2["source"].endswith("hop1-site-A_T2_GM")
    assert "sequential - direct" in capsys.readouterr().out or report["direct"]["val_dice"] is None

    # The folder is this command's output: a second run needs --overwrite, which replaces only that output.
    args = ["transfer-path", str(phantom), "--path", "site-A/T1/CSF,site-B/T2/CSF", "--source", str(src),
            "-o", str(out), "--method", "vanilla", "--iterations", "2", "--device", "cpu"]
    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "hop2-site-B_T2_CSF" / "run.json").is_file()
    assert main(args + ["--overwrite"]) == 0
    assert not (out / "hop2-site-B_T2_CSF").exists() and (out / "hop1-site-B_T2_CSF" / "run.json").is_file()
    assert [h["task"] for h in json.loads((out / "transfer_path.json").read_text())["hops"]] == ["site-B/T2/CSF"]


def test_transfer_path_never_replaces_a_foreign_folder(phantom, tmp_path, capsys):
    src = make_source(tmp_path / "src", seed=0, num_classes=2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    args = ["transfer-path", str(phantom), "--path", "site-A/T1/CSF,site-B/T2/CSF", "--source", str(src),
            "-o", str(mine), "--iterations", "2", "--device", "cpu"]
    assert main(args) == 2
    assert main(args + ["--overwrite"]) == 2
    assert "not made by `trm transfer-path`" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"
    # The source run is an input: never the output folder.
    assert main(["transfer-path", str(phantom), "--path", "site-A/T1/CSF,site-B/T2/CSF", "--source", str(src),
                 "-o", str(src), "--overwrite"]) == 2
    assert (src / "model.safetensors").is_file()


def test_transfer_path_bad_input(phantom, tmp_path, capsys):
    src = make_source(tmp_path / "src", seed=0, num_classes=2)
    assert main(["transfer-path", str(phantom), "--path", "site-A/T1/CSF", "--source", str(src),
                 "-o", str(tmp_path / "o")]) == 2
    assert "at least a source" in capsys.readouterr().err
    assert main(["transfer-path", str(phantom), "--path", "site-A/T1/CSF,site-B/T1/CSF", "--source",
                 str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err


def test_rank_validate_reports_kendall_tau(phantom, tmp_path, capsys):
    a = make_source(tmp_path / "a", seed=1, num_classes=2)
    b = make_source(tmp_path / "b", seed=2, num_classes=2, bias=2.0)
    c = make_source(tmp_path / "c", seed=3, num_classes=2, bias=-2.0)
    out = tmp_path / "rank.json"
    assert main(["rank", str(phantom), "--channel", "T1", "--labels", "CSF", "--sources", str(a), str(b), str(c),
                 "--validate", "--iterations", "2", "--device", "cpu", "-o", str(out)]) == 0
    payload = json.loads(out.read_text())
    validation = payload["validation"]
    assert len(validation["dice"]) == 3 and all(0.0 <= d <= 1.0 for d in validation["dice"])
    assert "kendall_tau" in validation
    assert "Kendall tau" in capsys.readouterr().out

"""End-to-end: `trm affinity`, `trm path`, `trm affinity fit`, `trm rank` on a small phantom."""

import csv
import json

import numpy as np
import pytest

from trmcore.cli.main import main
from trmcore.selection.affinity import AffinityResult
from trmcore.selection.fit import cost_terms

TASKS = ["site-A/T1/CSF", "site-B/T1/CSF", "site-C/T1/CSF", "site-A/T2/CSF", "site-B/T2/GM",
         "site-C/T2/GM", "site-A/T1/NCR+ED+ET"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from trmcore.data import make_phantom

    return make_phantom(tmp_path_factory.mktemp("data") / "ph", n_cases=9, sites=3, size=(32, 32, 16), tumour=True)


@pytest.fixture(scope="module")
def affinity_dir(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("aff")
    tasks = out / "tasks.txt"
    tasks.write_text("# tasks\n" + "\n".join(TASKS) + "\n")
    code = main(["affinity", str(phantom), "--tasks", str(tasks), "-o", str(out), "--size", "16",
                 "--samples", "3", "-q"])
    assert code == 0
    return out


def test_affinity_writes_matrices_and_heatmap(affinity_dir):
    for name in ("W.csv", "S.csv", "d.csv", "affinity.json", "affinity.png"):
        assert (affinity_dir / name).stat().st_size > 0
    result = AffinityResult.load(affinity_dir)
    assert result.names == TASKS
    assert result.n_cases == [3, 3, 3, 3, 3, 3, 3] and result.n_sampled == [3] * 7
    d = result.d
    np.testing.assert_allclose(d, d.T)
    for i in range(len(d)):
        assert d[i, i] <= np.delete(d[i], i).min() + 1e-9
    with open(affinity_dir / "S.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][1:] == TASKS and float(rows[1][1]) == pytest.approx(result.S[0, 0])


def test_path_writes_choice_and_plot(affinity_dir, tmp_path, capsys):
    assert main(["path", str(affinity_dir), "--target", "site-C/T1/CSF", "--communities", "3", "-o", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "path.json").read_text())
    assert payload["target"] == "site-C/T1/CSF"
    assert payload["chosen"]["path"][-1] == "site-C/T1/CSF"
    assert len(payload["chosen"]["path"]) == 3
    assert any(len(c["path"]) == 2 for c in payload["candidates"])
    assert (tmp_path / "path.png").stat().st_size > 0
    # The chosen path and the best direct path, side by side with their costs.
    direct = min((c for c in payload["candidates"] if len(c["path"]) == 2), key=lambda c: c["cost"])
    assert payload["best_direct"] == direct and payload["allow_direct"] is False
    assert payload["chosen_minus_direct_cost"] == pytest.approx(payload["chosen"]["cost"] - direct["cost"])
    out = capsys.readouterr().out
    assert f"chosen:       {' -> '.join(payload['chosen']['path'])}" in out
    assert f"best direct:  {' -> '.join(direct['path'])}" in out
    assert f"cost {direct['cost']:.4f}" in out and f"cost {payload['chosen']['cost']:.4f}" in out
    assert "chosen - best direct" in out and "W compares PCA scores" in out

    # An existing path.json is an earlier output: refused before any work, replaced with --overwrite.
    before = (tmp_path / "path.json").read_bytes()
    assert main(["path", str(affinity_dir), "--target", "site-C/T1/CSF", "--communities", "3", "--allow-direct",
                 "-o", str(tmp_path)]) == 2
    assert "path.json exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "path.json").read_bytes() == before
    assert main(["path", str(affinity_dir), "--target", "site-C/T1/CSF", "--communities", "3", "--allow-direct",
                 "-o", str(tmp_path), "--overwrite"]) == 0
    literal = json.loads((tmp_path / "path.json").read_text())
    assert literal["allow_direct"] is True and literal["chosen"] == literal["best_direct"] == direct
    assert "direct paths included" in capsys.readouterr().out


def test_pca_output_components_is_recorded_and_reported(phantom, tmp_path, capsys):
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("site-A/T1/CSF\nsite-B/T1/CSF\nsite-A/T2/CSF\n")
    out = tmp_path / "aff"
    assert main(["affinity", str(phantom), "--tasks", str(tasks), "-o", str(out), "--size", "8", "--samples", "2",
                 "--pca-output", "components", "-q"]) == 0
    assert json.loads((out / "affinity.json").read_text())["config"]["pca_output"] == "components"
    capsys.readouterr()
    assert main(["path", str(out), "--target", "site-B/T1/CSF"]) == 0
    assert "W compares PCA components" in capsys.readouterr().out


def test_fit_on_results_then_path_with_fit(affinity_dir, tmp_path):
    result = AffinityResult.load(affinity_dir)
    target = "site-C/T1/CSF"
    paths = [(s, target) for s in TASKS if s != target] + [("site-A/T1/CSF", "site-A/T2/CSF", target),
                                                           ("site-B/T2/GM", "site-B/T1/CSF", target)]
    rows = []
    for p in paths:
        wc, sc = cost_terms(result, p)
        rows.append({"path": ",".join(p), "dice": 0.9 - 0.01 * (0.5 * wc + sc)})
    results = tmp_path / "results.csv"
    with results.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "dice"])
        writer.writeheader()
        writer.writerows(rows)
    assert main(["affinity", "fit", str(affinity_dir), "--results", str(results)]) == 0
    fit = json.loads((affinity_dir / "fit.json").read_text())
    assert fit["alpha"] == pytest.approx(0.5, rel=1e-3) and fit["beta"] == 1.0
    assert main(["path", str(affinity_dir), "--target", target, "--fit", "-o", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "path.json").read_text())["alpha"] == pytest.approx(0.5, rel=1e-3)


def test_bad_input_gives_clear_errors(phantom, affinity_dir, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("site-A/T1/LESION\n")
    assert main(["affinity", str(phantom), "--tasks", str(bad), "-o", str(tmp_path / "o")]) == 2
    assert "label set ['LESION'] does not exist" in capsys.readouterr().err
    bad.write_text("site-Z/T1/CSF\n")
    assert main(["affinity", str(phantom), "--tasks", str(bad), "-o", str(tmp_path / "o")]) == 2
    assert "site 'site-Z' not found" in capsys.readouterr().err
    assert main(["path", str(affinity_dir), "--target", "site-Q/T1/CSF"]) == 2
    assert "not in the affinity matrix" in capsys.readouterr().err
    assert main(["affinity", "fit", str(affinity_dir)]) == 2
    assert "--results" in capsys.readouterr().err
    assert main(["affinity", str(phantom), "-o", str(tmp_path / "o")]) == 2
    assert "--tasks is required" in capsys.readouterr().err


def test_task_with_no_volumes_is_refused(tmp_path, capsys):
    from trmcore.data import make_phantom

    root = make_phantom(tmp_path / "ph", n_cases=3, sites=1, size=(16, 16, 8))
    for label in (root / "labelsTr").iterdir():
        label.unlink()
    tasks = tmp_path / "t.txt"
    tasks.write_text("*/T1/CSF\n")
    assert main(["affinity", str(root), "--tasks", str(tasks), "-o", str(tmp_path / "o")]) == 2
    assert "no labelled volume" in capsys.readouterr().err


def test_all_tasks_enumerates_site_channel_label_sets(phantom):
    from trmcore.data import DatasetLayout
    from trmcore.selection.tasks import all_tasks

    names = [t.name for t in all_tasks(DatasetLayout.read(phantom))]
    # 3 sites x 3 channels x (6 single labels + all 6 together)
    assert len(names) == 63 and len(set(names)) == 63
    assert "site-B/FLAIR/CSF+GM+WM+NCR+ED+ET" in names


def test_existing_outputs_need_overwrite(phantom, tmp_path, capsys):
    """affinity, affinity fit and path refuse to replace an earlier output (or an input) without --overwrite."""
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("site-A/T1/CSF\nsite-B/T1/CSF\nsite-A/T2/CSF\n")
    out = tmp_path / "aff"
    args = ["affinity", str(phantom), "--tasks", str(tasks), "-o", str(out), "--size", "8", "--samples", "2", "-q"]
    assert main(args) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 2
    assert "W.csv exists; pass --overwrite" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert main(args + ["--overwrite"]) == 0
    assert all((out / n).stat().st_mtime_ns > stamps[n] for n in ("W.csv", "affinity.json", "affinity.png"))
    # The tasks file is an input: never an output, even with --overwrite.
    tasks_in_out = out / "d.csv"
    assert main(["affinity", str(phantom), "--tasks", str(tasks_in_out), "-o", str(out), "--overwrite", "-q"]) == 2
    assert "is an input file" in capsys.readouterr().err

    results = tmp_path / "results.csv"
    results.write_text("path,dice\n\"site-A/T1/CSF,site-B/T1/CSF\",0.8\n\"site-A/T2/CSF,site-B/T1/CSF\",0.7\n"
                       "\"site-A/T2/CSF,site-A/T1/CSF,site-B/T1/CSF\",0.75\n")
    assert main(["affinity", "fit", str(out), "--results", str(results)]) == 0
    assert main(["affinity", "fit", str(out), "--results", str(results)]) == 2
    assert "fit.json exists; pass --overwrite" in capsys.readouterr().err
    assert main(["affinity", "fit", str(out), "--results", str(results), "--overwrite"]) == 0

    assert main(["path", str(out), "--target", "site-B/T1/CSF"]) == 0
    assert main(["path", str(out), "--target", "site-B/T1/CSF"]) == 2
    assert "path.json exists; pass --overwrite" in capsys.readouterr().err
    assert main(["path", str(out), "--target", "site-B/T1/CSF", "--overwrite"]) == 0

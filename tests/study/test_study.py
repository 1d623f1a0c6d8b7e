"""The reproduction study on the tiny profile: tables, figures, cache and resume, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from trmcore.study.grid import Job, build_grid, parse_tables
from trmcore.study.profiles import get_profile
from trmcore.study.study import parse_seeds, reproduce
from trmcore.study.tables import GAIN, gain_counts, pair_table

pytest.importorskip("torch")


def _csv(path: Path) -> list:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "tiny"
    first = reproduce(out, "tiny", seeds=[0], workers=1, progress=False)
    return out, first


def test_tiny_study_writes_tables_and_figures(tiny_study):
    out, first = tiny_study
    assert not first.summary.failed and not first.summary.skipped
    assert len(first.summary.executed) == len(first.grid.jobs)
    table1 = _csv(out / "tables" / "table1.csv")
    # 2 tasks -> 2 (target, source) pairs x 6 columns (2 methods, trm also with Eq. 7 as published,
    # all with foreground-aware and with uniform batches), each with a Dice in [0, 1]
    columns = ["trm", "trm eq7", "trm uniform", "trm uniform eq7", "vanilla", "vanilla uniform"]
    assert sorted((r["target"], r["source"], r["method"]) for r in table1) == [
        (t, s, c) for t, s in (("*/T1/CSF", "*/T2/CSF"), ("*/T2/CSF", "*/T1/CSF")) for c in columns]
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in table1)
    assert len(_csv(out / "tables" / "table2.csv")) == 12
    table3 = _csv(out / "tables" / "table3.csv")
    assert sorted({r["shots"] for r in table3}) == ["4", "8"] and len(table3) == 12
    collapses = _csv(out / "tables" / "table1_collapses.csv")
    assert sorted(r["column"] for r in collapses) == columns
    assert {r["column"]: r["reference"] for r in collapses}["trm uniform eq7"] == "vanilla uniform"
    assert all(int(r["runs"]) == 2 for r in collapses)
    sources = _csv(out / "tables" / "table2_sources.csv")
    assert sorted(r["task"] for r in sources) == ["site-A/T1/NCR+ED+ET", "site-B/T2/NCR+ED+ET"]
    assert all(r["dice"] != "" for r in sources)
    for r in sources:  # per class: the last validation of the source run, as in its metrics.csv
        last = [m for m in _csv(out / "runs" / r["job"] / "metrics.csv") if m["val_dice"]][-1]
        assert r["per_class"] == "; ".join(f"{c} {float(last['val_dice_' + c]):.3f}" for c in ("NCR", "ED", "ET"))
    seq = _csv(out / "tables" / "sequential_summary.csv")
    assert [r["target"] for r in seq] == ["*/T2/CSF"] and seq[0]["path_dice"] != ""
    summary = _csv(out / "tables" / "table1_summary.csv")
    assert {r["method"] for r in summary} == set(columns) | {GAIN}
    assert [r for r in summary if r["level"] == "overall"]
    for png in ("table1_gain.png", "table2_gain.png", "table3_few_shot.png", "fig2_T1-CSF_to_T2-CSF.png"):
        assert (out / "figures" / png).stat().st_size > 1000, png
    text = (out / "results.md").read_text()
    for heading in ("Table I analogue", "Table II analogue", "Table III analogue", "Sequential transfer", "Fig. 2"):
        assert heading in text
    assert "| T1/CSF | T2/CSF |" in text and "| **Average** | 2 pairs |" in text
    assert "| trm uniform eq7 | 2 |" in text  # the collapse counts
    assert "| source task | models | Dice (mean) | range | per class (mean) |" in text
    assert "| site-A/T1/NCR+ED+ET | 1 |" in text
    assert "Failed jobs" not in text


def test_rerun_hits_the_cache(tiny_study):
    out, first = tiny_study
    cache_file = next((out / "cache").glob("finetune_*.json"))
    stamp = cache_file.stat().st_mtime_ns
    again = reproduce(out, "tiny", seeds=[0], workers=1, progress=False)
    assert again.summary.executed == []
    assert sorted(again.summary.cached) == sorted(j.key for j in first.grid.jobs)
    assert cache_file.stat().st_mtime_ns == stamp
    assert _csv(out / "tables" / "table1.csv") == _csv(out / "tables" / "table1.csv")


def test_extra_seed_runs_only_the_new_jobs(tiny_study, tmp_path):
    out, _ = tiny_study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    result = reproduce(copy, "tiny", seeds=[0, 1], tables=["I"], workers=1, progress=False)
    executed = [result.grid.job(k) for k in result.summary.executed]
    # Table I of seed 1 only: 2 source models + 2 pairs x 6 columns
    assert sorted((j.kind, j.seed) for j in executed) == [("finetune", 1)] * 12 + [("source", 1)] * 2
    text = (copy / "results.md").read_text()
    assert "±" in text  # mean ± std over two seeds


def test_corrupt_or_orphaned_cache_entries_are_recomputed(tmp_path):
    out = tmp_path / "study"
    first = reproduce(out, "tiny", seeds=[0], tables=["I"], workers=1, progress=False)
    finetunes = [j for j in first.grid.jobs if j.kind == "finetune"]
    truncated, orphaned, foreign = finetunes[0], finetunes[1], finetunes[2]
    path = out / "cache" / f"{truncated.key}.json"
    path.write_text(path.read_text()[: len(path.read_text()) // 2])   # cut off mid-write
    shutil.rmtree(out / "runs" / orphaned.key)                         # the run folder is gone
    entry = json.loads((out / "cache" / f"{foreign.key}.json").read_text())
    entry["key"] = "someone-else"
    (out / "cache" / f"{foreign.key}.json").write_text(json.dumps(entry))
    again = reproduce(out, "tiny", seeds=[0], tables=["I"], workers=1, progress=False)
    assert sorted(again.summary.executed) == sorted([truncated.key, orphaned.key, foreign.key])
    rows = _csv(out / "tables" / "table1.csv")
    assert all(r["dice"] != "" for r in rows)


def test_parallel_workers_give_the_same_results(tmp_path):
    serial = reproduce(tmp_path / "serial", "tiny", seeds=[0], tables=["I"], workers=1, progress=False)
    parallel = reproduce(tmp_path / "parallel", "tiny", seeds=[0], tables=["I"], workers=2, progress=False)
    assert not parallel.summary.failed
    assert sorted(parallel.summary.executed) == sorted(serial.summary.executed)
    assert _csv(tmp_path / "serial" / "tables" / "table1.csv") == [
        dict(r) for r in _csv(tmp_path / "parallel" / "tables" / "table1.csv")]


def test_grid_trains_each_source_once_per_seed():
    grid = build_grid(get_profile("quick"), seeds=[0, 1, 2], tables=["I"])
    sources = [j for j in grid.jobs if j.kind == "source"]
    assert len(sources) == 6 * 3
    # 30 pairs x (4 methods + trm eq7) x (foreground-aware, uniform) x 3 seeds
    assert len([j for j in grid.jobs if j.kind == "finetune"]) == 6 * 5 * 10 * 3
    assert len({j.key for j in grid.jobs}) == len(grid.jobs)
    keys = {j.key for j in grid.jobs}
    assert all(j.parent in keys for j in grid.jobs if j.kind == "finetune")
    # keys are a function of the job only
    again = build_grid(get_profile("quick"), seeds=[0, 1, 2], tables=["I"])
    assert [j.key for j in again.jobs] == [j.key for j in grid.jobs]
    # other tables run the first seed only
    full = build_grid(get_profile("quick"), seeds=[0, 1], tables=["I", "III"])
    assert {c.seed for c in full.cells_of("III")} == {0}
    seeded = build_grid(get_profile("quick"), seeds=[0, 1], tables=["I", "III"], extra_seed_tables=["I", "III"])
    assert {c.seed for c in seeded.cells_of("III")} == {0, 1}


def test_study_columns_map_to_training_settings():
    from trmcore.study.grid import TUMOUR, study_columns
    from trmcore.study.runner import StudyContext, _train_config

    tiny = get_profile("tiny")
    columns = {c.label: c for c in study_columns(tiny, tiny.methods)}
    assert list(columns) == ["vanilla", "trm", "trm eq7", "vanilla uniform", "trm uniform", "trm uniform eq7"]
    ctx = StudyContext("/nonexistent", {}, tiny)
    grid = build_grid(tiny, seeds=[0], tables=["I", "II"])
    configs = {(c.table, c.method): _train_config(ctx, grid.job(c.key)) for c in grid.cells}
    default = configs[("I", "trm")]
    assert default.foreground_share == pytest.approx(1 / 3) and default.trm_normalize == "bounded"
    paper = configs[("I", "trm uniform eq7")]
    assert paper.foreground_share == 0.0 and paper.trm_normalize == "batch"
    assert configs[("I", "vanilla uniform")].foreground_share == 0.0
    # The default trm job is the one Fig. 2 draws too (same key, trained once).
    fig2 = build_grid(tiny, seeds=[0], tables=["I", "fig2"])
    assert len([j for j in fig2.jobs if j.kind == "finetune"]) == len(grid.cells_of("I"))
    sources = {j.dataset: _train_config(ctx, j) for j in grid.jobs if j.kind == "source"}
    assert sources[TUMOUR].iterations == tiny.tumour_source_iterations
    assert sources["tissue"].iterations == tiny.source_iterations
    # Robust risk scaling as an extra trm column when a profile asks for it.
    from dataclasses import replace

    robust = replace(tiny, sampling_variants=(), normalize_variants=(), scaling_variants=("robust",))
    assert [c.label for c in study_columns(robust, robust.methods)] == ["vanilla", "trm", "trm robust"]
    grid = build_grid(robust, seeds=[0], tables=["I"])
    config = _train_config(ctx, grid.job(next(c.key for c in grid.cells if c.method == "trm robust")))
    assert config.risk_scaling == "robust" and config.foreground_share == pytest.approx(1 / 3)


def test_collapse_counts_by_hand():
    from trmcore.study.tables import collapse_rows

    def row(seed, method, dice, job=""):
        return {"seed": seed, "target": "t", "source": "s", "shots": "all", "method": method, "dice": dice,
                "job": job}

    rows = [row(0, "vanilla", 0.5), row(0, "trm", 0.01, "j0"), row(1, "vanilla", 0.08), row(1, "trm", 0.0, "j1"),
            row(2, "vanilla", 0.4), row(2, "trm", 0.3, "j2"), row(0, "vanilla uniform", 0.5),
            row(0, "trm uniform eq7", 0.049)]
    out = collapse_rows(rows, {"trm": "vanilla", "trm uniform eq7": "vanilla uniform"}, {"j0": ["class weight"]})
    # seed 1 is no collapse: vanilla itself stayed below 0.1
    assert out == [{"column": "trm", "reference": "vanilla", "runs": 3, "eligible": 2, "collapses": 1,
                    "lowest_eligible": 0.01, "risk_map_warnings": 1},
                   {"column": "trm uniform eq7", "reference": "vanilla uniform", "runs": 1, "eligible": 1,
                    "collapses": 1, "lowest_eligible": 0.049, "risk_map_warnings": 0}]
    none = collapse_rows([row(0, "vanilla", 0.08), row(0, "trm", 0.0)], {"trm": "vanilla"})
    assert none[0]["eligible"] == 0 and none[0]["collapses"] == 0 and none[0]["lowest_eligible"] is None


def test_pair_table_statistics():
    rows = []
    dice = {("a", "b", "vanilla"): [0.5, 0.7], ("a", "b", "trm"): [0.6, 0.6],
            ("b", "a", "vanilla"): [0.8, 0.8], ("b", "a", "trm"): [0.7, 0.9]}
    for (target, source, method), values in dice.items():
        for seed, value in enumerate(values):
            rows.append({"seed": seed, "target": target, "source": source, "method": method, "dice": value})
    table = pair_table(rows, ["vanilla", "trm"])
    assert table.pairs[("a", "b")]["vanilla"].mean == pytest.approx(0.6)
    assert table.pairs[("a", "b")]["vanilla"].std == pytest.approx(0.1414213, abs=1e-6)
    assert table.pairs[("a", "b")][GAIN].mean == pytest.approx(0.0)
    # overall per seed: vanilla 0.65 / 0.75, trm 0.65 / 0.75 -> gain 0 +- 0
    assert table.overall["vanilla"].mean == pytest.approx(0.7)
    assert table.overall[GAIN].std == pytest.approx(0.0)
    counts = gain_counts(table)
    assert counts == {"pairs": 2, "mean_positive": 0, "all_seeds_positive": 0, "all_seeds_negative": 0}


def test_bad_input_is_refused(tmp_path, capsys):
    from trmcore.cli.main import main

    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        get_profile("huge")
    with pytest.raises(ValueError, match="unknown table.*'IV'"):
        parse_tables("I,IV")
    with pytest.raises(ValueError, match="seeds must be integers"):
        parse_seeds("0,one")
    with pytest.raises(ValueError, match="needs a parent"):
        Job("finetune", "tissue", "*/T1/CSF", 0)
    with pytest.raises(SystemExit) as exit_info:  # the choices come from the PROFILES table
        main(["reproduce", "-o", str(tmp_path / "x"), "--profile", "huge"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge' (choose from quick, quick500, full, tiny)" in capsys.readouterr().err.replace(
        "'quick', 'quick500', 'full', 'tiny'", "quick, quick500, full, tiny")
    assert main(["reproduce", "-o", str(tmp_path / "x"), "--profile", "tiny", "--tables", "I,V"]) == 2
    assert "unknown table(s) 'V'" in capsys.readouterr().err
    assert main(["reproduce", "-o", str(tmp_path / "x"), "--profile", "tiny", "--data", str(tmp_path / "none")]) == 2
    assert "no dataset.json" in capsys.readouterr().err
    assert not (tmp_path / "x" / "runs").exists()
    # A non-empty folder that holds no study is not the study's to write into (nothing is added to it).
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["reproduce", "-o", str(mine), "--profile", "tiny", "--tables", "fig2"]) == 2
    assert "holds no study (no study.json)" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_study_folder_refuses_other_settings(tmp_path):
    from dataclasses import replace

    out = tmp_path / "study"
    reproduce(out, "tiny", seeds=[0], tables=["fig2"], workers=1, progress=False)
    tiny = get_profile("tiny")
    changed = replace(tiny, training=replace(tiny.training, iterations=5))
    with pytest.raises(ValueError, match="other settings.*finetune_iterations"):
        reproduce(out, changed, seeds=[0], tables=["fig2"], workers=1, progress=False)


def test_study_folder_from_before_the_training_recipe_is_refused(tmp_path):
    """A study.json without lr_schedule / augment (before issue 22) ran constant and unaugmented: its cached
    results must not mix with runs of the new recipe."""
    out = tmp_path / "study"
    reproduce(out, "tiny", seeds=[0], tables=["fig2"], workers=1, progress=False)
    record = json.loads((out / "study.json").read_text())
    for key in ("lr_schedule", "augment", "optimizer"):
        del record["profile"]["training"][key]
    (out / "study.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="other settings.*differing: lr_schedule, augment\\)"):
        reproduce(out, "tiny", seeds=[0], tables=["fig2"], workers=1, progress=False)


def test_study_folder_of_the_flat_profile_format_resumes(tmp_path):
    """study.json written before the profile nested model/training settings still matches the same profile."""
    out = tmp_path / "study"
    reproduce(out, "tiny", seeds=[0], tables=["fig2"], workers=1, progress=False)
    record = json.loads((out / "study.json").read_text())
    profile = record["profile"]
    model, training = profile.pop("model"), profile.pop("training")
    profile.update(depth=model["depth"], width=model["width"], batch_size=training["batch_size"], lr=training["lr"],
                   finetune_iterations=training["iterations"], val_fraction=training["val_fraction"])
    # A flat record without the training recipe (issue 22) ran constant and unaugmented: refused.
    (out / "study.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="other settings.*lr_schedule, augment"):
        reproduce(out, "tiny", seeds=[0], tables=["fig2"], workers=1, progress=False)
    profile.update(lr_schedule=training["lr_schedule"], augment=training["augment"], optimizer=training["optimizer"])
    (out / "study.json").write_text(json.dumps(record))
    outcome = reproduce(out, "tiny", seeds=[0], tables=["fig2"], workers=1, progress=False)
    assert not outcome.summary.executed and not outcome.summary.failed
    profile["finetune_iterations"] = 99
    (out / "study.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="other settings.*finetune_iterations"):
        reproduce(out, "tiny", seeds=[0], tables=["fig2"], workers=1, progress=False)

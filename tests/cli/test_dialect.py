"""One CLI dialect: -q/--quiet, -o/--output, --sites-csv, --risk-base everywhere; old spellings refused."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from trmcore.cli.main import build_parser
from trmcore.ops import RISK_BASE
from trmcore.training import TrainConfig
from trmcore.training.methods import METHODS


def _commands(parser=None, prefix=()):
    """(name tuple, parser) of every leaf subcommand."""
    parser = parser or build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _commands(sub, prefix + (name,))


COMMANDS = dict(_commands())


def _parse(*argv):
    return build_parser().parse_args(list(argv))


def test_every_option_has_help_and_every_command_an_example():
    assert len(COMMANDS) >= 16
    for name, parser in COMMANDS.items():
        assert parser.epilog and parser.epilog.startswith("example"), name
        assert f"trm {' '.join(name)}" in parser.epilog, name
        for action in parser._actions:
            assert action.help, (name, action.option_strings or action.dest)


def test_old_spellings_stay_out_of_help():
    for name, parser in COMMANDS.items():
        text = parser.format_help()
        for old in ("--no-progress", "--out ", "--base ", "--json"):
            assert old not in text, (name, old)
        assert "--sites " not in text and "--sites\n" not in text, name


# (argv with the one spelling, dests, expected values, the same argv with a removed old spelling)
SPELLINGS = [
    (["predict", "-m", "m.onnx", "-i", "in", "-o", "o", "-q"], ("quiet", "output"), (True, Path("o")),
     ["predict", "-m", "m.onnx", "-i", "in", "-o", "o", "--no-progress"]),
    (["transferability", "-m", "m.onnx", "d", "--channel", "T1", "--labels", "CSF", "--risk-base", "5", "-o", "r.json",
      "-q"], ("risk_base", "output", "quiet"), (5.0, Path("r.json"), True),
     ["transferability", "-m", "m.onnx", "d", "--channel", "T1", "--labels", "CSF", "--base", "5", "-o", "r.json"]),
    (["transferability", "-m", "m.onnx", "d", "--channel", "T1", "--labels", "CSF", "-o", "r.json"],
     ("output",), (Path("r.json"),),
     ["transferability", "-m", "m.onnx", "d", "--channel", "T1", "--labels", "CSF", "--json", "r.json"]),
    (["affinity", "d", "--tasks", "all", "-o", "a", "--sites-csv", "s.csv", "-q"],
     ("output", "sites_csv", "quiet"), (Path("a"), Path("s.csv"), True),
     ["affinity", "d", "--tasks", "all", "-o", "a", "--sites", "s.csv"]),
    (["path", "a", "--target", "x/T1/CSF", "-o", "p"], ("output",), (Path("p"),),
     ["path", "a", "--target", "x/T1/CSF", "--out", "p"]),
    (["rank", "d", "--channel", "T1", "--labels", "CSF", "--sources", "r", "--output", "r.json"],
     ("output",), (Path("r.json"),),
     ["rank", "d", "--channel", "T1", "--labels", "CSF", "--sources", "r", "--out", "r.json"]),
    (["transfer-path", "d", "--path", "a,b", "--source", "r", "--output", "o", "-q"],
     ("output", "quiet"), (Path("o"), True),
     ["transfer-path", "d", "--path", "a,b", "--source", "r", "--output", "o", "--no-progress"]),
    (["train", "d", "--channel", "T1", "--labels", "CSF", "-o", "r", "--sites-csv", "s.csv", "--quiet"],
     ("output", "sites_csv", "quiet"), (Path("r"), Path("s.csv"), True),
     ["train", "d", "--channel", "T1", "--labels", "CSF", "-o", "r", "--sites", "s.csv"]),
    (["phantom", "p", "--num-sites", "2", "-q"], ("sites", "quiet"), ("2", True),
     ["phantom", "p", "--sites", "2"]),
    (["import", "brats", "src", "dst", "--partitions", "p.csv", "-q"],
     ("partitions", "quiet"), (Path("p.csv"), True),
     ["import", "brats", "src", "dst", "--partitions", "p.csv", "--no-progress"]),
    (["reproduce", "-o", "s", "-q"], ("output", "quiet"), (Path("s"), True), ["reproduce", "-o", "s", "--no-progress"]),
]


@pytest.mark.parametrize("argv, dests, expected, old", SPELLINGS, ids=[f"{a[0][0]}-{i}" for i, a in enumerate(SPELLINGS)])
def test_one_spelling_parses_and_the_old_one_is_refused(argv, dests, expected, old, capsys):
    args = _parse(*argv)
    assert tuple(getattr(args, d) for d in dests) == expected, argv
    with pytest.raises(SystemExit) as exc:
        _parse(*old)
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_prefixes_of_options_are_refused(capsys):
    """No abbreviations: ``--out`` is not read as ``--output``, ``--sites`` not as ``--sites-csv``."""
    for argv in (["export", "run", "--out", "m.onnx"], ["export", "run", "--outp", "m.onnx"],
                 ["train", "d", "--channel", "T1", "--labels", "CSF", "-o", "r", "--sites", "s.csv"],
                 ["--memory", "1G", "doctor"]):
        with pytest.raises(SystemExit):
            _parse(*argv)
    capsys.readouterr()


def test_required_output_names_its_one_spelling(capsys):
    assert _parse("export", "run", "--output", "m.onnx").output == Path("m.onnx")
    with pytest.raises(SystemExit):
        _parse("export", "run")
    assert "-o/--output" in capsys.readouterr().err


def test_defaults_and_choices_come_from_the_dataclasses():
    args = _parse("finetune", "d", "--channel", "T2", "--labels", "CSF", "--source", "s", "-o", "r")
    defaults = TrainConfig()
    for name in ("iterations", "lr", "batch_size", "few_shot", "seed", "val_every", "val_fraction", "axis",
                 "checkpoint_every", "risk_refresh", "risk_base", "risk_scope", "trs_stride", "freeze"):
        assert getattr(args, name) == getattr(defaults, name), name
    assert args.method == "trm" and args.risk_base == RISK_BASE
    method = next(a for a in COMMANDS[("finetune",)]._actions if a.dest == "method")
    assert tuple(method.choices) == tuple(METHODS)
    assert _parse("riskmap", "d", "--source", "s", "-o", "m").risk_base == RISK_BASE
    assert _parse("transferability", "-m", "m", "d", "--channel", "T1", "--labels", "CSF").risk_base == RISK_BASE


def test_other_defaults_are_read_from_their_owners():
    from trmcore.data import phantom
    from trmcore.infer.metadata import DEFAULT_OPSET
    from trmcore.selection.rank import VALIDATE_ITERATIONS
    from trmcore.selection.tasks import DEFAULT_MAX_HOPS
    from trmcore.study.grid import DEFAULT_SEEDED_TABLES, DEFAULT_SEEDS, TABLES, parse_tables
    from trmcore.study.profiles import DEFAULT_PROFILE
    from trmcore.study.study import parse_seeds
    from trmcore.training.methods import PLAIN_METHOD
    from trmcore.training.riskmap import RiskMapSettings

    assert _parse("export", "run", "-o", "m.onnx").opset == DEFAULT_OPSET
    assert _parse("path", "a", "--target", "x/T1/CSF").max_hops == DEFAULT_MAX_HOPS
    rank = _parse("rank", "d", "--channel", "T1", "--labels", "CSF", "--sources", "r")
    assert (rank.iterations, rank.method) == (VALIDATE_ITERATIONS, PLAIN_METHOD)
    assert _parse("train", "d", "--channel", "T1", "--labels", "CSF", "-o", "r").method == PLAIN_METHOD
    study = _parse("reproduce", "-o", "s")
    assert study.profile == DEFAULT_PROFILE and parse_tables(study.tables) == TABLES
    assert parse_seeds(study.seeds) == list(DEFAULT_SEEDS)
    assert parse_tables(study.seeded_tables) == DEFAULT_SEEDED_TABLES
    made = _parse("phantom", "p")
    assert (made.cases, int(made.sites), tuple(made.shape), made.seed) == (
        phantom.DEFAULT_CASES, phantom.DEFAULT_SITES, phantom.DEFAULT_SHAPE, phantom.DEFAULT_SEED)
    riskmap = _parse("riskmap", "d", "--source", "s", "-o", "m")
    assert RiskMapSettings(riskmap.risk_base, riskmap.risk_scope, riskmap.risk_scaling,
                           riskmap.risk_quantile) == RiskMapSettings()


def test_only_bad_input_is_a_one_line_error(monkeypatch, capsys):
    import trmcore.cli.train as cli_train
    from trmcore.cli.main import main

    def bad_input(args):
        raise ValueError("run folder x has no run.json")

    def bug(args):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(cli_train, "_run_demo", bad_input)
    assert main(["demo", "-o", "x"]) == 2
    assert capsys.readouterr().err == "trm demo: error: run folder x has no run.json\n"
    monkeypatch.setattr(cli_train, "_run_demo", bug)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["demo", "-o", "x"])

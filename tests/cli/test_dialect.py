"""One CLI dialect: -q/--quiet, -o/--output, --sites-csv, --risk-base everywhere; old spellings hidden."""

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


def test_hidden_spellings_stay_out_of_help():
    for name, parser in COMMANDS.items():
        text = parser.format_help()
        for old in ("--no-progress", "--out ", "--base ", "--json"):
            assert old not in text, (name, old)
        assert "--sites " not in text and "--sites\n" not in text, name


# (new argv, old argv, dest, expected value)
ALIASES = [
    (["predict", "-m", "m.onnx", "-i", "in", "-o", "o", "-q"],
     ["predict", "-m", "m.onnx", "-i", "in", "--out", "o", "--no-progress"], ("quiet", "output"), (True, Path("o"))),
    (["transferability", "-m", "m.onnx", "d", "--channel", "T1", "--labels", "CSF", "--risk-base", "5", "-o", "r.json",
      "-q"],
     ["transferability", "-m", "m.onnx", "d", "--channel", "T1", "--labels", "CSF", "--base", "5", "--json", "r.json",
      "--no-progress"], ("risk_base", "output", "quiet"), (5.0, Path("r.json"), True)),
    (["affinity", "d", "--tasks", "all", "-o", "a", "--sites-csv", "s.csv", "-q"],
     ["affinity", "d", "--tasks", "all", "--out", "a", "--sites", "s.csv", "--no-progress"],
     ("output", "sites_csv", "quiet"), (Path("a"), Path("s.csv"), True)),
    (["path", "a", "--target", "x/T1/CSF", "-o", "p"], ["path", "a", "--target", "x/T1/CSF", "--out", "p"],
     ("output",), (Path("p"),)),
    (["rank", "d", "--channel", "T1", "--labels", "CSF", "--sources", "r", "-o", "r.json"],
     ["rank", "d", "--channel", "T1", "--labels", "CSF", "--sources", "r", "--out", "r.json"],
     ("output",), (Path("r.json"),)),
    (["transfer-path", "d", "--path", "a,b", "--source", "r", "--output", "o", "-q"],
     ["transfer-path", "d", "--path", "a,b", "--source", "r", "--out", "o", "--no-progress"],
     ("output", "quiet"), (Path("o"), True)),
    (["train", "d", "--channel", "T1", "--labels", "CSF", "-o", "r", "--sites-csv", "s.csv", "--quiet"],
     ["train", "d", "--channel", "T1", "--labels", "CSF", "--out", "r", "--sites", "s.csv", "--no-progress"],
     ("output", "sites_csv", "quiet"), (Path("r"), Path("s.csv"), True)),
    (["phantom", "p", "--num-sites", "2", "-q"], ["phantom", "p", "--sites", "2", "--no-progress"],
     ("sites", "quiet"), ("2", True)),
    (["import", "brats", "src", "dst", "--partitions", "p.csv", "-q"],
     ["import", "brats", "src", "dst", "--partitions", "p.csv", "--no-progress"],
     ("partitions", "quiet"), (Path("p.csv"), True)),
    (["reproduce", "-o", "s", "-q"], ["reproduce", "--out", "s", "--no-progress"], ("output", "quiet"),
     (Path("s"), True)),
]


@pytest.mark.parametrize("new, old, dests, expected", ALIASES, ids=[a[0][0] for a in ALIASES])
def test_old_spellings_parse_like_the_new_ones(new, old, dests, expected):
    for argv in (new, old):
        args = _parse(*argv)
        assert tuple(getattr(args, d) for d in dests) == expected, argv


def test_required_output_accepts_the_old_spelling_and_names_the_new_one(capsys):
    assert _parse("export", "run", "--out", "m.onnx").output == Path("m.onnx")
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

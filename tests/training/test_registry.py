"""A fifth fine-tuning method is one registry entry plus its class: CLI, config and trainer pick it up."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from trmcore.cli.main import build_parser, main
from trmcore.data import parse_task
from trmcore.models import NORMS, UNetConfig, create_norm
from trmcore.training import TrainConfig
from trmcore.training.method_settings import setting
from trmcore.training.methods import METHODS, MethodEntry, get_method, register_method, source_method_names
from trmcore.training.weighting import IGNORE_INDEX, LossWeighting

CALLS = []


class ForegroundTwiceWeighting(LossWeighting):
    """Toy method: foreground pixels weigh 2, background 1, ignored 0; mean over valid pixels."""

    normalize = "valid"

    def __init__(self, stride: int) -> None:
        self.stride = stride

    @classmethod
    def from_config(cls, config, model_config, data, num_classes, ctx, source=None):
        CALLS.append(("built", config.method, model_config.num_classes, num_classes, source is not None))
        return cls(config.trs_stride)

    def weights(self, index, labels):
        weights = torch.where(labels > 0, 2.0, 1.0)
        weights = torch.where(labels == IGNORE_INDEX, 0.0, weights)
        CALLS.append(("weights", weights.clone(), labels.clone()))
        return weights


@pytest.fixture
def toy_method():
    entry = register_method(MethodEntry("fg-twice", f"{__name__}:ForegroundTwiceWeighting",
                                        "foreground weighs twice (test method)", needs_source=True))
    CALLS.clear()
    try:
        yield entry
    finally:
        del METHODS[entry.name]


@dataclass(frozen=True)
class ForegroundWeightSettings:
    """The toy method's one setting (a fifth method with its own setting: this class, the weighting, one entry)."""

    fg_weight: float = setting(2.0, "weight of foreground pixels", metavar="W")

    def __post_init__(self) -> None:
        if not self.fg_weight > 0:
            raise ValueError(f"fg_weight must be > 0, got {self.fg_weight!r}")


class ForegroundWeightedWeighting(LossWeighting):
    """Toy method: foreground pixels weigh ``fg_weight``, background 1, ignored 0."""

    normalize = "valid"

    def __init__(self, fg_weight: float) -> None:
        self.fg_weight = fg_weight

    @classmethod
    def from_config(cls, config, model_config, data, num_classes, ctx, source=None):
        settings = config.method_settings_of()
        CALLS.append(("built", config.method, settings))
        return cls(settings.fg_weight)

    def weights(self, index, labels):
        weights = torch.where(labels > 0, self.fg_weight, 1.0)
        weights = torch.where(labels == IGNORE_INDEX, 0.0, weights)
        CALLS.append(("weights", weights.clone(), labels.clone()))
        return weights


@pytest.fixture
def toy_method_with_setting():
    entry = register_method(MethodEntry("fg-weighted", f"{__name__}:ForegroundWeightedWeighting",
                                        "foreground weighs --fg-weight (test method)", needs_source=True,
                                        settings=ForegroundWeightSettings))
    CALLS.clear()
    try:
        yield entry
    finally:
        del METHODS[entry.name]


def _choices(command: str) -> tuple:
    subcommands = build_parser()._subparsers._group_actions[0].choices
    action = next(a for a in subcommands[command]._actions if "--method" in a.option_strings)
    return tuple(action.choices)


def test_builtin_registry():
    assert list(METHODS) == ["vanilla", "class-weight", "trs-map", "trm"]
    assert source_method_names() == ("vanilla", "class-weight")
    assert _choices("finetune") == tuple(METHODS) and _choices("train") == source_method_names()
    with pytest.raises(ValueError, match="unknown method 'nope'.*vanilla, class-weight, trs-map, trm"):
        get_method("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_method(MethodEntry("trm", "x:y", "duplicate"))


def test_fifth_method_is_one_entry(toy_method, phantom, source_run, tmp_path):
    # CLI choice and config validation come from the registry.
    assert "fg-twice" in _choices("finetune") and "fg-twice" not in _choices("train")
    assert TrainConfig(method="fg-twice").method == "fg-twice"
    # The trainer builds it from the TrainConfig and uses its weights.
    out = tmp_path / "toy"
    assert main(["finetune", str(phantom), "--channel", "T2", "--labels", "CSF", "--source", str(source_run),
                 "-o", str(out), "--method", "fg-twice", "--iterations", "2", "--batch-size", "4",
                 "--val-every", "0", "--val-fraction", "0.25", "--trs-stride", "3", "-q"]) == 0
    built = [c for c in CALLS if c[0] == "built"]
    assert built == [("built", "fg-twice", 2, 2, True)]
    weight_calls = [c for c in CALLS if c[0] == "weights"]
    assert len(weight_calls) == 2
    for _, weights, labels in weight_calls:
        assert labels.shape[0] == 4
        expected = torch.ones(labels.shape)
        expected[labels == 1] = 2.0
        assert torch.equal(weights, expected)
        assert bool((labels == 1).any())  # the check above saw foreground pixels
    info = json.loads((out / "run.json").read_text())
    assert info["method"] == "fg-twice"


def test_source_training_refuses_a_source_method(toy_method, phantom, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(phantom), "--channel", "T1", "--labels", "CSF", "-o", str(tmp_path / "x"),
              "--method", "fg-twice"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fg-twice'" in capsys.readouterr().err
    from trmcore.data import parse_task
    from trmcore.training.trainer import train

    with pytest.raises(ValueError, match="source training supports the methods vanilla, class-weight"):
        train(phantom, parse_task("T1", "CSF"), tmp_path / "y", TrainConfig(method="fg-twice"), progress=False)


def test_norm_registry_builds_each_layer():
    assert list(NORMS) == ["batch", "instance", "group", "none"]
    assert type(create_norm("batch", 8)).__name__ == "BatchNorm2d"
    group = create_norm("group", 12)
    assert type(group).__name__ == "GroupNorm" and group.num_groups == 4 and group.num_channels == 12
    assert type(create_norm("none", 8)).__name__ == "Identity"
    with pytest.raises(ValueError, match="UNetConfig.norm must be one of"):
        UNetConfig(norm="layer")


class OverflowWeighting(LossWeighting):
    """Weights so large that the float32 loss overflows: the trainer must stop, without a checkpoint."""

    normalize = "batch"  # sum over ~4000 pixels / #foreground pixels: far above the float32 maximum

    def weights(self, index, labels):
        return torch.full(labels.shape, 3e38)


def test_nonfinite_loss_stops_training_before_any_checkpoint(phantom, source_run, tmp_path):
    from trmcore.training.trainer import finetune

    from .helpers import tiny_config

    entry = register_method(MethodEntry("overflow", f"{__name__}:OverflowWeighting", "test method"))
    try:
        with pytest.raises(FloatingPointError, match="loss became NaN or infinite at iteration 0"):
            finetune(phantom, parse_task("T2", "CSF"), source_run, tmp_path / "run",
                     tiny_config(method="overflow", iterations=4, val_every=2, checkpoint_every=1), progress=False)
    finally:
        del METHODS[entry.name]
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_plain_cross_entropy_has_one_name(source_run, tmp_path):
    """"vanilla" is plain CE everywhere; None is refused, but run.json and checkpoints that saved null still read."""
    import json
    import shutil

    from trmcore.training.methods import PLAIN_METHOD
    from trmcore.training.runinfo import read_run_info

    assert PLAIN_METHOD == "vanilla" and TrainConfig().method == PLAIN_METHOD
    with pytest.raises(ValueError, match="method must be one of"):
        TrainConfig(method=None)
    assert TrainConfig.from_dict({"method": None, "iterations": 3}).method == PLAIN_METHOD
    info = read_run_info(source_run)
    assert info.method == PLAIN_METHOD and info.training.method == PLAIN_METHOD
    old = tmp_path / "old"
    shutil.copytree(source_run, old)
    record = json.loads((old / "run.json").read_text())
    record["method"] = None
    record["training"]["method"] = None  # as trmcore wrote a plain-CE source model before
    (old / "run.json").write_text(json.dumps(record))
    info = read_run_info(old)
    assert info.method == PLAIN_METHOD and info.training.method == PLAIN_METHOD
    record["training"]["method"] = "nope"
    (old / "run.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="training: method must be one of"):
        read_run_info(old)


def test_fifth_method_with_its_own_setting(toy_method_with_setting, phantom, source_run, tmp_path, capsys):
    from trmcore.training.runinfo import read_run_info

    # The option is generated from the settings dataclass, with its help text and default.
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "fg-weighted settings:" in help_text
    assert "--fg-weight W fg-weighted: weight of foreground pixels (default 2)" in help_text
    args = build_parser().parse_args(["finetune", "d", "--channel", "T2", "--labels", "CSF", "--source", "s",
                                      "-o", "r", "--method", "fg-weighted", "--fg-weight", "3.5"])
    assert args.fg_weight == 3.5
    assert build_parser().parse_args(["finetune", "d", "--channel", "T2", "--labels", "CSF", "--source", "s",
                                      "-o", "r"]).fg_weight == 2.0
    # Its checks are the dataclass's, through TrainConfig; an unknown setting is refused.
    with pytest.raises(ValueError, match="fg_weight must be > 0"):
        TrainConfig(method="fg-weighted", method_settings={"fg_weight": 0.0})
    with pytest.raises(ValueError, match="no registered method has the setting"):
        TrainConfig(method_settings={"nope": 1})
    assert TrainConfig(method="fg-weighted").method_settings_of() == ForegroundWeightSettings(2.0)
    # The value reaches the loss weights and is recorded in run.json (built-in methods' run.json keeps its keys).
    out = tmp_path / "toy"
    assert main(["finetune", str(phantom), "--channel", "T2", "--labels", "CSF", "--source", str(source_run),
                 "-o", str(out), "--method", "fg-weighted", "--fg-weight", "3.5", "--iterations", "2",
                 "--batch-size", "4", "--val-every", "0", "--val-fraction", "0.25", "-q"]) == 0
    assert [c for c in CALLS if c[0] == "built"] == [("built", "fg-weighted", ForegroundWeightSettings(3.5))]
    weight_calls = [c for c in CALLS if c[0] == "weights"]
    assert len(weight_calls) == 2
    for _, weights, labels in weight_calls:
        expected = torch.ones(labels.shape)
        expected[labels == 1] = 3.5
        assert torch.equal(weights, expected) and bool((labels == 1).any())
    record = json.loads((out / "run.json").read_text())
    assert record["training"]["method_settings"] == {"fg_weight": 3.5}
    assert read_run_info(out).training.method_settings_of() == ForegroundWeightSettings(3.5)
    assert "method_settings" not in json.loads((source_run / "run.json").read_text())["training"]


def test_method_settings_must_describe_their_options():
    @dataclass(frozen=True)
    class NoHelp:
        knob: int = 1

    with pytest.raises(ValueError, match="has no help text"):
        register_method(MethodEntry("no-help", "x:y", "test", settings=NoHelp))
    with pytest.raises(ValueError, match="already method 'trm'"):
        register_method(MethodEntry("clash", "x:y", "test", settings=_clashing_settings()))
    assert "no-help" not in METHODS and "clash" not in METHODS


def _clashing_settings():
    @dataclass(frozen=True)
    class Clash:
        risk_base: float = setting(3.0, "another default for trm's setting")

    return Clash


def test_builtin_settings_are_the_flat_fields():
    from trmcore.training.method_settings import TrmSettings, TrsMapSettings

    config = TrainConfig(method="trm", risk_base=5.0, risk_scaling="robust", trs_stride=2)
    assert config.method_settings_of() == TrmSettings(risk_base=5.0, risk_scaling="robust")
    assert config.method_settings_of("trs-map") == TrsMapSettings(trs_stride=2)
    assert config.method_settings_of("vanilla") is None
    assert TrainConfig().risk_base == TrmSettings().risk_base and TrainConfig().trs_stride == TrsMapSettings().trs_stride
    with pytest.raises(ValueError, match="risk_quantile must be in"):
        TrainConfig(risk_quantile=0.5)
    assert "method_settings" not in TrainConfig().to_dict()

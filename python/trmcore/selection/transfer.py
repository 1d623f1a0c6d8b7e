"""Execute a sequential transfer path hop by hop [SEQ], and compare with direct transfer.

``--path A,B,...,T`` with a source run trained on task A: hop k fine-tunes the
previous hop's model on the next task with :func:`trmcore.training.finetune`
(all weights loaded, the head re-initialised, the method of the config), and
records the validation Dice the fine-tuning reports on that task's held-out
cases. Direct transfer fine-tunes the source on T with the same settings; both
target runs use the same split (same seed and validation fraction), so their
Dice compare like for like.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from trmcore.fileio import atomic_write_json, make_folder
from trmcore.selection.fit import split_path
from trmcore.selection.tasks import parse_task_name
from trmcore.training.methods import DEFAULT_METHOD

PathLike = Union[str, Path]


@dataclass(frozen=True)
class TransferPathConfig:
    """Fine-tuning settings shared by every hop and by the direct run.

    Attributes:
        method: fine-tuning method, a name of trmcore.training.methods.METHODS.
        iterations: per hop (None: the training default, 5000 as SPEC 5).
        shots: few-shot training slices per hop, or None for all.
        device, seed: as ``trm finetune``.
        direct: also run direct transfer source -> target for comparison.
    """

    method: str = DEFAULT_METHOD
    iterations: Optional[int] = None
    shots: Optional[int] = None
    device: Optional[str] = None
    seed: int = 0
    direct: bool = True
    progress: bool = True


@dataclass
class HopResult:
    task: str
    run_dir: str
    val_dice: Optional[float]

    def to_json(self) -> Dict[str, object]:
        return {"task": self.task, "run": self.run_dir, "val_dice": self.val_dice}


@dataclass
class TransferPathReport:
    path: List[str]
    source: str
    method: str
    hops: List[HopResult] = field(default_factory=list)
    direct: Optional[HopResult] = None

    def to_json(self) -> Dict[str, object]:
        return {"path": self.path, "source": self.source, "method": self.method,
                "hops": [h.to_json() for h in self.hops],
                "direct": self.direct.to_json() if self.direct else None}

    def summary(self) -> str:
        def fmt(value: Optional[float]) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        lines = [f"path {' -> '.join(self.path)} ({self.method})"]
        for k, hop in enumerate(self.hops, start=1):
            lines.append(f"  hop {k}: {hop.task:<28} val Dice {fmt(hop.val_dice)}  ({hop.run_dir})")
        if self.direct is not None:
            lines.append(f"  direct {self.path[0]} -> {self.direct.task}: val Dice {fmt(self.direct.val_dice)}")
            if self.hops and self.hops[-1].val_dice is not None and self.direct.val_dice is not None:
                gain = self.hops[-1].val_dice - self.direct.val_dice
                lines.append(f"  sequential - direct = {gain:+.4f}")
        return "\n".join(lines)


def _safe(name: str) -> str:
    return name.replace("/", "_").replace("+", "-").replace("*", "all")


def transfer_along_path(data: PathLike, path: Union[str, Sequence[str]], source_run: PathLike, out_dir: PathLike,
                        config: TransferPathConfig) -> TransferPathReport:
    """Fine-tune ``source_run`` along ``path`` (first task = the source's), then directly for comparison.

    Writes one run folder per hop (``out_dir/hop1-B``, ...), ``out_dir/direct-T``
    and ``out_dir/transfer_path.json``.

    Raises:
        ValueError: a path of fewer than two tasks, a task name that cannot be read,
            or a source whose channels differ from the first task's.
        FileNotFoundError: no run folder at ``source_run``.
    """
    from trmcore.training import TrainConfig, finetune, read_run_info

    names = list(split_path(path) if isinstance(path, str) else path)
    if len(names) < 2:
        raise ValueError("a transfer path needs at least a source task and a target task")
    tasks = [parse_task_name(n, source="--path") for n in names]
    source_run = Path(source_run)
    if not (source_run / "run.json").is_file():
        raise FileNotFoundError(f"source run {source_run} not found (a folder with run.json and model.safetensors)")
    info = read_run_info(source_run)
    if len(info.channels) != len(tasks[0].channels):
        raise ValueError(f"source run {source_run} takes channels {info.channels}; the path starts at "
                         f"{names[0]} with {list(tasks[0].channels)}")
    kwargs = {"method": config.method, "few_shot": config.shots, "seed": config.seed}
    if config.iterations is not None:
        kwargs["iterations"] = config.iterations
    train_config = TrainConfig(**kwargs)
    out = Path(out_dir)
    make_folder(out)
    report = TransferPathReport(names, str(source_run), config.method)
    previous = source_run
    for k, task in enumerate(tasks[1:], start=1):
        run_dir = out / f"hop{k}-{_safe(task.name)}"
        hop_info = finetune(data, task.to_spec(), previous, run_dir, train_config, device=config.device,
                            progress=config.progress, reset_head=True)
        report.hops.append(HopResult(task.name, str(run_dir), hop_info.val_dice))
        previous = run_dir
    if config.direct and len(tasks) > 2:
        run_dir = out / f"direct-{_safe(tasks[-1].name)}"
        direct_info = finetune(data, tasks[-1].to_spec(), source_run, run_dir, train_config, device=config.device,
                               progress=config.progress, reset_head=True)
        report.direct = HopResult(tasks[-1].name, str(run_dir), direct_info.val_dice)
    elif config.direct:
        report.direct = report.hops[-1]  # a one-hop path is the direct transfer
    atomic_write_json(out / "transfer_path.json", report.to_json(), overwrite=True, indent=1)
    return report

"""One training loop for source training and the fine-tuning methods (SPEC section 5).

``train`` fits a source model from scratch; ``finetune`` adapts a source run
to a target task. Both go through :func:`fit`, where the method only picks
the :class:`~trmcore.training.weighting.LossWeighting` (per-pixel weights and
normalisation of :func:`trmcore.ops.risk_weighted_ce`).

A frozen encoder runs under ``torch.no_grad``: its features are computed
without an autograd graph and only the decoder and head build one.

Run folder contents: model.safetensors + run.json (see checkpoint), metrics.csv,
curves.png and train_state.pt for ``resume=True``: an interrupted run continues
exactly, a finished one extends with more iterations (``--resume --iterations N``).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from trmcore import ops
from trmcore.data import TaskSpec, few_shot, load_task_volumes, split_cases, volumes_to_slices
from trmcore.data.geometry import native_geometry
from trmcore.data.preprocess import DEFAULT_NORMALIZATION
from trmcore.fileio import ALL_ENTRIES, folder_lock, prepare_output_folder, visible_entries
from trmcore.models import UNet, UNetConfig
from trmcore.training.augment import AugmentConfig, Batch, augment_batch
from trmcore.training.checkpoint import load_run, load_train_state, save_run, save_train_state
from trmcore.training.config import TrainConfig
from trmcore.training.distributed import DistContext, setup_distributed
from trmcore.training.evaluate import EvaluationResult, evaluate_volumes
from trmcore.training.loss_display import mean_ce_scale
from trmcore.training.methods import DEFAULT_METHOD, PLAIN_METHOD, get_method, source_method_names
from trmcore.training.metrics import MetricsLog
from trmcore.training.loss_denominator import foreground_per_slice, loss_denominator
from trmcore.training.risk_diagnostics import report as report_risk, weighting_diagnostics
from trmcore.training.runinfo import RunInfo, read_run_info, resume_differences
from trmcore.training.precision import autocast_for, needs_loss_scaling
from trmcore.training.sampling import SliceSampler
from trmcore.training.schedule import LRSchedule
from trmcore.training.shards import TrainingSlices, shard_indices
from trmcore.training.sources import SourceOptions, finetune_normalization, load_source, target_network
from trmcore.training.weighting import IGNORE_INDEX, LossWeighting, create_weighting

PathLike = Union[str, Path]
IterationCallback = Callable[[int], None]
# Config fields that may change on --resume (everything else must match the interrupted run).
RESUMABLE_CHANGES = {"iterations", "val_every", "checkpoint_every", "lr_horizon"}


@dataclass
class PreparedData:
    """The task's slices and volumes, split by case."""

    slices: TrainingSlices
    val_volumes: list
    task_info: Any
    train_cases: List[str]
    val_cases: List[str]
    split: Optional[Dict[str, Any]] = None


class TrainStep(nn.Module):
    """The differentiable part of one forward pass.

    With a frozen encoder the features come from ``torch.no_grad`` (no graph,
    no saved activations), which is where fine-tuning saves its time; the
    decoder and head run with autograd. Wrapped in DistributedDataParallel
    under torchrun.
    """

    def __init__(self, model: UNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.model.encoder_frozen:
            with torch.no_grad():
                features = self.model.encoder(images)
            return self.model.decode(features)
        return self.model(images)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prepare_data(data_root: PathLike, task: TaskSpec, config: TrainConfig, divisor: int, ctx: DistContext,
                 progress: bool = True, sites: Any = None, geometry: Any = None,
                 normalization: str = DEFAULT_NORMALIZATION) -> PreparedData:
    """Load the task, split it by case, cut the training volumes into slices and shard them.

    ``geometry`` None: RAS at the median in-plane spacing (``config.resample``) or as stored.
    """
    if geometry is None and not config.resample:
        geometry = native_geometry(config.axis)
    volumes, task_info = load_task_volumes(data_root, task, progress=progress and ctx.is_main, sites=sites,
                                           geometry=geometry, normalization=normalization, axis=config.axis)
    train_volumes, val_volumes, split = _split(volumes, data_root, config, sites, ctx)
    slice_set = volumes_to_slices(train_volumes, axis=config.axis, divisor=divisor, skip_empty=config.skip_empty)
    if config.few_shot is not None:
        slice_set = few_shot(slice_set, config.few_shot, seed=config.seed)
    if len(slice_set) < ctx.world_size:
        raise ValueError(f"{len(slice_set)} training slices cannot be shared by {ctx.world_size} processes")
    images = torch.from_numpy(np.ascontiguousarray(slice_set.images))
    labels = torch.from_numpy(np.ascontiguousarray(slice_set.labels)).long()
    shard = shard_indices(len(slice_set), ctx.rank, ctx.world_size)
    data = PreparedData(TrainingSlices(images, labels, shard), val_volumes, task_info,
                        [v.case_id for v in train_volumes], [v.case_id for v in val_volumes], split)
    if progress and ctx.is_main:
        print(describe_split(data), flush=True)
    return data


def _split(volumes: list, data_root: PathLike, config: TrainConfig, sites: Any,
           ctx: DistContext) -> Tuple[list, list, Dict[str, Any]]:
    """(train volumes, validation volumes, run.json's ``split`` record): fold K, or val_fraction."""
    if config.fold is not None:
        from trmcore.data import DatasetLayout
        from trmcore.data.splits import dataset_splits, fold_cases

        # Every process reads the same file; the main one writes it first when absent.
        if ctx.is_main:
            dataset_splits(data_root, DatasetLayout.read(data_root, sites=sites).cases())
        ctx.barrier()
        splits, path, _ = dataset_splits(data_root, [])
        train_ids, val_ids = fold_cases(splits, config.fold, [v.case_id for v in volumes], str(path))
        if not train_ids:
            raise ValueError(f"fold {config.fold} of {path} trains on none of the task's cases")
        chosen = set(train_ids)
        return ([v for v in volumes if v.case_id in chosen], [v for v in volumes if v.case_id not in chosen],
                {"kind": "fold", "fold": config.fold, "folds": len(splits), "file": str(path.resolve())})
    record = {"kind": "val_fraction", "val_fraction": config.val_fraction, "seed": config.seed}
    if config.val_fraction > 0 and len(volumes) > 1:
        train_volumes, val_volumes = split_cases(volumes, config.val_fraction, seed=config.seed)
        return train_volumes, val_volumes, record
    return list(volumes), [], record


def describe_split(data: PreparedData) -> str:
    """One line: how many cases train, which are held out, and by what rule."""
    split = data.split or {}
    rule = (f"fold {split['fold']} of {split['folds']} in {split['file']}" if split.get("kind") == "fold"
            else f"val_fraction {split.get('val_fraction')}, seed {split.get('seed')}")
    held = ", ".join(data.val_cases) if data.val_cases else "none (no validation)"
    return (f"split ({rule}): {len(data.train_cases)} training case(s), {len(data.val_cases)} held out: {held}")


# What a resume state from before a setting existed ran with (its config lacks the key).
LEGACY_SETTINGS = {"lr_schedule": "constant", "augment": False}


def _check_resume(run_dir: Path, config: TrainConfig, state: Dict[str, Any]) -> None:
    saved = TrainConfig.from_dict({**LEGACY_SETTINGS, **state["config"]})
    differing = [k for k, v in config.to_dict().items()
                 if k not in RESUMABLE_CHANGES and saved.to_dict().get(k) != v]
    if differing:
        raise ValueError(f"cannot resume {run_dir}: settings differ from the interrupted run: "
                         + ", ".join(f"{k} {saved.to_dict().get(k)!r} -> {config.to_dict()[k]!r}" for k in differing))
    if state["iteration"] > config.iterations:
        raise ValueError(f"cannot resume {run_dir}: it already ran {state['iteration']} iterations "
                         f"> --iterations {config.iterations}")
    if state["iteration"] == config.iterations:
        raise ValueError(f"cannot resume {run_dir}: it already finished {config.iterations} iterations; "
                         "pass a larger --iterations to extend it")


def augmentation_of(info: RunInfo) -> Optional[AugmentConfig]:
    """The run's AugmentConfig from run.json's record (None: no augmentation)."""
    return None if info.augmentation is None else AugmentConfig.from_dict(info.augmentation)


def make_optimizer(parameters: List[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """Adam, or SGD with Nesterov momentum (nnU-Net's), at the schedule's first learning rate."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)


def _validate(model: UNet, data: PreparedData, info: RunInfo, ctx: DistContext, batch_size: int,
              amp: bool) -> Optional[EvaluationResult]:
    if not data.val_volumes:
        return None
    return evaluate_volumes(model, data.val_volumes, info.label_names, info.axis, info.divisor, ctx.device,
                            batch_size=max(batch_size, 8), amp=amp)


class _TrainLoop:
    """The state of one :func:`fit`: optimiser, loss scaler, metrics and the running loss.

    Split by what happens per iteration: :meth:`step` (one optimiser step, after the augmentation),
    :meth:`log` (running loss and validation Dice), :meth:`checkpoint`
    (run folder and resumable state).
    """

    def __init__(self, model: UNet, weighting: LossWeighting, data: PreparedData, config: TrainConfig,
                 run_dir: Path, info: RunInfo, ctx: DistContext) -> None:
        self.model, self.weighting, self.data, self.config = model, weighting, data, config
        self.run_dir, self.info, self.ctx = run_dir, info, ctx
        self.sampler = SliceSampler(len(data.slices.labels), config.batch_size, config.seed, ctx.rank, ctx.world_size,
                                    foreground=foreground_per_slice(data.slices.labels) > 0,
                                    foreground_share=config.foreground_share)
        self.denominator = loss_denominator(weighting.normalize, config, data.slices.labels)
        info.loss_normalization = self.denominator.to_dict()
        self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
        self.schedule = LRSchedule.planned(config.lr_schedule, config.lr, config.planned_horizon, config.warmup)
        info.lr_schedule = self.schedule.to_dict()
        self.lr = config.lr
        self.augmentation = augmentation_of(info)
        self.scaler = torch.amp.GradScaler("cuda", enabled=needs_loss_scaling(ctx.device, config.amp))
        self.metrics = MetricsLog(info.label_names[1:])
        self.log_every = max(1, min(50, config.val_every or config.iterations))
        self.elapsed_before = 0.0
        self.started = self.last_plot = time.perf_counter()
        # The running loss stays on the device (float64, the same sum as Python floats would give) and
        # is read at log points only: no host sync per step. first_bad: first non-finite iteration, or -1.
        # loss_sum: the optimised loss (metrics.csv "objective"); shown_sum: the same batches on the scale
        # of mean cross-entropy (the bar and metrics.csv "loss", trmcore.training.loss_display).
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        self.shown_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        self.loss_count = 0
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=ctx.device)
        self.last_loss: Optional[float] = None
        self.last_dice: Optional[float] = None

    def restore(self, state: Dict[str, Any]) -> int:
        """Continue from a train_state.pt; returns the number of iterations already done."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.metrics.rows = list(state["history"])
        self.weighting.load_state_dict(state.get("weighting", {}))
        _set_rng_state(state["rng"])
        done = int(state["iteration"])
        if "lr_schedule" in state:
            saved = LRSchedule.from_dict(state["lr_schedule"])
        else:  # a state from before schedules: it ran at a constant learning rate
            saved = LRSchedule("constant", self.config.lr, 0, ((0, max(done + 1, self.config.iterations)),))
        # More iterations than planned: the steps from here follow the decay planned for the new horizon.
        self.schedule = saved.extended(done, self.config.planned_horizon)
        self.info.lr_schedule = self.schedule.to_dict()
        if self.metrics.rows:
            self.elapsed_before = float(self.metrics.rows[-1]["elapsed_s"])
            self.last_dice = self.metrics.rows[-1]["val_dice"]
        return done

    def step(self, forward: nn.Module, iteration: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on the batch of ``iteration``; returns the (detached) loss and its
        mean-cross-entropy-scale value (float64)."""
        device = self.ctx.device
        self.weighting.maybe_refresh(self.model, iteration)
        self.lr = self.schedule.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        index = self.sampler.batch(iteration)
        images = self.data.slices.images[index].to(device, non_blocking=True)
        labels = self.data.slices.labels[index].to(device, non_blocking=True)
        weights = self.weighting.weights(index, labels)
        if self.augmentation is not None:  # after the weights, so they move with the image and labels
            images, labels, weights = augment_batch(Batch(images, labels, weights), self.augmentation,
                                                    self.config.seed, self.ctx.rank, iteration)
        with autocast_for(device, self.config.amp):
            logits = forward(images)
        loss = ops.risk_weighted_ce(logits.float(), labels, weights, ignore_index=IGNORE_INDEX,
                                    normalize=self.denominator.normalize,
                                    min_foreground=self.denominator.min_foreground)
        shown = mean_ce_scale(loss, labels, weights, self.denominator.normalize,
                              self.denominator.min_foreground, logits)
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss.detach()),
                                     torch.full_like(self.first_bad, iteration), self.first_bad)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), shown

    def after_step(self, done: int, loss: torch.Tensor, shown: torch.Tensor) -> None:
        """Account the loss of iteration ``done``; log, validate and checkpoint when due."""
        config = self.config
        self.loss_sum += loss.double()
        self.shown_sum += shown
        self.loss_count += 1
        validate_now = done == config.iterations or bool(config.val_every and done % config.val_every == 0)
        checkpoint_now = validate_now or bool(config.checkpoint_every and done % config.checkpoint_every == 0)
        if validate_now or checkpoint_now or done % self.log_every == 0:
            self.raise_if_diverged()
        if validate_now or done % self.log_every == 0:
            self.log(done, validate_now)
        if checkpoint_now:
            self.checkpoint(done)

    def raise_if_diverged(self) -> None:
        """Raise the ops' deferred input errors and FloatingPointError for a non-finite loss (one host sync)."""
        ops.check_pending()
        bad = int(self.first_bad)
        if bad >= 0:
            raise FloatingPointError(f"loss became NaN or infinite at iteration {bad}; try a lower --lr")

    def log(self, done: int, validate: bool) -> None:
        """A metrics row: mean loss since the last row and, when ``validate``, the held-out Dice."""
        self.last_loss = float(self.shown_sum) / self.loss_count
        objective = float(self.loss_sum) / self.loss_count
        result = None
        if validate and self.ctx.is_main:
            result = _validate(self.model, self.data, self.info, self.ctx, self.config.batch_size, self.config.amp)
        if self.ctx.is_main:
            self.metrics.add(done, self.last_loss,
                             self.elapsed_before + time.perf_counter() - self.started,
                             None if result is None else result.mean,
                             None if result is None else result.mean_per_class, lr=self.lr, objective=objective)
            # The curves at every log row, not only at validation (the plot at most once a minute).
            self.metrics.write_csv(self.run_dir)
            if time.perf_counter() - self.last_plot > 60:
                self.metrics.plot(self.run_dir, _curves_title(self.info))
                self.last_plot = time.perf_counter()
        if result is not None:
            self.last_dice = result.mean
        self.loss_sum.zero_()
        self.shown_sum.zero_()
        self.loss_count = 0

    def checkpoint(self, done: int) -> None:
        """Write the run folder and, before the end, the resumable state (main rank); all ranks wait."""
        config, info = self.config, self.info
        info.iterations_done = done
        info.val_dice = self.last_dice
        if self.ctx.is_main:
            # Curves are redrawn at most once a minute (and at the end): matplotlib is slow.
            plot = done == config.iterations or time.perf_counter() - self.last_plot > 60
            _write_run(self.run_dir, self.model, info, self.metrics, plot)
            self.last_plot = time.perf_counter() if plot else self.last_plot
            # Also at the end: a finished run extends with --resume --iterations N (the optimiser,
            # loss scaler, RNG, weighting and schedule states; the sampler is a function of the step).
            save_train_state(self.run_dir, {
                "iteration": done, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": _rng_state(), "history": self.metrics.rows,
                "weighting": self.weighting.state_dict(), "config": config.to_dict(),
                "lr_schedule": self.schedule.to_dict()})
        self.ctx.barrier()


def fit(model: UNet, weighting: LossWeighting, data: PreparedData, config: TrainConfig, run_dir: PathLike,
        info: RunInfo, ctx: DistContext, resume_state: Optional[Dict[str, Any]] = None, progress: bool = True,
        on_iteration: Optional[IterationCallback] = None) -> RunInfo:
    """Train ``model`` for ``config.iterations`` optimiser steps and write the run folder (main rank).

    Args:
        model: the UNet, already on ``ctx.device``, frozen as wanted.
        weighting: per-pixel weights and normalisation of the loss.
        resume_state: the content of train_state.pt to continue from, or None.
        on_iteration: called with the number of finished iterations after each step
            (and after any checkpoint of that step) on every rank.
    Returns:
        The final RunInfo (also saved as run.json).
    """
    from tqdm.auto import tqdm

    loop = _TrainLoop(model, weighting, data, config, Path(run_dir), info, ctx)
    start = loop.restore(resume_state) if resume_state is not None else 0
    model.train()
    forward: nn.Module = TrainStep(model)
    if ctx.distributed:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    bar = tqdm(total=config.iterations, initial=start, disable=not (progress and ctx.is_main),
               desc=_run_kind(info), unit="it", dynamic_ncols=True)
    for iteration in range(start, config.iterations):
        loss, shown = loop.step(forward, iteration)
        loop.after_step(iteration + 1, loss, shown)
        bar.update(1)
        postfix = {}  # the mean loss of the last log row: reading this step's loss would sync the GPU
        if loop.last_loss is not None:
            postfix["loss"] = f"{loop.last_loss:.4f}"
        if loop.last_dice is not None:
            postfix["dice"] = f"{loop.last_dice:.3f}"
        bar.set_postfix(postfix, refresh=False)
        if on_iteration is not None:
            on_iteration(iteration + 1)
    bar.close()
    ctx.barrier()
    return info


def _write_run(run_dir: Path, model: UNet, info: RunInfo, metrics: MetricsLog, plot: bool = True) -> None:
    save_run(run_dir, model, info)
    metrics.write_csv(run_dir)
    if not plot:
        return
    metrics.plot(run_dir, _curves_title(info))


def _run_kind(info: RunInfo) -> str:
    """"source" for a plain-CE model trained from scratch, else its method (progress bars, plot titles)."""
    return "source" if info.source is None and info.method == PLAIN_METHOD else info.method


def _curves_title(info: RunInfo) -> str:
    return f"{_run_kind(info)}: {'+'.join(info.channels)} -> {', '.join(info.label_names[1:])}"


def _own_run_dir(lock: contextlib.ExitStack, run_dir: Path, ctx: DistContext, command: str) -> None:
    """Hold ``run_dir``'s lock (main rank) until ``lock`` closes: a second run on the same -o stops at once."""
    if ctx.is_main:
        lock.enter_context(folder_lock(run_dir, command))


def _prepare_run_dir(run_dir: Path, resume: bool, ctx: DistContext) -> Optional[Dict[str, Any]]:
    if resume:
        return load_train_state(run_dir)
    if ctx.is_main:
        if (run_dir / "run.json").exists():
            raise FileExistsError(f"{run_dir} already holds a run; choose another -o or pass --resume")
        if visible_entries(run_dir):
            raise FileExistsError(f"{run_dir} is not empty and holds no run (no run.json); "
                                  "choose a new or empty folder for -o")
        # The marker lets a study (or a later tool) remove this run folder, and nothing else.
        prepare_output_folder(run_dir, "train", [ALL_ENTRIES])
    return None


def _check_same_run(run_dir: Path, info: RunInfo) -> None:
    """Refuse a --resume whose task, data, source or model differ from the interrupted run's run.json."""
    try:
        saved = read_run_info(run_dir)
    except FileNotFoundError:
        raise ValueError(f"cannot resume {run_dir}: it has no run.json") from None
    differing = resume_differences(saved, info)
    if differing:
        raise ValueError(f"cannot resume {run_dir}: not the same run: " + "; ".join(differing))


def _digest_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _data_fingerprint(data: PreparedData) -> str:
    """Digest of exactly what is trained and validated on: slices, labels and the case split."""
    digest = hashlib.sha256()
    for tensor in (data.slices.images, data.slices.labels):
        array = np.ascontiguousarray(tensor.numpy())
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(memoryview(array).cast("B"))
    digest.update(repr((data.train_cases, data.val_cases)).encode())
    return digest.hexdigest()[:16]


def train(data_root: PathLike, task: TaskSpec, run_dir: PathLike, config: Optional[TrainConfig] = None,
          model: Optional[UNetConfig] = None, device: Optional[str] = None, resume: bool = False,
          progress: bool = True, sites: Any = None, on_iteration: Optional[IterationCallback] = None,
          augmentation: Optional[AugmentConfig] = None) -> RunInfo:
    """Train a source U-Net from scratch on ``task`` (a method with ``source_training`` in METHODS).

    Args:
        model: depth, width and norm of the U-Net (default ``UNetConfig()``); its in_channels and
            num_classes are taken from the task.
        augmentation: the transforms when ``config.augment`` (default ``AugmentConfig()``).

    Example:
        >>> from trmcore.data import parse_task
        >>> train("data/phantom", parse_task("T1", "CSF"), "runs/src",
        ...       TrainConfig(iterations=2000, freeze="none"), UNetConfig(depth=3, width=16))  # doctest: +SKIP
    """
    config = config or TrainConfig(freeze="none")
    if not get_method(config.method).source_training:
        raise ValueError(f"source training supports the methods {', '.join(source_method_names())}, "
                         f"got {config.method!r}")
    config = replace(config, freeze="none")
    run_dir = Path(run_dir)
    ctx = setup_distributed(device)
    lock = contextlib.ExitStack()
    try:
        _own_run_dir(lock, run_dir, ctx, "train")
        state = _prepare_run_dir(run_dir, resume, ctx)
        seed_everything(config.seed)
        model_config = replace(model or UNetConfig(), in_channels=len(task.channels),
                               num_classes=len(task.labels) + 1)
        if state is not None:
            _check_resume(run_dir, config, state)
        data = prepare_data(data_root, task, config, model_config.divisor, ctx, progress, sites)
        model_config = replace(model_config, in_channels=len(data.task_info.channels))
        network = UNet(model_config).to(ctx.device)
        info = _run_info(network, data, config, task, data_root, method=config.method, source=None,
                         augmentation=augmentation)
        if state is not None:
            _check_same_run(run_dir, info)
        weighting = create_weighting(config, network.config, data.slices, data.task_info.num_classes, ctx)
        return fit(network, weighting, data, config, run_dir, info, ctx, state, progress, on_iteration)
    finally:
        lock.close()
        ctx.close()


def finetune(data_root: PathLike, task: TaskSpec, source_run: PathLike, run_dir: PathLike,
             config: Optional[TrainConfig] = None, device: Optional[str] = None, resume: bool = False,
             progress: bool = True, reset_head: Optional[bool] = None, sites: Any = None,
             on_iteration: Optional[IterationCallback] = None,
             augmentation: Optional[AugmentConfig] = None, fold: str = "0") -> RunInfo:
    """Fine-tune the model of ``source_run`` on ``task`` with ``config.method`` (SPEC 5).

    ``source_run``: any kind of source (trmcore.training.sources): a trmcore run, an nnU-Net v2 2d
    result folder (``fold``) or a MONAI 2-D network. A foreign network is fine-tuned as it is (a new
    head for the target's classes, its encoder frozen where it has one) and recorded in run.json's
    ``network``, so ``trm export`` and ``trm predict`` take the run like any other; it slices along
    the source's axis and trains with the trmcore normalisation nearest to the source's
    (:func:`trmcore.training.sources.finetune_normalization`).

    The head is re-initialised (seeded) when the target has a different number
    of classes than the source, or when ``reset_head`` is True. The LEEP
    statistics of trm / trs-map use the source model's own head.

    Example:
        >>> finetune("data/phantom", parse_task("T2", "GM"), "runs/src", "runs/trm",
        ...          TrainConfig(method="trm", iterations=5000))  # doctest: +SKIP
    """
    config = config or TrainConfig(method=DEFAULT_METHOD)
    run_dir = Path(run_dir)
    ctx = setup_distributed(device)
    lock = contextlib.ExitStack()
    try:
        _own_run_dir(lock, run_dir, ctx, "finetune")
        state = _prepare_run_dir(run_dir, resume, ctx)
        # Any kind of source (trmcore.training.sources): a run, an nnU-Net 2d result folder, a MONAI network.
        loaded = load_source(source_run, SourceOptions(fold=str(fold), device=ctx.device, resample=config.resample))
        source, source_info = loaded.network, loaded.run_info
        foreign = loaded.record is not None  # an nnU-Net or MONAI network (or a run fine-tuned from one)
        if loaded.spatial_dims != 2:
            raise ValueError(f"source {source_run} is a 3-D network: trm finetune trains on 2-D slices (use a 2d "
                             "configuration); its risk maps and LEEP come from trm riskmap and trm rank")
        if foreign and config.risk_refresh > 0:  # --resume rebuilds refreshed maps with trmcore's U-Net
            raise ValueError(f"--risk-refresh is not supported with the {loaded.kind} source {source_run}")
        if source_info is None and config.axis != loaded.axis:  # the source's slicing, not the default's
            config = replace(config, axis=loaded.axis)
        if state is not None:
            _check_resume(run_dir, config, state)
        seed_everything(config.seed)
        normalization = source_info.normalization if source_info is not None else finetune_normalization(loaded)
        data = prepare_data(data_root, task, config, loaded.divisor, ctx, progress, sites, loaded.geometry,
                            normalization)
        if loaded.in_channels is not None and len(data.task_info.channels) != loaded.in_channels:
            raise ValueError(f"source {source_run} takes {loaded.in_channels} channel(s) "
                             f"{loaded.channels}; the target task has {data.task_info.channels}")
        num_classes = data.task_info.num_classes
        if not foreign:
            model = UNet(source_info.model).to(ctx.device)
            model.load_state_dict(source.state_dict())
            if reset_head or (reset_head is None and num_classes != source_info.num_classes):
                torch.manual_seed(config.seed)
                model.reset_head(num_classes)
        else:
            model = target_network(loaded, len(data.task_info.channels), num_classes, reset_head, config.seed)
        if config.freeze == "encoder":
            model.freeze_encoder()
        info = _run_info(model, data, config, task, data_root, method=config.method,
                         source=str(Path(source_run).resolve()), augmentation=augmentation)
        info.network = getattr(model, "record", None)
        info.source_fingerprint = _digest_file(loaded.weights_file)
        if state is not None:
            _check_same_run(run_dir, info)
        weighting = create_weighting(config, model.config, data.slices, num_classes, ctx, source)
        del source, loaded
        info.risk_diagnostics = weighting_diagnostics(
            weighting, data.slices, info.label_names, ctx, config.risk_base, model=model,
            denominator=loss_denominator(weighting.normalize, config, data.slices.labels))
        if info.risk_diagnostics is not None and ctx.is_main and (progress or info.risk_diagnostics["warnings"]):
            report_risk(info.risk_diagnostics, "trm risk maps of the training slices")
        return fit(model, weighting, data, config, run_dir, info, ctx, state, progress, on_iteration)
    finally:
        lock.close()
        ctx.close()


def _run_info(model: UNet, data: PreparedData, config: TrainConfig, task: TaskSpec, data_root: PathLike,
              method: str, source: Optional[str], augmentation: Optional[AugmentConfig] = None) -> RunInfo:
    augment = (augmentation or AugmentConfig()) if config.augment else None
    return RunInfo(model=model.config, channels=list(data.task_info.channels),
                   label_names=list(data.task_info.label_names), label_values=list(data.task_info.label_values),
                   axis=config.axis, divisor=model.config.divisor, method=method, source=source,
                   site=task.site, data=str(Path(data_root).resolve()), training=config,
                   train_cases=data.train_cases, val_cases=data.val_cases, data_fingerprint=_data_fingerprint(data),
                   split=data.split, augmentation=None if augment is None else augment.to_dict(),
                   mirror_axes=[] if augment is None else list(augment.trained_mirror_axes),
                   **_preprocessing_record(data.task_info, config.axis, model.config.divisor))


def _preprocessing_record(task_info, axis: int, divisor: int) -> Dict[str, Any]:
    """run.json's normalisation, orientation, spacing and the pipeline's steps: how the volumes were prepared."""
    from trmcore.data.pipeline import Pipeline

    geometry = task_info.geometry
    steps = Pipeline.standard(geometry, task_info.normalization, divisor, axis).record()
    record = {"normalization": task_info.normalization, "preprocessing": steps}
    if geometry is None or geometry.native:
        return {**record, "orientation": "native", "spacing": None}
    return {**record, "orientation": geometry.orientation,
            "spacing": None if geometry.spacing is None else list(geometry.spacing)}

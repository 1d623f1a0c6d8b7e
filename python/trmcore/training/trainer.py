"""One training loop for source training and the four fine-tuning methods (SPEC section 5).

``train`` fits a source model from scratch; ``finetune`` adapts a source run
to a target task. Both go through :func:`fit`, where the method only picks
the :class:`~trmcore.training.weighting.LossWeighting` (per-pixel weights and
normalisation of :func:`trmcore.ops.risk_weighted_ce`).

A frozen encoder runs under ``torch.no_grad``: its features are computed
without an autograd graph and only the decoder and head build one.

Run folder contents: model.safetensors + run.json (see checkpoint), metrics.csv,
curves.png and, while a run is unfinished, train_state.pt for ``resume=True``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from trmcore import ops
from trmcore.data import TaskSpec, few_shot, load_task_volumes, split_cases, volumes_to_slices
from trmcore.models import UNet, UNetConfig, freeze_encoder, is_encoder_frozen
from trmcore.training.checkpoint import (load_run, load_train_state, remove_train_state, save_run,
                                         save_train_state)
from trmcore.training.config import TrainConfig
from trmcore.training.distributed import DistContext, setup_distributed
from trmcore.training.evaluate import EvaluationResult, check_task_matches, evaluate_volumes
from trmcore.training.metrics import MetricsLog
from trmcore.training.runinfo import RunInfo
from trmcore.training.sampling import SliceSampler
from trmcore.training.weighting import (IGNORE_INDEX, LossWeighting, TrainingSlices, autocast_for,
                                        build_weighting)

PathLike = Union[str, Path]
IterationCallback = Callable[[int], None]
# Config fields that may change on --resume (everything else must match the interrupted run).
RESUMABLE_CHANGES = {"iterations", "val_every", "checkpoint_every"}


@dataclass
class PreparedData:
    """The task's slices and volumes, split by case."""

    slices: TrainingSlices
    val_volumes: list
    task_info: Any
    train_cases: List[str]
    val_cases: List[str]


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
        if is_encoder_frozen(self.model):
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
                 progress: bool = True, sites: Any = None) -> PreparedData:
    """Load the task, split it by case, cut the training volumes into slices and shard them."""
    volumes, task_info = load_task_volumes(data_root, task, progress=progress and ctx.is_main, sites=sites)
    if config.val_fraction > 0 and len(volumes) > 1:
        train_volumes, val_volumes = split_cases(volumes, config.val_fraction, seed=config.seed)
    else:
        train_volumes, val_volumes = list(volumes), []
    slice_set = volumes_to_slices(train_volumes, axis=config.axis, divisor=divisor, skip_empty=config.skip_empty)
    if config.few_shot is not None:
        slice_set = few_shot(slice_set, config.few_shot, seed=config.seed)
    if len(slice_set) < ctx.world_size:
        raise ValueError(f"{len(slice_set)} training slices cannot be shared by {ctx.world_size} processes")
    images = torch.from_numpy(np.ascontiguousarray(slice_set.images))
    labels = torch.from_numpy(np.ascontiguousarray(slice_set.labels)).long()
    shard = torch.arange(ctx.rank, len(slice_set), ctx.world_size)
    return PreparedData(TrainingSlices(images, labels, shard), val_volumes, task_info,
                        [v.case_id for v in train_volumes], [v.case_id for v in val_volumes])


def _check_resume(run_dir: Path, config: TrainConfig, state: Dict[str, Any]) -> None:
    saved = TrainConfig.from_dict(state["config"])
    differing = [k for k, v in config.to_dict().items()
                 if k not in RESUMABLE_CHANGES and saved.to_dict().get(k) != v]
    if differing:
        raise ValueError(f"cannot resume {run_dir}: settings differ from the interrupted run: "
                         + ", ".join(f"{k} {saved.to_dict().get(k)!r} -> {config.to_dict()[k]!r}" for k in differing))
    if state["iteration"] > config.iterations:
        raise ValueError(f"cannot resume {run_dir}: it already ran {state['iteration']} iterations "
                         f"> --iterations {config.iterations}")


def _validate(model: UNet, data: PreparedData, info: RunInfo, ctx: DistContext, batch_size: int,
              amp: bool) -> Optional[EvaluationResult]:
    if not data.val_volumes:
        return None
    return evaluate_volumes(model, data.val_volumes, info.label_names, info.axis, info.divisor, ctx.device,
                            batch_size=max(batch_size, 8), amp=amp)


def fit(model: UNet, weighting: LossWeighting, data: PreparedData, config: TrainConfig, run_dir: PathLike,
        info: RunInfo, ctx: DistContext, resume_state: Optional[Dict[str, Any]] = None, progress: bool = True,
        on_iteration: Optional[IterationCallback] = None) -> RunInfo:
    """Train ``model`` for ``config.iterations`` Adam steps and write the run folder (main rank).

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

    run_dir = Path(run_dir)
    device = ctx.device
    sampler = SliceSampler(len(data.slices.labels), config.batch_size, config.seed, ctx.rank, ctx.world_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr)
    half = device.type == "cuda" and config.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=half)
    metrics = MetricsLog(info.label_names[1:])
    start = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scaler.load_state_dict(resume_state["scaler"])
        metrics.rows = list(resume_state["history"])
        weighting.load_state_dict(resume_state.get("weighting", {}), lambda: UNet(model.config))
        _set_rng_state(resume_state["rng"])
        start = int(resume_state["iteration"])
    model.train()

    step: nn.Module = TrainStep(model)
    if ctx.distributed:
        step = nn.parallel.DistributedDataParallel(
            step, device_ids=[device.index] if device.type == "cuda" else None)

    log_every = max(1, min(50, config.val_every or config.iterations))
    elapsed_before = float(metrics.rows[-1]["elapsed_s"]) if metrics.rows else 0.0
    started = time.perf_counter()
    loss_sum, loss_count = 0.0, 0
    last_plot = started
    bar = tqdm(total=config.iterations, initial=start, disable=not (progress and ctx.is_main),
               desc=f"{info.method or 'source'}", unit="it", dynamic_ncols=True)
    last_dice: Optional[float] = metrics.rows[-1]["val_dice"] if metrics.rows else None

    for iteration in range(start, config.iterations):
        weighting.maybe_refresh(model, iteration)
        index = sampler.batch(iteration)
        images = data.slices.images[index].to(device, non_blocking=True)
        labels = data.slices.labels[index].to(device, non_blocking=True)
        weights = weighting.weights(index, labels)
        with autocast_for(device, config.amp):
            logits = step(images)
        loss = ops.risk_weighted_ce(logits.float(), labels, weights, ignore_index=IGNORE_INDEX,
                                    normalize=weighting.normalize)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss)} at iteration {iteration}; try a lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        done = iteration + 1
        loss_sum += float(loss.detach())
        loss_count += 1
        validate_now = done == config.iterations or (config.val_every and done % config.val_every == 0)
        checkpoint_now = validate_now or (config.checkpoint_every and done % config.checkpoint_every == 0)
        if validate_now or done % log_every == 0:
            result = None
            if validate_now and ctx.is_main:
                result = _validate(model, data, info, ctx, config.batch_size, config.amp)
            if ctx.is_main:
                metrics.add(done, loss_sum / loss_count, elapsed_before + time.perf_counter() - started,
                            None if result is None else result.mean,
                            None if result is None else result.mean_per_class)
            if result is not None:
                last_dice = result.mean
            loss_sum, loss_count = 0.0, 0
        if checkpoint_now:
            info.iterations_done = done
            info.val_dice = last_dice
            if ctx.is_main:
                # Curves are redrawn at most once a minute (and at the end): matplotlib is slow.
                plot = done == config.iterations or time.perf_counter() - last_plot > 60
                _write_run(run_dir, model, info, metrics, plot)
                last_plot = time.perf_counter() if plot else last_plot
                if done < config.iterations:
                    save_train_state(run_dir, {
                        "iteration": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(), "rng": _rng_state(), "history": metrics.rows,
                        "weighting": weighting.state_dict(), "config": config.to_dict()})
            ctx.barrier()
        bar.update(1)
        postfix = {"loss": f"{float(loss.detach()):.4f}"}
        if last_dice is not None:
            postfix["dice"] = f"{last_dice:.3f}"
        bar.set_postfix(postfix, refresh=False)
        if on_iteration is not None:
            on_iteration(done)
    bar.close()
    if ctx.is_main:
        remove_train_state(run_dir)
    ctx.barrier()
    return info


def _write_run(run_dir: Path, model: UNet, info: RunInfo, metrics: MetricsLog, plot: bool = True) -> None:
    save_run(run_dir, model, info)
    metrics.write_csv(run_dir)
    if not plot:
        return
    title = f"{info.method or 'source'}: {'+'.join(info.channels)} -> {', '.join(info.label_names[1:])}"
    metrics.plot(run_dir, title)


def _prepare_run_dir(run_dir: Path, resume: bool, ctx: DistContext) -> Optional[Dict[str, Any]]:
    if resume:
        return load_train_state(run_dir)
    if ctx.is_main:
        if (run_dir / "run.json").exists():
            raise FileExistsError(f"{run_dir} already holds a run; choose another -o or pass --resume")
        run_dir.mkdir(parents=True, exist_ok=True)
    return None


def train(data_root: PathLike, task: TaskSpec, run_dir: PathLike, config: Optional[TrainConfig] = None,
          depth: int = 4, width: int = 32, norm: str = "batch", device: Optional[str] = None,
          resume: bool = False, progress: bool = True, sites: Any = None,
          on_iteration: Optional[IterationCallback] = None) -> RunInfo:
    """Train a source U-Net from scratch on ``task`` (plain or class-weighted cross-entropy).

    Example:
        >>> from trmcore.data import parse_task
        >>> train("data/phantom", parse_task("T1", "CSF"), "runs/src",
        ...       TrainConfig(iterations=2000, freeze="none"))  # doctest: +SKIP
    """
    config = config or TrainConfig(freeze="none")
    if config.method not in (None, "vanilla", "class-weight"):
        raise ValueError(f"source training supports method None, 'vanilla' or 'class-weight', got {config.method!r}")
    config = replace(config, freeze="none")
    run_dir = Path(run_dir)
    ctx = setup_distributed(device)
    try:
        state = _prepare_run_dir(run_dir, resume, ctx)
        seed_everything(config.seed)
        model_config = UNetConfig(in_channels=len(task.channels), num_classes=len(task.labels) + 1,
                                  depth=depth, width=width, norm=norm)
        if state is not None:
            _check_resume(run_dir, config, state)
        data = prepare_data(data_root, task, config, model_config.divisor, ctx, progress, sites)
        model_config = replace(model_config, in_channels=len(data.task_info.channels))
        model = UNet(model_config).to(ctx.device)
        info = _run_info(model, data, config, task, data_root, method=config.method, source=None)
        weighting = build_weighting(config.method, None, data.slices, data.task_info.num_classes, ctx)
        return fit(model, weighting, data, config, run_dir, info, ctx, state, progress, on_iteration)
    finally:
        ctx.close()


def finetune(data_root: PathLike, task: TaskSpec, source_run: PathLike, run_dir: PathLike,
             config: Optional[TrainConfig] = None, device: Optional[str] = None, resume: bool = False,
             progress: bool = True, reset_head: Optional[bool] = None, sites: Any = None,
             on_iteration: Optional[IterationCallback] = None) -> RunInfo:
    """Fine-tune the model of ``source_run`` on ``task`` with ``config.method`` (SPEC 5).

    The head is re-initialised (seeded) when the target has a different number
    of classes than the source, or when ``reset_head`` is True. The LEEP
    statistics of trm / trs-map use the source model's own head.

    Example:
        >>> finetune("data/phantom", parse_task("T2", "GM"), "runs/src", "runs/trm",
        ...          TrainConfig(method="trm", iterations=5000))  # doctest: +SKIP
    """
    config = config or TrainConfig(method="trm")
    if config.method is None:
        raise ValueError("fine-tuning needs a method: one of vanilla, class-weight, trs-map, trm")
    run_dir = Path(run_dir)
    ctx = setup_distributed(device)
    try:
        state = _prepare_run_dir(run_dir, resume, ctx)
        if state is not None:
            _check_resume(run_dir, config, state)
        source, source_info = load_run(source_run, device=ctx.device)
        seed_everything(config.seed)
        data = prepare_data(data_root, task, config, source_info.divisor, ctx, progress, sites)
        if len(data.task_info.channels) != source_info.model.in_channels:
            raise ValueError(f"source run {source_run} takes {source_info.model.in_channels} channel(s) "
                             f"{source_info.channels}; the target task has {data.task_info.channels}")
        model = UNet(source_info.model).to(ctx.device)
        model.load_state_dict(source.state_dict())
        num_classes = data.task_info.num_classes
        if reset_head or (reset_head is None and num_classes != source_info.num_classes):
            torch.manual_seed(config.seed)
            model.reset_head(num_classes)
        if config.freeze == "encoder":
            freeze_encoder(model)
        weighting = build_weighting(config.method, source, data.slices, num_classes, ctx,
                                    risk_base=config.risk_base, risk_scope=config.risk_scope,
                                    risk_refresh=config.risk_refresh, trs_stride=config.trs_stride,
                                    batch_size=max(config.batch_size, 8), amp=config.amp)
        del source
        info = _run_info(model, data, config, task, data_root, method=config.method,
                         source=str(Path(source_run).resolve()))
        return fit(model, weighting, data, config, run_dir, info, ctx, state, progress, on_iteration)
    finally:
        ctx.close()


def _run_info(model: UNet, data: PreparedData, config: TrainConfig, task: TaskSpec, data_root: PathLike,
              method: Optional[str], source: Optional[str]) -> RunInfo:
    return RunInfo(model=model.config, channels=list(data.task_info.channels),
                   label_names=list(data.task_info.label_names), label_values=list(data.task_info.label_values),
                   axis=config.axis, divisor=model.config.divisor, method=method, source=source,
                   site=task.site, data=str(Path(data_root).resolve()), training=config,
                   train_cases=data.train_cases, val_cases=data.val_cases)

"""``trm demo``: the whole trmcore path on a generated phantom, in minutes on a CPU.

1. generate a two-site phantom (site-A clean, site-B with strong bias field, blur
   and a gamma nonlinearity);
2. train a source U-Net on site-A T1 tissue segmentation (CSF, GM, WM);
3. draw the transfer risk maps of the source model on the target task
   (site-B T2 CSF: another site and an inverted contrast, which transfers badly);
4. fine-tune with the frozen encoder, once with plain cross-entropy (vanilla)
   and once with transfer risk maps (trm), on a few-shot target training set;
   also train the target from scratch as the no-transfer reference;
5. evaluate every model on the held-out target volumes (3D Dice) and print a table,
   with the diagnostics of trm's risk maps beside it (per class mean risk, share above
   the midpoint, warnings when the map degenerates; trmcore.training.risk_diagnostics).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from trmcore.fileio import atomic_write_json, prepare_output_folder
from trmcore.models.config import UNetConfig
from trmcore.training.config import TrainConfig
from trmcore.training.methods import PLAIN_METHOD

# What a demo folder holds; --overwrite removes these (and only these) of an earlier demo.
DEMO_ENTRIES = ("data", "runs", "riskmaps", "results.json")


def _finetune_settings() -> TrainConfig:
    return TrainConfig(iterations=150, lr=1e-3, batch_size=8, few_shot=40, val_fraction=0.25, seed=0)


@dataclass
class DemoConfig:
    """Sizes of the demo, tuned to finish in a few minutes on 2 CPU cores.

    Attributes:
        cases, size: the two-site phantom.
        source_*, target_*: the source task (site-A T1 tissue) and the target task (site-B T2 CSF).
        model: the U-Net of the source and of the from-scratch reference (channels and classes from the task).
        training: the fine-tuning runs (iterations, lr, few-shot size, seed, held-out share); the
            source training uses the same settings with ``source_iterations`` and every slice.
    """

    cases: int = 12
    size: Tuple[int, int, int] = (48, 48, 16)
    source_channel: str = "T1"
    source_labels: str = "CSF,GM,WM"
    source_site: str = "site-A"
    target_channel: str = "T2"
    target_labels: str = "CSF"
    target_site: str = "site-B"
    model: UNetConfig = field(default_factory=lambda: UNetConfig(depth=3, width=16))
    training: TrainConfig = field(default_factory=_finetune_settings)
    source_iterations: int = 300

    def source_config(self) -> TrainConfig:
        """Source training: every slice, encoder trained, validated at the end."""
        return replace(self.training, iterations=self.source_iterations, few_shot=None, freeze="none",
                       val_every=self.source_iterations)

    def finetune_config(self, method: str) -> TrainConfig:
        """Fine-tuning with ``method``, validated at the end."""
        return replace(self.training, method=method, val_every=self.training.iterations)

    def scratch_config(self) -> TrainConfig:
        """The from-scratch reference: the fine-tuning settings, plain cross-entropy, nothing frozen."""
        return replace(self.finetune_config(PLAIN_METHOD), freeze="none")


def _step(message: str) -> float:
    print(f"\n== {message}", flush=True)
    return time.perf_counter()


def run_demo(out_dir: Union[str, Path], config: Optional[DemoConfig] = None, device: Optional[str] = None,
             overwrite: bool = False, progress: bool = True) -> Dict[str, dict]:
    """Run the demo into ``out_dir``; returns {model name: evaluation dict} and writes results.json."""
    from trmcore.data import make_phantom, parse_task
    from trmcore.training.evaluate import evaluate_run
    from trmcore.training.riskmap_files import write_risk_maps
    from trmcore.training.trainer import finetune, train

    config = config or DemoConfig()
    # --overwrite replaces only an earlier demo's entries, never a folder the demo did not make.
    out = prepare_output_folder(out_dir, "demo", DEMO_ENTRIES, overwrite=overwrite)
    started = time.perf_counter()

    _step(f"1/5 phantom: {config.cases} cases of {config.size} on 2 sites -> {out / 'data'}")
    data = make_phantom(out / "data", n_cases=config.cases, sites=["site-A", "site-B"], size=config.size,
                        seed=config.training.seed, progress=progress)
    source_task = parse_task(config.source_channel, config.source_labels, config.source_site)
    target_task = parse_task(config.target_channel, config.target_labels, config.target_site)
    runs = out / "runs"

    _step(f"2/5 source model: {source_task}, {config.source_iterations} iterations")
    train(data, source_task, runs / "source", config.source_config(), config.model, device=device,
          progress=progress)

    _step(f"3/5 transfer risk maps of the source on the target {target_task} -> {out / 'riskmaps'}")
    write_risk_maps(data, runs / "source", out / "riskmaps", config.target_channel, config.target_labels,
                    config.target_site, device=device, progress=progress)

    _step(f"4/5 fine-tuning on {config.training.few_shot} target slices, {config.training.iterations} iterations")
    for method in (PLAIN_METHOD, "trm"):
        print(f"-- {method}", flush=True)
        finetune(data, target_task, runs / "source", runs / method, config.finetune_config(method),
                 device=device, progress=progress)
    print("-- scratch (no transfer)", flush=True)
    train(data, target_task, runs / "scratch", config.scratch_config(), config.model, device=device,
          progress=progress)
    write_risk_maps(data, runs / "source", out / "riskmaps", config.target_channel, config.target_labels,
                    config.target_site, after_run=runs / "trm", device=device, progress=False, overwrite=True)

    _step("5/5 evaluation on the held-out target volumes (3D Dice)")
    from trmcore.training.runinfo import read_run_info

    held_out = read_run_info(runs / "trm").val_cases
    results = {}
    for name in ("scratch", "vanilla", "trm"):
        result = evaluate_run(runs / name, data, cases=held_out, device=device, progress=False)
        results[name] = result.to_dict()
        print(f"\n{name}:\n{result.table()}")
    print("\nsummary (mean 3D Dice on held-out target volumes):")
    for name in results:
        print(f"  {name:<8} {results[name]['mean']:.4f}")
    from trmcore.training.risk_diagnostics import summary_lines

    diagnostics = read_run_info(runs / "trm").risk_diagnostics
    if diagnostics is not None:
        print("\n" + "\n".join(summary_lines(diagnostics, "trm risk maps of the target training slices")))
    atomic_write_json(out / "results.json", {"config": asdict(config), "results": results,
                                             "risk_diagnostics": diagnostics}, overwrite=False)
    print(f"\ndone in {time.perf_counter() - started:.0f} s; runs in {runs}, risk maps in {out / 'riskmaps'}")
    return results

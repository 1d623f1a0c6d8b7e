"""Training curves: RUN/metrics.csv and RUN/curves.png."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from trmcore.fileio import atomic_write_bytes

METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"


class MetricsLog:
    """Rows of (iteration, loss, objective, lr, val_dice, val_dice_<class>..., elapsed_s), rewritten atomically.

    Example:
        >>> log = MetricsLog(["CSF"])
        >>> log.add(iteration=50, loss=0.3, elapsed_s=1.2)
        >>> log.rows[0]["loss"]
        0.3
    """

    def __init__(self, class_names: Sequence[str], rows: Optional[List[Dict[str, Any]]] = None) -> None:
        self.class_names = list(class_names)
        self.columns = ["iteration", "loss", "objective", "lr", "val_dice",
                        *[f"val_dice_{n}" for n in self.class_names], "elapsed_s"]
        self.rows: List[Dict[str, Any]] = list(rows or [])

    def add(self, iteration: int, loss: float, elapsed_s: float, val_dice: Optional[float] = None,
            val_dice_per_class: Optional[Dict[str, float]] = None, lr: Optional[float] = None,
            objective: Optional[float] = None) -> None:
        """One row: ``loss`` on the scale of mean cross-entropy, ``objective`` the optimised loss
        (None when they are the same), ``lr`` the learning rate of the row's last step."""
        row: Dict[str, Any] = {"iteration": iteration, "loss": loss, "objective": objective, "lr": lr,
                               "val_dice": val_dice, "elapsed_s": elapsed_s}
        for name in self.class_names:
            row[f"val_dice_{name}"] = None if val_dice_per_class is None else val_dice_per_class.get(name)
        self.rows.append(row)

    def write_csv(self, run_dir: Union[str, Path]) -> Path:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in self.columns})
        path = Path(run_dir) / METRICS_FILE
        atomic_write_bytes(path, buffer.getvalue().encode("utf-8"), overwrite=True)
        return path

    def plot(self, run_dir: Union[str, Path], title: str = "") -> Optional[Path]:
        """Loss, learning rate and validation Dice against iteration as a PNG (None when nothing to plot)."""
        if not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        iterations = [r["iteration"] for r in self.rows]
        losses = [r["loss"] for r in self.rows]
        validated = [r for r in self.rows if r.get("val_dice") is not None and not math.isnan(r["val_dice"])]
        fig, (ax_loss, ax_lr, ax_dice) = plt.subplots(1, 3, figsize=(14, 4))
        ax_loss.plot(iterations, losses, color="tab:blue")
        ax_loss.set_xlabel("iteration")
        ax_loss.set_ylabel("training loss (mean-CE scale)")
        ax_loss.set_yscale("log" if min(losses) > 0 else "linear")
        with_lr = [r for r in self.rows if r.get("lr") is not None]
        if with_lr:
            ax_lr.plot([r["iteration"] for r in with_lr], [r["lr"] for r in with_lr], color="tab:orange")
        ax_lr.set_xlabel("iteration")
        ax_lr.set_ylabel("learning rate")
        if validated:
            its = [r["iteration"] for r in validated]
            ax_dice.plot(its, [r["val_dice"] for r in validated], "k-o", label="mean", markersize=3)
            for name in self.class_names:
                values = [r.get(f"val_dice_{name}") for r in validated]
                if all(v is not None for v in values):
                    ax_dice.plot(its, values, "--", label=name)
            ax_dice.legend(fontsize=8)
        ax_dice.set_xlabel("iteration")
        ax_dice.set_ylabel("validation Dice (3D)")
        ax_dice.set_ylim(0, 1)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        path = Path(run_dir) / CURVES_FILE
        atomic_write_bytes(path, buffer.getvalue(), overwrite=True)
        return path

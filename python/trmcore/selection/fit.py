"""Fit the weights of ``d = alpha * W + beta * (1 - S)`` to measured transfers [SEQ].

Torch-free. A measured result is a path (tasks, last = target) and the Dice
reached on the target after transferring along it. Under weights (alpha, beta)
the path cost is linear in them (see :func:`trmcore.selection.path.path_cost`):

    cost = alpha * Wc + beta * Sc,  Wc = sum of W over the cost terms, Sc = sum of (1 - S)

A good distance makes cheap paths give high Dice, so the fit maximises
``-corr(cost, dice)`` (Pearson). The correlation does not change when both
weights are multiplied by a positive number, so only the direction counts:
(alpha, beta) = (cos t, sin t), t in [0, pi/2] (weights stay non-negative,
so d stays a distance), found by a 2001-point grid then a bounded scalar
refinement. The result is reported with the scale fixed at beta = 1 (or
alpha = 1 when the best beta is 0); path ranking and landmarks do not depend
on that scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from trmcore.fileio import atomic_write_json
from trmcore.schema import Float, Int, Object, read_csv_rows, read_json
from trmcore.selection.affinity import AffinityResult

GRID_POINTS = 2001


@dataclass(frozen=True)
class MeasuredPath:
    tasks: Tuple[str, ...]
    dice: float


@dataclass(frozen=True)
class WeightFit:
    """Fitted weights.

    Attributes:
        alpha, beta: fitted weights (scale: beta = 1, or alpha = 1 if beta = 0).
        correlation: Pearson corr(cost, Dice) at the fit (most negative reachable).
        default_correlation: the same with the affinity's weights before fitting.
        n_results: number of measured paths used.
    """

    alpha: float
    beta: float
    correlation: float
    default_correlation: float
    n_results: int

    def to_json(self) -> Dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta, "correlation": self.correlation,
                "default_correlation": self.default_correlation, "n_results": self.n_results}


def split_path(text: str) -> Tuple[str, ...]:
    """``"A,B,T"``, ``"A>B>T"`` or ``"A -> B -> T"`` -> task names."""
    for sep in ("->", ">", ","):
        if sep in text:
            parts = tuple(p.strip() for p in text.split(sep))
            break
    else:
        parts = (text.strip(),)
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"path {text!r} needs at least a source and a target task, e.g. 'A,B,TARGET'")
    return parts


def read_results(path: Path) -> List[MeasuredPath]:
    """CSV with header columns ``path`` and ``dice`` (other columns ignored)."""
    path = Path(path)
    try:
        rows = read_csv_rows(path, what="results CSV")
    except FileNotFoundError:
        raise FileNotFoundError(f"results file not found: {path}") from None
    header = rows[0] if rows else None
    if not header or "path" not in header or "dice" not in header:
        raise ValueError(f"{path}: needs a header with columns 'path' and 'dice', got {header}")
    column = {name: header.index(name) for name in ("path", "dice")}
    results = []
    for row_number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        cells = {name: row[k] if k < len(row) else None for name, k in column.items()}
        try:
            dice = float(cells["dice"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}:{row_number}: dice {cells['dice']!r} is not a number") from None
        if not math.isfinite(dice):
            raise ValueError(f"{path}:{row_number}: dice is not finite")
        results.append(MeasuredPath(split_path(cells["path"] or ""), dice))
    return results


def cost_terms(affinity: AffinityResult, tasks: Sequence[str]) -> Tuple[float, float]:
    """``(Wc, Sc)``: the path's cost is ``alpha * Wc + beta * Sc``."""
    index = [affinity.index(name) for name in tasks]
    pairs = [(a, b) for a, b in zip(index[:-1], index[1:]) if a != b] + [(index[0], index[-1])]
    return (sum(float(affinity.W[a, b]) for a, b in pairs), sum(1.0 - float(affinity.S[a, b]) for a, b in pairs))


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(xc @ xc) * float(yc @ yc))
    return float(xc @ yc / denom) if denom > 0 else 0.0


def fit_weights(affinity: AffinityResult, results: Sequence[MeasuredPath]) -> WeightFit:
    """Weights maximising ``-corr(cost, dice)`` over non-negative (alpha, beta).

    Raises:
        ValueError: fewer than 3 results, constant Dice, or a task not in the matrix.
    """
    from scipy.optimize import minimize_scalar

    if len(results) < 3:
        raise ValueError(f"fitting needs at least 3 measured paths, got {len(results)}")
    terms = np.array([cost_terms(affinity, r.tasks) for r in results])  # [R, 2]
    dice = np.array([r.dice for r in results])
    if np.ptp(dice) == 0:
        raise ValueError("all measured Dice values are equal: nothing to fit")
    if np.ptp(terms[:, 0]) == 0 and np.ptp(terms[:, 1]) == 0:
        raise ValueError("all measured paths have the same cost terms: nothing to fit")

    def objective(theta: float) -> float:
        return _corr(terms @ np.array([math.cos(theta), math.sin(theta)]), dice)

    grid = np.linspace(0.0, math.pi / 2, GRID_POINTS)
    values = np.array([objective(t) for t in grid])
    k = int(np.argmin(values))
    step = grid[1] - grid[0]
    refined = minimize_scalar(objective, bounds=(max(0.0, grid[k] - step), min(math.pi / 2, grid[k] + step)),
                              method="bounded", options={"xatol": 1e-12})
    theta = float(refined.x) if refined.fun <= values[k] else float(grid[k])
    for end in (0.0, math.pi / 2):  # prefer an exact end when it is as good (a weight of exactly 0)
        if objective(end) <= objective(theta) + 1e-12:
            theta = end
    alpha, beta = math.cos(theta), math.sin(theta)
    if beta > 1e-12:
        alpha, beta = alpha / beta, 1.0
    else:
        alpha, beta = 1.0, 0.0
    default = _corr(terms @ np.array([affinity.alpha, affinity.beta]), dice)
    return WeightFit(alpha, beta, objective(theta), default, len(results))


def save_fit(fit: WeightFit, directory: Path, overwrite: bool = True) -> Path:
    """Write ``DIR/fit.json`` (an existing one only with ``overwrite``)."""
    path = Path(directory) / "fit.json"
    atomic_write_json(path, fit.to_json(), overwrite=overwrite, indent=1)
    return path


def load_fit(directory: Path) -> WeightFit:
    path = Path(directory) / "fit.json"
    try:
        obj = read_json(path, FIT_JSON)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found (run `trm affinity fit {directory} --results CSV` first)") from None
    return WeightFit(obj["alpha"], obj["beta"], obj["correlation"], obj["default_correlation"], obj["n_results"])


#: The schema of fit.json (trmcore.schema); a correlation is NaN when the measured Dice do not vary.
FIT_JSON = Object({"alpha": Float(minimum=0), "beta": Float(minimum=0), "correlation": Float(-1, 1, allow_nan=True),
                   "default_correlation": Float(-1, 1, allow_nan=True), "n_results": Int(minimum=0)},
                  required=("alpha", "beta", "correlation", "default_correlation", "n_results"))

"""Task affinity of SPEC section 6 [SEQ]: image dissimilarity W, label similarity S, distance d.

Torch-free. For tasks a and b with sampled volumes ``a_1..a_K`` and ``b_1..b_K``:

    W(a, b) = mean_{i,j} Wasserstein1(pca(a_i), pca(b_j))
    S(a, b) = mean_{i,j} SSIM(label(a_i), label(b_j))
    d(a, b) = alpha * W(a, b) + beta * (1 - S(a, b))

Speed: each volume's resize and PCA are computed once (:class:`VolumeSignature`)
and reused for all its pairs, instead of once per pair; the SSIM cross moments
of all label volumes come from one chunked Gram matrix (BLAS, all cores); the
Wasserstein pairs run in a thread pool. :func:`affinity_reference` is the
straightforward per-pair computation, kept as the test oracle and benchmark
baseline.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from trmcore.fileio import atomic_write_json, atomic_write_text, make_folder
from trmcore.selection._blas import cpu_count, single_threaded_blas
from trmcore.selection.similarity import (
    PCA_OUTPUTS, SSIM_C, global_ssim, image_signature, label_intensity, resize_labels, ssim_from_moments, wasserstein_1d,
)
from trmcore.schema import AnyJson, Float, Int, JsonFileError, List as JsonList, Map, Object, read_json
from trmcore.selection.tasks import TASK_JSON, SelectionTask

DEFAULT_ALPHA = 0.0044
DEFAULT_BETA = 2.4756


@dataclass(frozen=True)
class AffinityConfig:
    """Settings of the affinity computation.

    Attributes:
        size: edge of the cube every volume is resized to (128 in [SEQ]; small in tests).
        samples: K, volumes sampled per task; pairs are K x K.
        variance: PCA explained variance kept (0.75).
        pca_output: ``"scores"`` (projected data, as the [SEQ] authors' code) or
            ``"components"`` (principal axes); see :func:`image_signature`.
        seed: sampling seed (each task's sample also depends on its name, not its order).
        alpha, beta: weights of d = alpha * W + beta * (1 - S).
        workers: threads (default: all cores).
        progress: show tqdm bars.
        resample: reorient every volume to RAS (False: as stored).
    """

    size: int = 128
    samples: int = 10
    variance: float = 0.75
    pca_output: str = "scores"
    seed: int = 0
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    workers: Optional[int] = None
    progress: bool = True
    resample: bool = True

    def __post_init__(self) -> None:
        if self.size < 2:
            raise ValueError(f"AffinityConfig.size must be >= 2, got {self.size}")
        if self.samples < 1:
            raise ValueError(f"AffinityConfig.samples must be >= 1, got {self.samples}")
        if not 0.0 < self.variance <= 1.0:
            raise ValueError(f"AffinityConfig.variance must be in (0, 1], got {self.variance}")
        if self.pca_output not in PCA_OUTPUTS:
            raise ValueError(f"AffinityConfig.pca_output must be one of {PCA_OUTPUTS}, got {self.pca_output!r}")

    @property
    def num_workers(self) -> int:
        return max(1, self.workers or cpu_count())


@dataclass
class TaskVolumes:
    """Raw sampled volumes of one task (what a loader yields).

    Attributes:
        task: the task.
        images: list of float ``[Cin, X, Y, Z]`` or ``[X, Y, Z]`` arrays.
        labels: list of integer ``[X, Y, Z]`` class maps (0..C-1), same order.
        n_cases: number of labelled training cases of the task (for landmarks).
    """

    task: SelectionTask
    images: List[np.ndarray]
    labels: List[np.ndarray]
    n_cases: int


@dataclass
class VolumeSignature:
    """What the pairs need of one volume, computed once.

    Attributes:
        components: float64 1-D sorted flattened PCA components.
        labels: uint8 ``[s, s, s]`` resized class map.
        num_classes: C of its task (labels scale to [0, 1] as class / (C - 1)).
    """

    components: np.ndarray
    labels: np.ndarray
    num_classes: int


@dataclass
class TaskSignatures:
    task: SelectionTask
    n_cases: int
    volumes: List[VolumeSignature]


def volume_signature(image: np.ndarray, labels: np.ndarray, num_classes: int, config: AffinityConfig) -> VolumeSignature:
    """Resize and PCA of one volume (the once-per-volume part)."""
    if num_classes > 256:
        raise ValueError(f"volume_signature: at most 256 classes supported, got {num_classes}")
    resized = resize_labels(np.asarray(labels), config.size)
    if resized.min() < 0 or resized.max() >= num_classes:
        raise ValueError(f"volume_signature: label values outside 0..{num_classes - 1}")
    return VolumeSignature(image_signature(image, config.size, config.variance, config.pca_output),
                           resized.astype(np.uint8), num_classes)


def sample_cases(cases: Sequence[str], task: SelectionTask, samples: int, seed: int) -> List[str]:
    """Seeded sample of ``min(samples, len(cases))`` case ids, stable under task reordering."""
    if not cases:
        raise ValueError(f"task {task.name}: no volumes to sample")
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
    chosen = rng.choice(len(cases), size=min(samples, len(cases)), replace=False)
    return [cases[i] for i in sorted(chosen)]


@dataclass
class AffinityResult:
    """The matrices over ``tasks`` (row/column order), symmetric.

    Attributes:
        tasks: the tasks; n_cases: labelled cases per task; n_sampled: volumes used per task.
        W: float64 ``[T, T]`` image dissimilarity; S: float64 ``[T, T]`` label similarity.
        alpha, beta: weights of ``d``.
    """

    tasks: List[SelectionTask]
    n_cases: List[int]
    n_sampled: List[int]
    W: np.ndarray
    S: np.ndarray
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    config: Dict[str, object] = field(default_factory=dict)

    @property
    def names(self) -> List[str]:
        return [task.name for task in self.tasks]

    @property
    def d(self) -> np.ndarray:
        """Task distance ``alpha * W + beta * (1 - S)``, float64 ``[T, T]``."""
        return task_distance(self.W, self.S, self.alpha, self.beta)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"task {name!r} is not in the affinity matrix (tasks: {self.names})") from None

    def with_weights(self, alpha: float, beta: float) -> "AffinityResult":
        return AffinityResult(self.tasks, self.n_cases, self.n_sampled, self.W, self.S, alpha, beta, self.config)

    def save(self, out_dir: Path, overwrite: bool = True) -> List[Path]:
        """Write W/S/d as CSV and ``affinity.json`` (an existing file only with ``overwrite``); the written paths."""
        out_dir = Path(out_dir)
        make_folder(out_dir)
        written = []
        for key, matrix in (("W", self.W), ("S", self.S), ("d", self.d)):
            path = out_dir / f"{key}.csv"
            _write_matrix_csv(path, self.names, matrix, overwrite)
            written.append(path)
        payload = {
            "tasks": [dict(task.to_json(), n_cases=n, n_sampled=k)
                      for task, n, k in zip(self.tasks, self.n_cases, self.n_sampled)],
            "alpha": self.alpha, "beta": self.beta,
            "W": self.W.tolist(), "S": self.S.tolist(), "d": self.d.tolist(),
            "config": self.config,
        }
        path = out_dir / "affinity.json"
        atomic_write_json(path, payload, overwrite=overwrite, indent=1)
        written.append(path)
        return written

    @classmethod
    def load(cls, directory: Path) -> "AffinityResult":
        """Read ``DIR/affinity.json`` written by :meth:`save`, checked against :data:`AFFINITY_JSON`."""
        path = Path(directory) / "affinity.json"
        try:
            obj = read_json(path, AFFINITY_JSON)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} not found (run `trm affinity DATA --tasks ... -o {directory}` first)") from None
        tasks = [SelectionTask.from_json(t) for t in obj["tasks"]]
        if len(set(tasks)) != len(tasks):
            raise JsonFileError(f"{path}: tasks: a task is listed twice")
        matrices = {}
        for key in ("W", "S"):
            matrix = np.asarray(obj[key], dtype=np.float64) if obj[key] else np.zeros((0, 0))
            if matrix.shape != (len(tasks), len(tasks)):
                rows = [len(row) for row in obj[key]]
                raise JsonFileError(f"{path}: {key}: expected a {len(tasks)} x {len(tasks)} matrix (a row and a "
                                    f"column per task), got {len(rows)} rows of {sorted(set(rows)) or [0]} values")
            matrices[key] = matrix
        return cls(tasks, [t["n_cases"] for t in obj["tasks"]], [t["n_sampled"] for t in obj["tasks"]],
                   matrices["W"], matrices["S"], obj["alpha"], obj["beta"], obj.get("config", {}))


#: The schema of affinity.json (trmcore.schema); ``d`` is recomputed from W, S, alpha and beta, not read.
AFFINITY_JSON = Object({
    "tasks": JsonList(Object({**TASK_JSON.fields, "n_cases": Int(minimum=0), "n_sampled": Int(minimum=0)},
                             required=TASK_JSON.required + ("n_cases", "n_sampled")), min_len=1),
    "alpha": Float(), "beta": Float(),
    "W": JsonList(JsonList(Float())), "S": JsonList(JsonList(Float())),
    "config": Map(AnyJson(finite=False)),
}, required=("tasks", "alpha", "beta", "W", "S"))


def task_distance(W: np.ndarray, S: np.ndarray, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA) -> np.ndarray:
    """``d = alpha * W + beta * (1 - S)`` (elementwise)."""
    return alpha * np.asarray(W) + beta * (1.0 - np.asarray(S))


def _write_matrix_csv(path: Path, names: Sequence[str], matrix: np.ndarray, overwrite: bool) -> None:
    lines = ["task," + ",".join(names)]
    lines += [name + "," + ",".join(f"{v:.10g}" for v in row) for name, row in zip(names, matrix)]
    atomic_write_text(path, "\n".join(lines) + "\n", overwrite=overwrite)


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="it", leave=False)


VolumePair = Tuple[np.ndarray, np.ndarray]


def compute_signatures(
    tasks: Sequence[SelectionTask],
    loaders: Sequence[Callable[[], Sequence[VolumePair]]],
    n_cases: Sequence[int],
    config: AffinityConfig,
) -> List[TaskSignatures]:
    """Load and summarise every sampled volume once; tasks run in parallel threads.

    Args:
        tasks: the tasks.
        loaders: one callable per task returning its sampled ``(image, labels)``
            pairs; called in a worker thread, so only ``workers`` tasks' raw
            volumes are in memory at a time (the signatures are small).
        n_cases: labelled cases per task.
    """
    def job(t: int) -> TaskSignatures:
        pairs = loaders[t]()
        if not pairs:
            raise ValueError(f"task {tasks[t].name}: no volumes")
        volumes = [volume_signature(image, labels, tasks[t].num_classes, config) for image, labels in pairs]
        return TaskSignatures(tasks[t], n_cases[t], volumes)

    with single_threaded_blas(), ThreadPoolExecutor(config.num_workers) as pool:
        return list(_progress(pool.map(job, range(len(tasks))), len(tasks), "task volumes", config.progress))


def _label_moments(signatures: Sequence[VolumeSignature], chunk: int = 1 << 16) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means, population variances and the cross-moment matrix E[a b] of all label volumes.

    One pass over voxel chunks; the Gram matrix of each chunk is a BLAS call
    on all cores (float32 products, float64 accumulation across chunks).
    """
    n = len(signatures)
    flat = [s.labels.reshape(-1) for s in signatures]
    scale = np.array([1.0 / (s.num_classes - 1) for s in signatures], dtype=np.float32)[:, None]
    voxels = flat[0].size
    gram = np.zeros((n, n), dtype=np.float64)
    sums = np.zeros(n, dtype=np.float64)
    block = np.empty((n, min(chunk, voxels)), dtype=np.float32)
    for start in range(0, voxels, chunk):
        stop = min(voxels, start + chunk)
        rows = block[:, : stop - start]
        for i, f in enumerate(flat):
            rows[i] = f[start:stop]
        rows *= scale
        gram += rows @ rows.T
        sums += rows.sum(axis=1, dtype=np.float64)
    means = sums / voxels
    cross = gram / voxels
    variances = np.clip(np.diag(cross) - means ** 2, 0.0, None)
    return means, variances, cross


def affinity_from_signatures(signatures: Sequence[TaskSignatures], config: AffinityConfig) -> AffinityResult:
    """W and S from precomputed signatures (every volume pair of every task pair)."""
    flat: List[VolumeSignature] = [v for t in signatures for v in t.volumes]
    offsets = np.cumsum([0] + [len(t.volumes) for t in signatures])
    means, variances, cross = _label_moments(flat)
    n_tasks = len(signatures)
    pairs = [(a, b) for a in range(n_tasks) for b in range(a, n_tasks)]

    def pair(ab: Tuple[int, int]) -> Tuple[float, float]:
        a, b = ab
        w_sum = s_sum = 0.0
        for i in range(offsets[a], offsets[a + 1]):
            for j in range(offsets[b], offsets[b + 1]):
                w_sum += wasserstein_1d(flat[i].components, flat[j].components)
                cov = cross[i, j] - means[i] * means[j]
                s_sum += ssim_from_moments(means[i], means[j], variances[i], variances[j], cov)
        count = (offsets[a + 1] - offsets[a]) * (offsets[b + 1] - offsets[b])
        return w_sum / count, s_sum / count

    W = np.zeros((n_tasks, n_tasks))
    S = np.zeros((n_tasks, n_tasks))
    with single_threaded_blas(), ThreadPoolExecutor(config.num_workers) as pool:
        values = list(_progress(pool.map(pair, pairs), len(pairs), "task pairs", config.progress))
    for (a, b), (w, s) in zip(pairs, values):
        W[a, b] = W[b, a] = w
        S[a, b] = S[b, a] = s
    return AffinityResult([t.task for t in signatures], [t.n_cases for t in signatures],
                          [len(t.volumes) for t in signatures], W, S, config.alpha, config.beta, _config_json(config))


def _config_json(config: AffinityConfig) -> Dict[str, object]:
    out = asdict(config)
    out.pop("progress")
    out.pop("workers")
    return out


def affinity_from_volumes(tasks: Sequence[TaskVolumes], config: AffinityConfig) -> AffinityResult:
    """The fast affinity of in-memory task samples (signatures once per volume)."""
    for entry in tasks:
        if len(entry.images) != len(entry.labels):
            raise ValueError(f"task {entry.task.name}: {len(entry.images)} images but {len(entry.labels)} label maps")
    loaders = [lambda entry=entry: list(zip(entry.images, entry.labels)) for entry in tasks]
    signatures = compute_signatures([t.task for t in tasks], loaders, [t.n_cases for t in tasks], config)
    return affinity_from_signatures(signatures, config)


def affinity_reference(tasks: Sequence[TaskVolumes], config: AffinityConfig) -> AffinityResult:
    """Straightforward per-pair affinity: resize and PCA both volumes of every pair, serially.

    ``config.workers`` is ignored (one thread).

    The test oracle and the benchmark baseline; same values as
    :func:`affinity_from_volumes` up to float rounding.
    """
    n_tasks = len(tasks)
    W = np.zeros((n_tasks, n_tasks))
    S = np.zeros((n_tasks, n_tasks))
    with single_threaded_blas():
        _reference_pairs(tasks, config, W, S)
    return AffinityResult([t.task for t in tasks], [t.n_cases for t in tasks], [len(t.images) for t in tasks],
                          W, S, config.alpha, config.beta, _config_json(config))


def _reference_pairs(tasks: Sequence[TaskVolumes], config: AffinityConfig, W: np.ndarray, S: np.ndarray) -> None:
    n_tasks = len(tasks)
    for a in range(n_tasks):
        for b in range(a, n_tasks):
            W[a, b], S[a, b] = reference_task_pair(tasks[a], tasks[b], config)
            W[b, a], S[b, a] = W[a, b], S[a, b]


def reference_task_pair(ta: TaskVolumes, tb: TaskVolumes, config: AffinityConfig) -> Tuple[float, float]:
    """(W, S) of one task pair the straightforward way: resize and PCA both volumes of every volume pair.

    One entry of :func:`affinity_reference` (the benchmark times it pair by pair).
    """
    w_values, s_values = [], []
    for image_a, labels_a in zip(ta.images, ta.labels):
        for image_b, labels_b in zip(tb.images, tb.labels):
            w_values.append(wasserstein_1d(
                image_signature(image_a, config.size, config.variance, config.pca_output),
                image_signature(image_b, config.size, config.variance, config.pca_output)))
            la = label_intensity(resize_labels(labels_a, config.size), ta.task.num_classes)
            lb = label_intensity(resize_labels(labels_b, config.size), tb.task.num_classes)
            s_values.append(global_ssim(la, lb, SSIM_C, SSIM_C))
    return float(np.mean(w_values)), float(np.mean(s_values))

"""Study profiles: how large the reproduction study is (torch-free).

A profile fixes everything that changes the numbers: the phantom datasets,
the U-Net, the iterations, the tasks of each table and the few-shot sizes.
``quick`` is sized for 2 CPU cores (well within an hour for every table with
one seed; ``quick500`` the same with 500 fine-tuning iterations), ``full`` follows the TRM paper (5000 iterations, lr 1e-4, 400 /
100 / 50 few-shot slices) and is meant for a GPU, ``tiny`` exists for the tests.

Example:
    >>> p = get_profile("quick")
    >>> p.training.iterations, p.few_shot_sizes
    (100, (96, 24, 12))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Optional, Tuple

from trmcore.models.config import UNetConfig
from trmcore.training.config import TrainConfig
from trmcore.training.methods import METHODS, PLAIN_METHOD, method_names

TISSUE_TASKS_PAPER = ("*/T1/CSF", "*/T1/GM", "*/T1/WM", "*/T2/CSF", "*/T2/GM", "*/T2/WM")


@dataclass(frozen=True)
class PhantomSpec:
    """A generated dataset: ``n_cases`` cases of ``size`` voxels over ``sites`` (built-in phantom sites)."""

    n_cases: int
    size: Tuple[int, int, int]
    sites: Tuple[str, ...]
    tumour: bool = False
    seed: int = 0


@dataclass(frozen=True)
class StudyProfile:
    """Sizes and tasks of one reproduction study.

    Task names are ``SITE/CHANNEL/LABELS`` (``*`` = every case), as in ``trm path``.

    Attributes:
        name: quick, full or tiny.
        tissue_data, tumour_data: the phantoms generated when no real dataset is given.
        model: U-Net depth and width of every source model (channels and classes come from the task).
        training: the settings of every fine-tuning run (iterations, Adam lr, batch size, held-out share
            val_fraction on which 3D Dice is measured); each job sets its seed, method and few-shot size.
        source_iterations: source training runs ``training`` with this many iterations, encoder trained.
        methods: fine-tuning methods of Tables I and II (SPEC 5), names of the METHODS registry.
        table1_tasks: binary tissue tasks; every one is a source and every other a target.
        table2_tasks: 4-class tumour tasks (labels NCR+ED+ET), same grid.
        few_shot_pairs: (source, target) pairs of Table III; few_shot_sizes its training-set sizes.
        few_shot_methods: the methods of Table III (vanilla vs trm in the paper).
        seq_tasks: the task graph of the sequential-transfer comparison; seq_targets its targets
            (default: every seq task); seq_shots target training slices; seq_method the method of every hop;
            seq_communities the Girvan-Newman communities of the source tasks (SPEC 6: 9, fewer on small
            graphs; with one task per community no path has an intermediate task).
        fig2_pairs: (source, target) pairs drawn as Fig. 2 (risk maps before / after trm fine-tuning).
        affinity_size, affinity_samples: resize cube and K of the task affinity (SPEC 6).
        threads: torch CPU threads per worker process.
        sampling_variants: foreground shares run besides the default (TrainConfig.foreground_share)
            as extra columns of every method in Tables I-III (0 = uniform batches).
        normalize_variants: trm loss denominators run besides the default (TrainConfig.trm_normalize)
            as extra trm columns ("batch" = TRM Eq. 7 as published).
        tumour_source_iterations: source training of the tumour tasks (None: source_iterations).
        scaling_variants: trm risk scalings run besides the default ("minmax") as extra trm columns,
            e.g. ("robust",); none by default (each variant adds a column to every table).
    """

    name: str
    tissue_data: PhantomSpec
    tumour_data: PhantomSpec
    model: UNetConfig
    training: TrainConfig
    source_iterations: int
    methods: Tuple[str, ...]
    table1_tasks: Tuple[str, ...]
    table2_tasks: Tuple[str, ...]
    few_shot_pairs: Tuple[Tuple[str, str], ...]
    few_shot_sizes: Tuple[int, ...]
    seq_tasks: Tuple[str, ...]
    seq_shots: Optional[int]
    fig2_pairs: Tuple[Tuple[str, str], ...]
    few_shot_methods: Tuple[str, ...] = (PLAIN_METHOD, "trm")
    seq_targets: Optional[Tuple[str, ...]] = None
    seq_method: str = PLAIN_METHOD
    seq_communities: int = 2
    affinity_size: int = 32
    affinity_samples: int = 5
    threads: int = 1
    notes: Tuple[str, ...] = field(default_factory=tuple)
    sampling_variants: Tuple[float, ...] = (0.0,)
    normalize_variants: Tuple[str, ...] = ("batch",)
    tumour_source_iterations: Optional[int] = None
    scaling_variants: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (*self.methods, *self.few_shot_methods, self.seq_method):
            if name not in METHODS:
                raise ValueError(f"profile {self.name!r}: unknown method {name!r}; choose from {', '.join(METHODS)}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


_CROSS_MODALITY_PAIRS = (("*/T1/CSF", "*/T2/CSF"), ("*/T1/GM", "*/T2/GM"), ("*/T1/WM", "*/T2/WM"),
                         ("*/T2/CSF", "*/T1/CSF"), ("*/T2/GM", "*/T1/GM"), ("*/T2/WM", "*/T1/WM"))
_TUMOUR_SITES = ("site-A", "site-B", "site-C", "site-D")
# The six FeTS tasks of TRM Table II (13-T1, 14-T1, 14-T2, 14-FLAIR, 17-T2, 18-FLAIR), with the four
# phantom sites standing in for the partitions 13, 14, 17 and 18.
_TUMOUR_TASKS = ("site-A/T1/NCR+ED+ET", "site-B/T1/NCR+ED+ET", "site-B/T2/NCR+ED+ET",
                 "site-B/FLAIR/NCR+ED+ET", "site-C/T2/NCR+ED+ET", "site-D/FLAIR/NCR+ED+ET")

QUICK = StudyProfile(
    name="quick",
    tissue_data=PhantomSpec(n_cases=12, size=(32, 32, 16), sites=("site-A",)),
    tumour_data=PhantomSpec(n_cases=24, size=(48, 48, 24), sites=_TUMOUR_SITES, tumour=True),
    model=UNetConfig(depth=3, width=8),
    training=TrainConfig(iterations=100, lr=1e-3, batch_size=8, val_fraction=0.25),
    source_iterations=200,
    methods=method_names(),
    table1_tasks=TISSUE_TASKS_PAPER,
    table2_tasks=_TUMOUR_TASKS,
    few_shot_pairs=_CROSS_MODALITY_PAIRS,
    few_shot_sizes=(96, 24, 12),
    seq_tasks=TISSUE_TASKS_PAPER,
    seq_shots=12,
    fig2_pairs=(("*/T1/CSF", "*/T2/CSF"), ("*/T1/WM", "*/T2/GM")),
    tumour_source_iterations=1000,
    notes=("tissue images 32 x 32 x 16, tumour images 48 x 48 x 24 (the tumour is too small at 32 x 32), U-Net depth 3 / width 8, lr 1e-3, 200 source and 100 "
           "fine-tuning iterations instead of the paper's 5000 at lr 1e-4",
           "few-shot sizes 96 / 24 / 12 slices keep the paper's 8 : 2 : 1 ratio of 400 / 100 / 50; "
           "the phantom's 9 training volumes give 107 slices with brain",
           "tumour source models train 1000 iterations (200 left them at 0.00-0.25 Dice)",
           "every method is also run with uniform batches, and trm also with TRM Eq. 7 as published"),
)

# QUICK with five times the fine-tuning (the >= 500-iteration columns of issue 14).
QUICK500 = replace(QUICK, name="quick500", training=replace(QUICK.training, iterations=500),
                   notes=QUICK.notes + ("500 fine-tuning iterations instead of quick's 100",))

# The paper's settings on the same task grid as QUICK (dataclasses.replace keeps QUICK's task lists).
FULL = replace(
    QUICK,
    name="full",
    tissue_data=PhantomSpec(n_cases=10, size=(128, 128, 64), sites=("site-A",)),
    tumour_data=PhantomSpec(n_cases=40, size=(128, 128, 64), sites=_TUMOUR_SITES, tumour=True),
    model=UNetConfig(depth=4, width=32),
    training=replace(QUICK.training, iterations=5000, lr=1e-4, val_fraction=0.2),
    source_iterations=5000, tumour_source_iterations=None,
    few_shot_sizes=(400, 100, 50),
    seq_shots=50,
    affinity_size=128, affinity_samples=10, threads=0,
    notes=("as the TRM paper: 5000 iterations, Adam lr 1e-4, U-Net depth 4 / width 32, 400 / 100 / 50 slices",),
)

TINY = StudyProfile(
    name="tiny",
    tissue_data=PhantomSpec(n_cases=6, size=(32, 32, 8), sites=("site-A",)),
    tumour_data=PhantomSpec(n_cases=6, size=(32, 32, 16), sites=("site-A", "site-B"), tumour=True),
    model=UNetConfig(depth=2, width=4),
    training=TrainConfig(iterations=3, lr=1e-3, batch_size=4, val_fraction=0.34),
    source_iterations=4,
    methods=(PLAIN_METHOD, "trm"),
    table1_tasks=("*/T1/CSF", "*/T2/CSF"),
    table2_tasks=("site-A/T1/NCR+ED+ET", "site-B/T2/NCR+ED+ET"),
    few_shot_pairs=(("*/T1/CSF", "*/T2/CSF"),),
    few_shot_sizes=(8, 4),
    seq_tasks=("*/T1/CSF", "*/T2/CSF", "*/T1/GM"),
    seq_targets=("*/T2/CSF",),
    seq_shots=4,
    fig2_pairs=(("*/T1/CSF", "*/T2/CSF"),),
    affinity_size=16, affinity_samples=2, seq_communities=1, tumour_source_iterations=5,
    notes=("test-sized: a few iterations; the numbers mean nothing",),
)

PROFILES: Dict[str, StudyProfile] = {p.name: p for p in (QUICK, QUICK500, FULL, TINY)}
# The profile of `reproduce()` and `trm reproduce` when none is given.
DEFAULT_PROFILE = QUICK.name


def get_profile(name: str) -> StudyProfile:
    """The built-in profile ``name`` (quick, full, tiny); ValueError for any other."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]

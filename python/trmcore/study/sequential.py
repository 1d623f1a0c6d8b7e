"""Plans of the sequential-transfer comparison: the task affinity and the path of ``trm path`` per target.

The affinity (SPEC 6) of the profile's ``seq_tasks`` is computed once and
kept in ``DIR/affinity/`` (W.csv, S.csv, d.csv, affinity.json); a rerun reads
it back. Each target's :class:`~trmcore.selection.path.PathSelection` is written
to ``DIR/affinity/path_<target>.json``. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence, Union

from trmcore.fileio import atomic_write_json
from trmcore.study.grid import SeqPlan
from trmcore.study.profiles import StudyProfile

PathLike = Union[str, Path]


def task_affinity(data_root: PathLike, tasks: Sequence[str], profile: StudyProfile, out_dir: PathLike,
                  progress: bool = False):
    """The :class:`~trmcore.selection.affinity.AffinityResult` of ``tasks``, computed once into ``out_dir``."""
    from trmcore.selection import AffinityConfig, AffinityResult
    from trmcore.selection.dataset import affinity_from_dataset
    from trmcore.selection.tasks import parse_task_name

    out = Path(out_dir)
    selection_tasks = [parse_task_name(t, source="seq_tasks") for t in tasks]
    names = [t.name for t in selection_tasks]
    if (out / "affinity.json").is_file():
        try:
            cached = AffinityResult.load(out)
            if cached.names == names:
                return cached
        except (ValueError, KeyError, json.JSONDecodeError):
            pass  # unreadable: compute again below
    config = AffinityConfig(size=profile.affinity_size, samples=profile.affinity_samples, progress=progress)
    result = affinity_from_dataset(data_root, selection_tasks, config)
    result.save(out)
    return result


def plan_paths(data_root: PathLike, profile: StudyProfile, out_dir: PathLike, progress: bool = False) -> List[SeqPlan]:
    """For each target: the path chosen as ``trm path`` does, every direct source, the nearest source.

    The chosen path is the cheapest one with an intermediate task ([SEQ]); when the
    task graph offers none, it is the direct path (then path and direct transfer coincide).
    """
    from trmcore.selection import select_paths

    affinity = task_affinity(data_root, profile.seq_tasks, profile, out_dir, progress)
    targets = profile.seq_targets or profile.seq_tasks
    unknown = [t for t in targets if t not in profile.seq_tasks]
    if unknown:
        raise ValueError(f"seq_targets {unknown} are not among the seq_tasks {list(profile.seq_tasks)}")
    # Selection names are the canonical spelling; map them back to the profile's (the grid keys use those).
    spelled = dict(zip(affinity.names, profile.seq_tasks))
    canonical = {v: k for k, v in spelled.items()}
    plans = []
    for target_name in targets:
        target = canonical[target_name]
        selection = select_paths(affinity, target, num_communities=min(profile.seq_communities, len(spelled) - 1))
        atomic_write_json(Path(out_dir) / f"path_{target.replace('/', '_').replace('*', 'all')}.json",
                          selection.to_json(), overwrite=True, indent=1)
        direct = [c for c in selection.candidates if c.hops == 1]
        plans.append(SeqPlan(
            target=target_name,
            path=tuple(spelled[t] for t in selection.chosen.tasks),
            direct_sources=tuple(spelled[n] for n in affinity.names if n != target),
            nearest_source=spelled[direct[0].tasks[0]],
            path_cost=float(selection.chosen.cost),
        ))
    return plans

"""Risk maps as files: NIfTI volumes and the image | label | T | R panels of TRM Fig. 2.

``write_risk_maps`` is ``trm riskmap``: it loads the runs and the task, checks
the outputs, then computes (:func:`compute_risk_maps`, through
:func:`trmcore.training.riskmap.risk_volumes`), writes (:func:`write_risk_map_files`)
and plots (:func:`plot_risk_maps`), passing the :class:`RiskMapSettings` whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from trmcore.fileio import check_output_plan, save_figure, save_image
from trmcore.ops import RISK_BASE
from trmcore.training.risk_diagnostics import panel_caption, write_volume_diagnostics
from trmcore.training.riskmap import RiskMapSettings, RiskVolumes, risk_volumes


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Union[str, Path], header=None,
               overwrite: bool = False) -> Path:
    """float32 NIfTI; with ``header`` (the input's) its qform/sform codes and units are kept.

    Written atomically, never through a link; FileExistsError if it exists without ``overwrite``.
    """
    import nibabel as nib

    if header is not None:
        header = nib.Nifti1Header.from_header(header)
        header.set_slope_inter(1.0, 0.0)  # the input's intensity scaling means nothing for a map
    image = nib.Nifti1Image(np.asarray(array, np.float32), np.asarray(affine, np.float64), header=header)
    image.set_data_dtype(np.float32)
    if header is None:
        image.header.set_xyzt_units("mm")
    return save_image(image, path, overwrite=overwrite)


def pick_slice(label: np.ndarray, axis: int) -> int:
    """The slice along ``axis`` with the most foreground voxels (the middle one if there is none)."""
    counts = (label > 0).sum(axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(counts)) if counts.max() > 0 else label.shape[axis] // 2


def plot_panel(volume, before: RiskVolumes, after: Optional[RiskVolumes], axis: int, slice_index: int,
               path: Union[str, Path], base: float = RISK_BASE, titles: Sequence[str] = ("source", "fine-tuned"),
               diagnostics: Sequence[Optional[dict]] = (), overwrite: bool = False) -> Path:
    """PNG: image | label | transferability | risk, one row for the source model, one after fine-tuning.

    ``diagnostics``: per row, a risk_diagnostics summary shown under the row (per-class mean risk,
    share above the midpoint, warnings).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    take = lambda a: np.take(a, slice_index, axis=axis).T  # noqa: E731  (rows = Y, radiological-ish view)
    rows = [(titles[0], before)] + ([(titles[1], after)] if after is not None else [])
    fig, axes = plt.subplots(len(rows), 4, figsize=(13, 3.3 * len(rows)), squeeze=False)
    image = take(volume.image[0])
    label = take(volume.label)
    leep_low = min(float(r.transferability.min()) for _, r in rows)
    for row, (name, maps) in enumerate(rows):
        panels = [
            (image, "gray", None, None, "image"),
            (label, "tab10", 0, 9, "label"),
            (take(maps.transferability), "viridis", leep_low, 0.0, f"{name}: transferability (log EEP)"),
            (take(maps.risk), "inferno", 1.0, base, f"{name}: risk map"),
        ]
        for col, (data, cmap, vmin, vmax, title) in enumerate(panels):
            ax = axes[row][col]
            shown = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
            if col >= 2:
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        summary = diagnostics[row] if row < len(diagnostics) else None
        if summary is not None:
            text = "risk: " + panel_caption(summary) + "".join(f"\nWARNING {w.split(':')[0]}" for w in summary["warnings"])
            axes[row][3].text(0.5, -0.08, text, transform=axes[row][3].transAxes, ha="center", va="top", fontsize=7,
                              color="darkred" if summary["warnings"] else "black", wrap=True)
    fig.suptitle(f"{volume.case_id}, slice {slice_index} (axis {axis})")
    fig.tight_layout()
    try:
        path = save_figure(fig, path, overwrite=overwrite, dpi=100)
    finally:
        plt.close(fig)
    return path


@dataclass
class RiskMaps:
    """The maps of a source run (and a fine-tuned run) on a task's volumes, on the working grid.

    ``before``/``after``: per volume (``after`` None without a fine-tuned run); ``axis``: the
    source run's slicing axis (the panels cut along it); ``runs``: the runs' folders, for captions.
    """

    volumes: List[Any]
    label_names: List[str]
    axis: int
    settings: RiskMapSettings
    before: List[RiskVolumes]
    after: Optional[List[RiskVolumes]]
    runs: Tuple[Union[str, Path], Optional[Union[str, Path]]]


def output_names(case_id: str, with_after: bool) -> List[str]:
    """The files of one case, in the order :func:`write_risk_maps` writes them."""
    after = [f"{case_id}_transferability_after.nii.gz", f"{case_id}_risk_after.nii.gz"] if with_after else []
    return [f"{case_id}_transferability.nii.gz", f"{case_id}_risk.nii.gz"] + after + [f"{case_id}.png"]


def compute_risk_maps(source, source_info, volumes, task_info, device, settings: RiskMapSettings,
                      source_run: Union[str, Path], after_run: Optional[Union[str, Path]] = None,
                      progress: bool = True) -> RiskMaps:
    """The maps of the loaded ``source`` model (and of ``after_run``'s, loaded here) on ``volumes``.

    The source model's own head defines the dummy labels (Z outputs), whatever the target label
    set; ``after_run`` (a fine-tuned run) is scored with its head.
    """
    from trmcore.training.checkpoint import load_run

    num_classes = task_info.num_classes
    if getattr(source_info, "spatial_dims", 2) == 3:  # a 3-D source (nnU-Net 3d): whole volumes, not slices
        from trmcore.training.riskmap3d import risk_volumes_3d

        before = risk_volumes_3d(source, volumes, num_classes, source_info.divisors, device, settings,
                                 progress=progress)
    else:
        before = risk_volumes(source, volumes, num_classes, source_info.axis, source_info.divisor, device,
                              settings, progress=progress)
    after = None
    if after_run is not None:
        tuned, tuned_info = load_run(after_run, device=device)
        if tuned_info.model.in_channels != len(task_info.channels):
            raise ValueError(f"run {after_run} takes {tuned_info.model.in_channels} channel(s), "
                             f"the task gives {task_info.channels}")
        after = risk_volumes(tuned, volumes, num_classes, tuned_info.axis, tuned_info.divisor, device, settings,
                             progress=progress)
    return RiskMaps(list(volumes), list(task_info.label_names), source_info.axis, settings, before, after,
                    (source_run, after_run))


def write_risk_map_files(out_dir: Union[str, Path], maps: RiskMaps, overwrite: bool = False,
                         show: bool = True) -> Tuple[List[Path], dict]:
    """risk_diagnostics.json and each case's NIfTI maps; returns (the files, the diagnostics).

    Maps are written on each case's stored grid (its own affine and header), like every output.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    after = maps.after if maps.after is not None else [None] * len(maps.volumes)
    path, diagnostics = write_volume_diagnostics(
        out_dir, [m.risk for m in maps.before], None if maps.after is None else [m.risk for m in maps.after],
        [v.label for v in maps.volumes], maps.label_names, maps.settings.base, maps.settings.to_dict(),
        (f"risk map of {maps.runs[0]}", f"risk map of {maps.runs[1]}"), show=show)
    written = [path]
    for volume, before, tuned in zip(maps.volumes, maps.before, after):
        files = iter(out_dir / name for name in output_names(volume.case_id, maps.after is not None))
        native = volume.grid.to_native if volume.grid is not None else (lambda a, mode: a)
        affine = volume.grid.native_affine if volume.grid is not None else volume.affine
        for case_maps in (before, tuned):
            if case_maps is None:
                continue
            for array in (case_maps.transferability, case_maps.risk):
                written.append(save_nifti(native(array, "linear"), affine, next(files), volume.header, overwrite))
    return written, diagnostics


def plot_risk_maps(out_dir: Union[str, Path], maps: RiskMaps, diagnostics: Optional[dict] = None,
                   overwrite: bool = False) -> List[Path]:
    """CASE.png per case: the Fig. 2 panel of its slice with the most foreground (captioned with ``diagnostics``)."""
    diagnostics = diagnostics or {}
    after = maps.after if maps.after is not None else [None] * len(maps.volumes)
    written = []
    for volume, before, tuned in zip(maps.volumes, maps.before, after):
        slice_index = pick_slice(volume.label, maps.axis)
        written.append(plot_panel(volume, before, tuned, maps.axis, slice_index,
                                  Path(out_dir) / f"{volume.case_id}.png", maps.settings.base, overwrite=overwrite,
                                  diagnostics=(diagnostics.get("before"), diagnostics.get("after"))))
    return written


def write_risk_maps(data_root: Union[str, Path], source_run: Union[str, Path], out_dir: Union[str, Path],
                    channel: Optional[str] = None, labels: Optional[str] = None, site: Optional[str] = None,
                    after_run: Optional[Union[str, Path]] = None, cases: Optional[Sequence[str]] = None,
                    settings: RiskMapSettings = RiskMapSettings(), device: Optional[str] = None,
                    progress: bool = True, sites=None, resample: bool = True, overwrite: bool = False,
                    fold: str = "0") -> List[Path]:
    """``trm riskmap``: load, check the outputs, then :func:`compute_risk_maps`, :func:`write_risk_map_files`
    and :func:`plot_risk_maps`.

    Writes CASE_transferability.nii.gz, CASE_risk.nii.gz (and *_after) and CASE.png per case, and
    risk_diagnostics.json: per target class the mean risk and the share of voxels above the
    midpoint, and warnings when a map degenerates (trmcore.training.risk_diagnostics), over all cases
    on the working grid, for the source ("before") and the fine-tuned run ("after"); printed too.
    ``settings``: how T becomes R (base, scope, scaling, quantile).

    Volumes are loaded on the source run's grid (``resample=False``: as
    stored); the maps are written back on each case's stored grid.
    Every file is written atomically and never through a symbolic link; existing
    outputs are refused (before the maps are computed) unless ``overwrite``.
    ``source_run`` is any kind of source (trmcore.training.sources: a run, an nnU-Net result folder
    with ``fold``, a MONAI network), loaded on its own grid and normalisation.
    Returns the files: risk_diagnostics.json, the NIfTI maps, then the panels.
    """
    from trmcore.training.sources import load_source_task

    source_info, volumes, task_info, resolved = load_source_task(
        source_run, data_root, channel, labels, site, cases=cases, device=device, progress=progress,
        sites=sites, resample=resample, fold=fold)
    source = source_info.network
    out_dir = Path(out_dir)
    # The whole plan before computing anything: no two outputs on one file (case X's X_risk.nii.gz and
    # case X_risk's ...), none on an input (a label or channel file when -o is inside the dataset).
    plan = [(out_dir / "risk_diagnostics.json", "the risk diagnostics")]
    plan += [(out_dir / name, f"a map of case {volume.case_id!r}")
             for volume in volumes for name in output_names(volume.case_id, after_run is not None)]
    runs = list(source_info.files) + ([Path(after_run) / name for name in ("run.json", "model.safetensors")]
                                      if after_run is not None else [])
    check_output_plan(plan, overwrite=overwrite, inputs=_input_files(data_root, task_info, volumes, sites) + runs)
    maps = compute_risk_maps(source, source_info, volumes, task_info, resolved, settings, source_run, after_run,
                             progress)
    written, diagnostics = write_risk_map_files(out_dir, maps, overwrite, show=progress)
    return written + plot_risk_maps(out_dir, maps, diagnostics, overwrite)


def _input_files(data_root, task_info, volumes, sites) -> List[Path]:
    """The channel and label files of the loaded cases: outputs must never land on them."""
    from trmcore.data.layout import DatasetLayout

    layout = DatasetLayout.read(data_root, sites=sites)
    files = []
    for volume in volumes:
        files += [layout.image_path(volume.case_id, k) for k in task_info.channel_indices]
        files.append(layout.label_path(volume.case_id))
    return files

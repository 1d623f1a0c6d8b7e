"""Risk maps as files: NIfTI volumes and the image | label | T | R panels of TRM Fig. 2.

``write_risk_maps`` is ``trm riskmap``: it loads the runs and the task, asks
:func:`trmcore.training.riskmap.risk_volumes` for the maps and writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from trmcore.fileio import check_output_plan, save_figure, save_image
from trmcore.training.risk_diagnostics import panel_caption, write_volume_diagnostics
from trmcore.training.riskmap import RiskVolumes, risk_volumes


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
               path: Union[str, Path], base: float = 10.0, titles: Sequence[str] = ("source", "fine-tuned"),
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


def write_risk_maps(data_root: Union[str, Path], source_run: Union[str, Path], out_dir: Union[str, Path],
                    channel: Optional[str] = None, labels: Optional[str] = None, site: Optional[str] = None,
                    after_run: Optional[Union[str, Path]] = None, cases: Optional[Sequence[str]] = None,
                    base: float = 10.0, scope: str = "image", device: Optional[str] = None,
                    progress: bool = True, sites=None, resample: bool = True, scaling: str = "minmax",
                    quantile: float = 0.05, overwrite: bool = False, fold: str = "0") -> List[Path]:
    """Write CASE_transferability.nii.gz, CASE_risk.nii.gz (and *_after) and CASE.png per case.

    Also risk_diagnostics.json: per target class the mean risk and the share of voxels above the
    midpoint, and warnings when a map degenerates (trmcore.training.risk_diagnostics), over all cases
    on the working grid, for the source ("before") and the fine-tuned run ("after"); printed too.
    ``scaling`` / ``quantile``: how T becomes R (trmcore.training.risk_scaling).

    Volumes are loaded on the source run's grid (``resample=False``: as
    stored); the maps are written back on each case's stored grid.
    Every file is written atomically and never through a symbolic link; existing
    outputs are refused (before the maps are computed) unless ``overwrite``.

    The source model's own head defines the dummy labels (Z outputs), whatever
    the target label set; ``after_run`` (a fine-tuned run) is scored with its head.
    ``source_run`` is any kind of source (trmcore.training.sources: a run, an nnU-Net 2d
    result folder with ``fold``, a MONAI network), loaded on its own grid and normalisation.
    """
    from trmcore.training.checkpoint import load_run
    from trmcore.training.sources import load_source_task

    source_info, volumes, task_info, resolved = load_source_task(
        source_run, data_root, channel, labels, site, cases=cases, device=device, progress=progress,
        sites=sites, resample=resample, fold=fold)
    source = source_info.network
    out_dir = Path(out_dir)
    names = lambda case: [f"{case}_transferability.nii.gz", f"{case}_risk.nii.gz"] + (  # noqa: E731
        [f"{case}_transferability_after.nii.gz", f"{case}_risk_after.nii.gz"] if after_run is not None else []
    ) + [f"{case}.png"]
    # The whole plan before computing anything: no two outputs on one file (case X's X_risk.nii.gz and
    # case X_risk's ...), none on an input (a label or channel file when -o is inside the dataset).
    plan = [(out_dir / "risk_diagnostics.json", "the risk diagnostics")]
    plan += [(out_dir / name, f"a map of case {volume.case_id!r}")
             for volume in volumes for name in names(volume.case_id)]
    runs = list(source_info.files) + ([Path(after_run) / name for name in ("run.json", "model.safetensors")]
                                      if after_run is not None else [])
    check_output_plan(plan, overwrite=overwrite, inputs=_input_files(data_root, task_info, volumes, sites) + runs)
    num_classes = task_info.num_classes
    if source_info.spatial_dims == 3:  # a 3-D source (nnU-Net 3d): whole volumes, not slices
        from trmcore.training.riskmap3d import risk_volumes_3d

        before = risk_volumes_3d(source, volumes, num_classes, source_info.divisors, resolved, base, scope,
                                 progress=progress, scaling=scaling, quantile=quantile)
    else:
        before = risk_volumes(source, volumes, num_classes, source_info.axis, source_info.divisor, resolved, base,
                              scope, progress=progress, scaling=scaling, quantile=quantile)
    after = [None] * len(volumes)
    if after_run is not None:
        tuned, tuned_info = load_run(after_run, device=resolved)
        if tuned_info.model.in_channels != len(task_info.channels):
            raise ValueError(f"run {after_run} takes {tuned_info.model.in_channels} channel(s), "
                             f"the task gives {task_info.channels}")
        after = risk_volumes(tuned, volumes, num_classes, tuned_info.axis, tuned_info.divisor, resolved, base,
                             scope, progress=progress, scaling=scaling, quantile=quantile)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    path, diagnostics = write_volume_diagnostics(
        out_dir, [m.risk for m in before], None if after_run is None else [m.risk for m in after],
        [v.label for v in volumes], task_info.label_names, base, {"scaling": scaling, "quantile": quantile,
                                                                 "scope": scope},
        (f"risk map of {source_run}", f"risk map of {after_run}"), show=progress)
    written.append(path)
    for volume, maps, maps_after in zip(volumes, before, after):
        # Maps are written on the case's stored grid (its own affine and header), like every output.
        files = iter(out_dir / name for name in names(volume.case_id))
        native = volume.grid.to_native if volume.grid is not None else (lambda a, mode: a)
        affine = volume.grid.native_affine if volume.grid is not None else volume.affine
        written.append(save_nifti(native(maps.transferability, "linear"), affine,
                                  next(files), volume.header, overwrite))
        written.append(save_nifti(native(maps.risk, "linear"), affine, next(files), volume.header,
                                  overwrite))
        if maps_after is not None:
            written.append(save_nifti(native(maps_after.transferability, "linear"), affine,
                                      next(files), volume.header, overwrite))
            written.append(save_nifti(native(maps_after.risk, "linear"), affine,
                                      next(files), volume.header, overwrite))
        slice_index = pick_slice(volume.label, source_info.axis)
        written.append(plot_panel(volume, maps, maps_after, source_info.axis, slice_index,
                                  next(files), base, overwrite=overwrite,
                                  diagnostics=(diagnostics["before"], diagnostics["after"])))
    return written


def _input_files(data_root, task_info, volumes, sites) -> List[Path]:
    """The channel and label files of the loaded cases: outputs must never land on them."""
    from trmcore.data.layout import DatasetLayout

    layout = DatasetLayout.read(data_root, sites=sites)
    files = []
    for volume in volumes:
        files += [layout.image_path(volume.case_id, k) for k in task_info.channel_indices]
        files.append(layout.label_path(volume.case_id))
    return files

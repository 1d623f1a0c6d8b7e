"""Segment whole volumes with an exported trmcore model on onnxruntime (no torch).

The network is 2D: a volume on the model's grid goes through the steps of the
model's preprocessing pipeline that follow the grid (:mod:`trmcore.data.pipeline`,
rebuilt from the metadata's ``preprocessing`` list): each channel normalised,
cut into slices along the model's slice axis, zero-padded to a multiple of the
size divisor; the slices run in batches, the padding is cut off the logits and
the slices are stacked back into a volume. With ``crop_margin`` the pipeline's
``crop`` step runs the network only on the slices with foreground and on a
window around it (:mod:`trmcore.data.crop`); the rest of the volume is
background (:func:`trmcore.infer.crop.outside_logits`). Reorientation and
resampling (the geometric steps) are :func:`trmcore.infer.predict_case`'s.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from trmcore.data.crop import crop_margin_or_none
from trmcore.data.pipeline import Pipeline, Sample
from trmcore.data.preprocess import unpad
from trmcore.infer.crop import outside_logits
from trmcore.infer.metadata import ModelMetadata, check_graph_shapes
from trmcore.infer.runtime import ProviderSpec, active_provider, create_session, run_with_deadline
from trmcore.limits import check_allocation, parse_seconds, product, shape_text, time_limit as default_time_limit

VolumeInput = Union[np.ndarray, "nibabel.spatialimages.SpatialImage", Sequence]  # noqa: F821


def label_dtype(label_values: Sequence[int]) -> np.dtype:
    """uint8 when every label value fits, else uint16."""
    return np.dtype(np.uint8) if max(label_values) <= 255 else np.dtype(np.uint16)


class Segmenter:
    """A deployed segmentation model.

    Args:
        model_path: an ONNX file written by ``trm export`` (it carries
            :class:`~trmcore.infer.metadata.ModelMetadata`).
        providers: ``"auto"`` (CUDA when onnxruntime-gpu sees a GPU, else CPU),
            ``"cpu"``, ``"cuda"`` or an onnxruntime providers list.
        threads: intra-op CPU threads (None: all cores).
        batch_size: slices per network call.
        crop_margin: None runs every slice whole; an integer runs only the
            slices with foreground, on the in-plane box of the foreground plus
            this many voxels (aligned to the divisor), and gives background
            elsewhere (``trm predict`` default:
            :data:`~trmcore.data.crop.DEFAULT_CROP_MARGIN`).
        time_limit: seconds the network may spend on one volume before it is
            stopped with a :class:`~trmcore.infer.runtime.TimeLimitError`
            (None: :func:`trmcore.limits.time_limit`, ``--time-limit``).

    Logits that hold NaN or infinite values are an error naming the model
    (a diverged or damaged model would otherwise give all-background labels).

    Example:
        >>> seg = Segmenter("model.onnx")                      # doctest: +SKIP
        >>> labels = seg.predict_volume(nib.load("case_0000.nii.gz"))  # doctest: +SKIP
        >>> labels.dtype, labels.shape                         # doctest: +SKIP
        (dtype('uint8'), (240, 240, 155))
    """

    def __init__(self, model_path: Union[str, os.PathLike], providers: ProviderSpec = "auto",
                 threads: Optional[int] = None, batch_size: int = 8, crop_margin: Optional[int] = None,
                 time_limit: Optional[float] = None) -> None:
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.time_limit = default_time_limit() if time_limit is None else parse_seconds(time_limit)
        self.model_path = Path(model_path)
        self.session = create_session(self.model_path, providers, threads)
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ModelMetadata.from_props(props, str(self.model_path))
        self.provider = active_provider(self.session)
        self.batch_size = int(batch_size)
        self.crop_margin = crop_margin_or_none(crop_margin)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{self.model_path}: expected one input and one output, "
                             f"got {len(inputs)} and {len(outputs)}")
        check_graph_shapes(self.metadata, inputs[0].shape, outputs[0].shape, str(self.model_path))
        self._input_name = inputs[0].name
        self._input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        #: The model's preprocessing (trmcore.data.pipeline), rebuilt from its metadata.
        self.preprocessing = self.metadata.pipeline()
        # What runs here, on the model's grid: [crop], normalize, slice.
        self._input_steps = self.preprocessing.on_working_grid().with_crop(self.crop_margin)

    # -- properties ----------------------------------------------------------

    @property
    def channels(self) -> List[str]:
        return list(self.metadata.channels)

    @property
    def label_names(self) -> List[str]:
        return list(self.metadata.label_names)

    @property
    def label_values(self) -> List[int]:
        return list(self.metadata.label_values)

    @property
    def num_classes(self) -> int:
        return self.metadata.num_classes

    def __repr__(self) -> str:
        return (f"Segmenter({str(self.model_path)!r}, channels={self.channels}, "
                f"labels={self.label_names}, provider={self.provider!r})")

    # -- public prediction API -------------------------------------------------

    def predict_volume(self, volume: VolumeInput, channels: Optional[Sequence[str]] = None,
                       progress: bool = False) -> np.ndarray:
        """Label volume ``[X, Y, Z]`` holding the metadata's label VALUES (uint8, uint16 if needed).

        ``volume``: a 3D array or nibabel image (one-channel models), a
        ``[Cin, X, Y, Z]`` array, or a list of 3D arrays / images, one per
        channel. ``channels`` names the given channels when their order may
        differ from the model's; they are reordered to match.
        """
        sample = self._prepared(volume, channels)
        values = np.asarray(self.label_values, dtype=label_dtype(self.label_values))
        out = np.full(sample.shape, values[0], dtype=values.dtype)  # background where the network does not run
        slicer = self._input_steps.step("slice")
        for index, logits in self._slice_batches(sample, progress):
            slicer.paste(out, values[logits.argmax(axis=1)], sample.crop, index)  # [B, h, w] class values
        return out

    def predict_logits(self, volume: VolumeInput, channels: Optional[Sequence[str]] = None,
                       progress: bool = False) -> np.ndarray:
        """Raw network output as float32 ``[C, X, Y, Z]`` (C = number of classes).

        With cropping, voxels outside the crop get :func:`~trmcore.infer.crop.outside_logits`.
        """
        sample = self._prepared(volume, channels)
        out = np.empty((self.num_classes, *sample.shape), dtype=np.float32)
        out[...] = outside_logits(self.num_classes).reshape(-1, 1, 1, 1)
        slicer = self._input_steps.step("slice")
        for index, logits in self._slice_batches(sample, progress):
            slicer.paste(out, logits, sample.crop, index)
        return out

    def predict_probabilities(self, volume: VolumeInput, channels: Optional[Sequence[str]] = None,
                              progress: bool = False) -> np.ndarray:
        """Softmax class probabilities as float32 ``[C, X, Y, Z]``."""
        return softmax(self.predict_logits(volume, channels, progress), axis=0)

    def slice_logits(self, slices: np.ndarray) -> np.ndarray:
        """Run the network on padded slices: float32 ``[S, Cin, H, W]`` -> float32 ``[S, C, H, W]``.

        H and W must be multiples of the size divisor.
        """
        if slices.ndim != 4 or slices.shape[1] != self.metadata.num_channels:
            raise ValueError(f"slices must be [S, {self.metadata.num_channels}, H, W], got {slices.shape}")
        d = self.metadata.divisor
        if slices.shape[2] % d or slices.shape[3] % d:
            raise ValueError(f"slice height and width must be multiples of {d}, got {slices.shape[2:]}")
        outputs = []
        deadline = time.monotonic() + self.time_limit
        for start in range(0, slices.shape[0], self.batch_size):
            batch = np.ascontiguousarray(slices[start:start + self.batch_size], dtype=self._input_dtype)
            outputs.append(self._run(batch, deadline))
        return np.concatenate(outputs, axis=0)

    def _run(self, batch: np.ndarray, deadline: float) -> np.ndarray:
        """One network call: float32 logits ``[B, C, H, W]``; errors name the model (time, memory, non-finite)."""
        (logits,) = run_with_deadline(self.session, {self._input_name: batch}, deadline, self.model_path,
                                      self.time_limit)
        logits = np.asarray(logits)
        if logits.ndim != 4 or logits.shape[0] != batch.shape[0] or logits.shape[1] != self.num_classes:
            raise ValueError(f"{self.model_path}: the network returned shape {logits.shape} for input "
                             f"{batch.shape}; expected [{batch.shape[0]}, {self.num_classes}, H, W]")
        logits = logits.astype(np.float32, copy=False)
        if not np.isfinite(logits).all():
            raise ValueError(f"{self.model_path}: the network's outputs (logits) hold NaN or infinite values: "
                             "the model is damaged or diverged in training, its labels would be meaningless")
        return logits

    def check_volume(self, shape: Sequence[int], source: object = "volume", copies: Optional[int] = None) -> None:
        """ResourceLimitError naming ``source`` when segmenting a volume of ``shape`` would exceed the budget.

        Budgeted per voxel: the input channels as float32 (stacked, reoriented,
        normalised: 3 copies each) and the class maps (logits, probabilities,
        their mapping back: 3 float32 copies per class), or ``copies`` float32 copies.
        """
        if copies is None:
            copies = 3 * self.metadata.num_channels + 3 * self.num_classes
        check_allocation(product(shape) * 4 * copies,
                         f"{shape_text(shape)} voxels as float32 working copies (x{copies})", source)

    # -- input handling --------------------------------------------------------

    def _stacked(self, volume: VolumeInput, channels: Optional[Sequence[str]]) -> np.ndarray:
        stacked = self._reorder_channels(self._stack_channels(volume), channels)
        self.check_volume(stacked.shape[1:])
        if not np.isfinite(stacked).all():
            raise ValueError("input volume contains NaN or infinite values")
        return stacked

    def _prepared(self, volume: VolumeInput, channels: Optional[Sequence[str]]) -> Sample:
        """The input through the model's steps on its grid: normalised float32 ``[Cin, X, Y, Z]`` and
        ``sample.crop``, where the network runs (the crop step plans it on the raw intensities)."""
        sample = Sample.of(self._stacked(volume, channels), np.eye(4), source="input volume")
        return self._input_steps.apply(sample)

    def _stack_channels(self, volume: VolumeInput) -> np.ndarray:
        n = self.metadata.num_channels
        if isinstance(volume, (list, tuple)):
            parts = [_as_3d_array(v, f"channel {i}") for i, v in enumerate(volume)]
            if len(parts) != n:
                raise ValueError(f"model expects {n} channel(s) {self.channels}, got {len(parts)}")
            shapes = {p.shape for p in parts}
            if len(shapes) != 1:
                raise ValueError(f"channel volumes differ in shape: {[p.shape for p in parts]}")
            return np.stack(parts)
        if isinstance(volume, np.ndarray):
            if volume.ndim == 3:
                if n != 1:
                    raise ValueError(f"model expects {n} channels {self.channels}; give a [{n}, X, Y, Z] "
                                     "array or a list of 3D volumes, not one 3D array")
                return volume[None].astype(np.float32, copy=False)
            if volume.ndim == 4:
                if volume.shape[0] != n:
                    raise ValueError(f"model expects {n} channel(s) {self.channels}; the [Cin, X, Y, Z] array "
                                     f"has shape {volume.shape}")
                return volume.astype(np.float32, copy=False)
            raise ValueError(f"input volume must be 3D [X, Y, Z] or [Cin, X, Y, Z], got shape {volume.shape}")
        array = _as_3d_array(volume, "input image")
        if n != 1:
            raise ValueError(f"model expects {n} channels {self.channels}; give one image per channel")
        return array[None]

    def _reorder_channels(self, stacked: np.ndarray, channels: Optional[Sequence[str]]) -> np.ndarray:
        if channels is None:
            return stacked
        given = list(channels)
        if len(given) != len(stacked):
            raise ValueError(f"{len(given)} channel names {given} for {len(stacked)} channel volume(s)")
        if sorted(given) != sorted(self.channels):
            raise ValueError(f"input channels {given} do not match the model's channels {self.channels}")
        return stacked[[given.index(name) for name in self.channels]]

    def _slice_batches(self, sample: Sample, progress: bool) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Yield (slice indices along the axis, unpadded logits float32 [B, C, h, w] of the planned window)."""
        plan = sample.crop
        bar = _progress_bar(plan.slices.size, progress)
        deadline = time.monotonic() + self.time_limit  # per volume (per pass with mirroring)
        try:
            for index, padded in self._input_steps.batches(sample, self.batch_size):
                logits = self._run(padded.astype(self._input_dtype, copy=False), deadline)
                yield index, unpad(logits, plan.pad)
                if bar is not None:
                    bar.update(index.size)
        finally:
            if bar is not None:
                bar.close()


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax, float32."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted.astype(np.float32, copy=False)


def _as_3d_array(volume, what: str) -> np.ndarray:
    """A 3D float32 array from an array or nibabel image; a trailing axis of length 1 is dropped."""
    if hasattr(volume, "get_fdata"):
        if hasattr(volume, "get_data_dtype") and np.dtype(volume.get_data_dtype()).kind not in "biuf":
            raise ValueError(f"{what} has data type {np.dtype(volume.get_data_dtype())}; intensities must be real "
                             "numbers (a complex image would lose its imaginary part)")
        shape = tuple(volume.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise ValueError(f"{what} must be a 3D volume, got shape {tuple(volume.shape)}"
                             + (" (4D: give one 3D image per channel)" if len(shape) == 4 else ""))
        # Before get_fdata reads it: what the header declares must fit (one float32 copy and the stack).
        check_allocation(product(shape) * 4 * 2, f"{shape_text(shape)} voxels as float32 (x2)",
                         getattr(volume, "get_filename", lambda: None)() or what)
        return np.asarray(volume.get_fdata(dtype=np.float32)).reshape(shape)
    if isinstance(volume, np.ndarray):
        if volume.ndim != 3:
            raise ValueError(f"{what} must be a 3D volume, got shape {volume.shape}")
        if volume.dtype.kind not in "biuf":
            raise ValueError(f"{what} has data type {volume.dtype}; intensities must be real numbers")
        return volume.astype(np.float32, copy=False)
    raise TypeError(f"{what} must be a numpy array or a nibabel image, got {type(volume).__name__}")


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="slice", leave=False)

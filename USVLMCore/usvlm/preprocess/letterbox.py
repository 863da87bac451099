"""Crop, scale and pad an image to the square model input, and map results back exactly.

Coordinate convention (the same as torch's `align_corners=False` and as DICOM/Slicer pixels):
pixel i covers [i - 0.5, i + 0.5) in continuous coordinates, so its centre is at i. The crop
box starts at input pixel (x0, y0); scaling by s maps the crop's edge -0.5 to -0.5 and its far
edge (w - 0.5) to (s*w - 0.5), i.e. a crop coordinate c lands at (c + 0.5) * s - 0.5; then
the padding shifts it by (left, top). Every mapping below is this affine map or its inverse,
so images, probability maps and points all agree to floating-point precision.

Resampling is separable and uses sparse weight matrices: bilinear (a triangle filter, widened
when shrinking so speckle does not alias: the same weights as torch's `interpolate(...,
mode="bilinear", align_corners=False, antialias=True)`) or nearest. Sparse products need no
thread pool, so the cost stays a few milliseconds on a busy machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from functools import lru_cache

import numpy as np
from scipy import sparse

from usvlm.errors import InputError
from usvlm.preprocess._arrays import Box, check_pixels, clip_box

Mode = Literal["bilinear", "nearest"]


@dataclass(frozen=True)
class LetterboxTransform:
    """Input (H, W) -> crop to `box` -> scale to fit `size` keeping the aspect -> centre-pad."""

    input_shape: tuple[int, int]  # (H, W) of the original grid
    size: int  # the model input is size x size
    box: Box  # crop box x0, y0, x1, y1 on the input, inclusive
    content_shape: tuple[int, int]  # (h, w) of the scaled crop inside the model input
    offset: tuple[int, int]  # (top, left) padding before the scaled crop
    pad_value: float = 0.0

    @classmethod
    def compute(cls, input_shape: tuple[int, int], size: int, box: Box | None = None,
                pad_value: float = 0.0) -> "LetterboxTransform":
        """The transform of an (H, W) image cropped to `box` (default: all) into size x size."""
        h_in, w_in = int(input_shape[0]), int(input_shape[1])
        if h_in < 1 or w_in < 1:
            raise InputError(None, f"cannot resize an empty image of shape {input_shape}")
        if int(size) != size or size < 1:
            raise InputError(None, f"the model input size must be a positive integer, got {size}")
        crop = clip_box(box, (h_in, w_in)) if box is not None else (0, 0, w_in - 1, h_in - 1)
        if crop is None:
            raise InputError(None, f"crop box {box} lies outside the image of shape {input_shape}")
        h, w = crop[3] - crop[1] + 1, crop[2] - crop[0] + 1
        scale = size / max(h, w)
        # Each axis is scaled by its own rounded size, so the scaled crop has whole pixels.
        nh, nw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
        return cls((h_in, w_in), int(size), crop, (nh, nw), ((size - nh) // 2, (size - nw) // 2),
                   float(pad_value))

    # -- geometry ------------------------------------------------------------------------------

    @property
    def crop_shape(self) -> tuple[int, int]:
        return (self.box[3] - self.box[1] + 1, self.box[2] - self.box[0] + 1)

    @property
    def scale(self) -> tuple[float, float]:
        """(sy, sx): model pixels per input pixel along rows and columns."""
        (h, w), (nh, nw) = self.crop_shape, self.content_shape
        return (nh / h, nw / w)

    @property
    def content_box(self) -> Box:
        """Where the image lies in the model input: x0, y0, x1, y1 inclusive."""
        (top, left), (nh, nw) = self.offset, self.content_shape
        return (left, top, left + nw - 1, top + nh - 1)

    def to_model(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Input pixel coordinates (x = column, y = row; centres at integers) -> model (u, v)."""
        sy, sx = self.scale
        u = (np.asarray(x, dtype=np.float64) - self.box[0] + 0.5) * sx - 0.5 + self.offset[1]
        v = (np.asarray(y, dtype=np.float64) - self.box[1] + 0.5) * sy - 0.5 + self.offset[0]
        return _scalar(u), _scalar(v)

    def to_image(self, u: Any, v: Any) -> tuple[Any, Any]:
        """Model coordinates (u = column, v = row) -> input pixel coordinates (x, y)."""
        sy, sx = self.scale
        x = (np.asarray(u, dtype=np.float64) - self.offset[1] + 0.5) / sx - 0.5 + self.box[0]
        y = (np.asarray(v, dtype=np.float64) - self.offset[0] + 0.5) / sy - 0.5 + self.box[1]
        return _scalar(x), _scalar(y)

    def model_mask(self) -> np.ndarray:
        """(size, size) bool: true where the model input shows the image, false on padding."""
        mask = np.zeros((self.size, self.size), dtype=bool)
        x0, y0, x1, y1 = self.content_box
        mask[y0:y1 + 1, x0:x1 + 1] = True
        return mask

    # -- pixels --------------------------------------------------------------------------------

    def forward(self, pixels: np.ndarray, mode: Mode = "bilinear") -> np.ndarray:
        """(H, W), (H, W, C), (T, H, W) or (T, H, W, C) -> float32 (S, S[, C]) / (T, S, S[, C]).

        Bilinear is antialiased when shrinking, so speckle does not alias.
        """
        check_pixels(pixels)
        frames, channels, single = self._layout(pixels)
        x0, y0, x1, y1 = self.box
        crop = frames[:, :, y0:y1 + 1, x0:x1 + 1]
        out = np.full((*crop.shape[:2], self.size, self.size), self.pad_value, dtype=np.float32)
        (top, left), (nh, nw) = self.offset, self.content_shape
        for t in range(crop.shape[0]):  # frame by frame: temporaries of one frame, not of the cine
            out[t:t + 1, :, top:top + nh, left:left + nw] = _resize(
                np.asarray(crop[t:t + 1], dtype=np.float32), self.content_shape, mode)
        return _restore(out, channels, single)

    def inverse(self, maps: Any, mode: Mode = "bilinear", fill: float = 0.0) -> np.ndarray:
        """Model-space maps (S, S) or (N, S, S) -> float32 (H, W) / (N, H, W) on the input grid.

        Bilinear for probabilities, nearest for labels; `fill` outside the crop box. Padding
        never leaks in: samples beyond the scaled crop take its edge value.
        """
        # numpy arrays, or torch tensors straight from the model
        arr = maps.detach().cpu().numpy() if hasattr(maps, "detach") else np.asarray(maps)
        if arr.ndim not in (2, 3) or arr.shape[-2:] != (self.size, self.size):
            raise InputError(None, f"expected maps of shape ({self.size}, {self.size}) or "
                                   f"(N, {self.size}, {self.size}), got {arr.shape}")
        check_pixels(arr)
        single = arr.ndim == 2
        batch = arr[np.newaxis] if single else arr
        (top, left), (nh, nw) = self.offset, self.content_shape
        content = batch[:, np.newaxis, top:top + nh, left:left + nw].astype(np.float32)
        back = _resize(content, self.crop_shape, mode)[:, 0]
        out = np.full((batch.shape[0], *self.input_shape), fill, dtype=np.float32)
        x0, y0, x1, y1 = self.box
        out[:, y0:y1 + 1, x0:x1 + 1] = back
        return out[0] if single else out

    def _layout(self, pixels: np.ndarray) -> tuple[np.ndarray, bool, bool]:
        """Pixels as (T, C, H, W), whether they had channels, whether they were one frame."""
        hw = self.input_shape
        if pixels.ndim == 2 and pixels.shape == hw:
            return pixels[np.newaxis, np.newaxis], False, True
        if pixels.ndim == 3 and pixels.shape[1:] == hw:
            return pixels[:, np.newaxis], False, False
        if pixels.ndim == 3 and pixels.shape[:2] == hw:
            return np.moveaxis(pixels, -1, 0)[np.newaxis], True, True
        if pixels.ndim == 4 and pixels.shape[1:3] == hw:
            return np.moveaxis(pixels, -1, 1), True, False
        raise InputError(None, f"pixels of shape {pixels.shape} do not match the transform's "
                               f"input of {hw[0]} x {hw[1]}")

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LetterboxTransform":
        return cls(tuple(data["input_shape"]), int(data["size"]), tuple(data["box"]),  # type: ignore[arg-type]
                   tuple(data["content_shape"]), tuple(data["offset"]),  # type: ignore[arg-type]
                   float(data.get("pad_value", 0.0)))


def _resize(batch: np.ndarray, shape: tuple[int, int], mode: Mode) -> np.ndarray:
    """(N, C, h, w) float32 -> (N, C, *shape) with the half-pixel convention of the module."""
    if mode not in ("bilinear", "nearest"):
        raise InputError(None, f"unknown interpolation mode {mode!r} (use 'bilinear' or 'nearest')")
    n, c, h, w = batch.shape
    if (h, w) == tuple(shape):
        return batch
    ry, rx = _weights(h, shape[0], mode), _weights(w, shape[1], mode)
    rows = (ry @ batch.transpose(2, 0, 1, 3).reshape(h, -1)).reshape(shape[0], n, c, w)
    both = (rx @ rows.transpose(3, 1, 2, 0).reshape(w, -1)).reshape(shape[1], n, c, shape[0])
    return np.ascontiguousarray(both.transpose(1, 2, 3, 0), dtype=np.float32)


@lru_cache(maxsize=64)
def _weights(n_in: int, n_out: int, mode: Mode) -> sparse.csr_matrix:
    """(n_out, n_in) resampling matrix along one axis.

    Output pixel k has its centre at input coordinate (k + 0.5) * n_in / n_out - 0.5.
    Nearest takes the input pixel whose cell holds it; bilinear weighs input pixels with a
    triangle of half-width max(1, n_in / n_out), renormalised at the borders (so a constant
    stays constant and the edge value is held, never zero-padded).
    """
    scale = n_in / n_out
    k = np.arange(n_out, dtype=np.float64)
    if mode == "nearest":
        cols = np.clip(np.floor((k + 0.5) * scale), 0, n_in - 1).astype(np.int64)
        return sparse.csr_matrix((np.ones(n_out, np.float32), (np.arange(n_out), cols)), shape=(n_out, n_in))
    support = max(scale, 1.0)
    centre = (k + 0.5) * scale - 0.5
    taps = np.arange(int(np.ceil(2 * support)) + 2)
    cols = np.floor(centre - support)[:, np.newaxis] + taps
    weight = np.maximum(0.0, 1.0 - np.abs(cols - centre[:, np.newaxis]) / support)
    weight[(cols < 0) | (cols >= n_in)] = 0.0
    weight /= weight.sum(axis=1, keepdims=True)
    keep = weight > 0
    rows = np.broadcast_to(np.arange(n_out)[:, np.newaxis], cols.shape)
    return sparse.csr_matrix((weight[keep].astype(np.float32), (rows[keep], cols[keep].astype(np.int64))),
                             shape=(n_out, n_in))


def _restore(out: np.ndarray, channels: bool, single: bool) -> np.ndarray:
    out = np.moveaxis(out, 1, -1) if channels else out[:, 0]
    return np.ascontiguousarray(out[0] if single else out)


def _scalar(a: np.ndarray) -> Any:
    return float(a) if a.ndim == 0 else a

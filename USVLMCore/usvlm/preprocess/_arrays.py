"""Checks and conversions shared by the preprocessing steps.

All steps work on float32 intensities in [0, 1] with a leading frame axis: (T, H, W) grey or
(T, H, W, 3) colour, so a cine is processed in one vectorised pass.
"""

from __future__ import annotations

import numpy as np

from usvlm.errors import InputError
from usvlm.io.color import rgb_to_luminance
from usvlm.io.image import USImage

# Full-scale values of common integer bit depths; stored data is scaled by the smallest one that
# holds its maximum, so 12-bit data in uint16 is not crushed to near black by 65535.
_BIT_DEPTH_MAXIMA = (255, 1023, 4095, 16383, 65535, 2**32 - 1)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, inclusive (as in DICOM)


def check_pixels(pixels: np.ndarray, source: str | None = None) -> None:
    """Raise `InputError` for arrays no preprocessing step can use."""
    if not isinstance(pixels, np.ndarray):
        raise InputError(source, f"expected a numpy array of pixels, got {type(pixels).__name__}")
    if pixels.ndim not in (2, 3, 4):
        raise InputError(source, f"expected a 2D image, an RGB image or a cine, got an array "
                                 f"with {pixels.ndim} dimensions (shape {pixels.shape})")
    if pixels.size == 0:
        raise InputError(source, f"the image is empty (shape {pixels.shape})")
    if not (np.issubdtype(pixels.dtype, np.number) or pixels.dtype == bool):
        raise InputError(source, f"pixels must be numbers, got dtype {pixels.dtype}")
    if np.issubdtype(pixels.dtype, np.complexfloating):
        raise InputError(source, "pixels are complex numbers; expected real intensities")
    if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).all():
        raise InputError(source, "the image contains NaN or infinite values")


def image_source(image: USImage) -> str | None:
    return image.info.path


def full_scale(pixels: np.ndarray) -> float:
    """The intensity that maps to 1.0."""
    if pixels.dtype == bool:
        return 1.0
    top = float(pixels.max())
    if np.issubdtype(pixels.dtype, np.integer):
        return float(next((m for m in _BIT_DEPTH_MAXIMA if top <= m), top))
    return 1.0 if top <= 1.0 else top


def to_unit_float(pixels: np.ndarray, scale: float | None = None) -> np.ndarray:
    """float32 intensities in [0, 1] (negative values, which B-mode does not have, clip to 0)."""
    scale = full_scale(pixels) if scale is None else scale
    out = pixels.astype(np.float32)  # the one copy: scaled and clipped in place
    out /= np.float32(scale if scale > 0 else 1.0)
    return np.clip(out, 0.0, 1.0, out=out)


def unit_frames(image: USImage) -> np.ndarray:
    """(T, H, W) or (T, H, W, 3) float32 in [0, 1], after checking the pixels."""
    source = image_source(image)
    check_pixels(image.pixels, source)
    if image.rows == 0 or image.columns == 0:
        raise InputError(source, f"the image is empty (shape {image.pixels.shape})")
    return to_unit_float(image.as_frames())


def luminance(frames: np.ndarray, is_rgb: bool) -> np.ndarray:
    """Grey float frames; RGB is reduced to BT.601 luma (the Y of YBR, so grey stays grey)."""
    return rgb_to_luminance(frames) if is_rgb else frames


def clip_box(box: Box, shape: tuple[int, int]) -> Box | None:
    """`box` clipped to an (H, W) image, or None when nothing of it lies inside."""
    h, w = shape
    x0, y0, x1, y1 = max(int(box[0]), 0), max(int(box[1]), 0), min(int(box[2]), w - 1), min(int(box[3]), h - 1)
    return (x0, y0, x1, y1) if x0 <= x1 and y0 <= y1 else None


def box_mask(box: Box, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = box
    mask[y0:y1 + 1, x0:x1 + 1] = True
    return mask


def mask_box(mask: np.ndarray) -> Box | None:
    """Inclusive bounding box of the true pixels of a 2D mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))

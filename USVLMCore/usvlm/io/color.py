"""Colour handling that keeps ultrasound intensities.

B-mode pixels stored as RGB (screen captures, palette images) carry the echo amplitude in the
luminance. ITU-R BT.601 luma is the Y of DICOM's YBR_FULL, so a grey image stored as RGB or YBR
converts back to exactly its grey values.
"""

from __future__ import annotations

import numpy as np

BT601_LUMA = np.array([0.299, 0.587, 0.114])


def rgb_to_luminance(pixels: np.ndarray) -> np.ndarray:
    """(..., 3) RGB to (...) luminance, keeping the integer dtype (rounded) of the input."""
    if pixels.shape[-1] != 3:
        raise ValueError(f"expected RGB pixels with 3 channels last, got shape {pixels.shape}")
    luma = pixels.astype(np.float32) @ BT601_LUMA.astype(np.float32)
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        return np.clip(np.rint(luma), info.min, info.max).astype(pixels.dtype)
    return luma.astype(pixels.dtype)


def is_effectively_grey(pixels: np.ndarray, tolerance: int = 2) -> bool:
    """True when an RGB image carries no colour (all channels equal within `tolerance`)."""
    p = pixels.astype(np.int32)
    return bool(np.abs(p[..., 0] - p[..., 1]).max(initial=0) <= tolerance
                and np.abs(p[..., 1] - p[..., 2]).max(initial=0) <= tolerance)

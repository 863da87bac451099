"""Where things are on a volume's pixel grid, from its IJK-to-RAS matrix (numpy only, Python 3.9).

A 2D image is a volume with one slice (K = 1); a cine held as one volume has its frames along K.
A Sequence's items are 2D volumes each (see sequences.py).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from .engine_client import Point


class NotUltrasound(ValueError):
    """The volume is clearly not a 2D ultrasound image or cine."""


def pixel_spacing(ijk_to_ras: np.ndarray) -> Tuple[float, float]:
    """(x, y) spacing in mm: the lengths of the I and J axes of the matrix."""
    m = np.asarray(ijk_to_ras, dtype=float)
    return float(np.linalg.norm(m[:3, 0])), float(np.linalg.norm(m[:3, 1]))


def _ras_to_ijk(ijk_to_ras: np.ndarray, ras: Sequence[float]) -> np.ndarray:
    m = np.asarray(ijk_to_ras, dtype=float)
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:  # a single slice's K axis may be degenerate
        m = m.copy()
        m[:3, 2] = np.cross(m[:3, 0], m[:3, 1]) / max(np.linalg.norm(m[:3, 0]), 1e-12)
    point = np.append(np.asarray(ras, dtype=float).ravel()[:3], 1.0)
    return (np.linalg.inv(m) @ point)[:3]


def ras_to_pixel(ijk_to_ras: np.ndarray, ras: Sequence[float], shape: Tuple[int, int], frames: int = 1,
                 *, tolerance: float = 0.5) -> Optional[Point]:
    """A RAS point (a markup click) as a pixel (x column, y row, frame) of the image, or None when
    it is not on the image (more than `tolerance` pixels outside it, or off its frames): a
    leftover point from another image is ignored, never an error."""
    i, j, k = _ras_to_ijk(ijk_to_ras, ras)
    rows, columns = shape
    frame = int(round(k))
    inside = (-tolerance <= i <= columns - 1 + tolerance and -tolerance <= j <= rows - 1 + tolerance
              and abs(k - frame) <= tolerance and 0 <= frame < frames)
    return Point(float(i), float(j), frame) if inside else None


def frame_at_ras(ijk_to_ras: np.ndarray, ras: Sequence[float], frames: int) -> int:
    """The frame a slice view shows (its plane through `ras`), clamped to the image's frames."""
    k = _ras_to_ijk(ijk_to_ras, ras)[2]
    return int(min(max(round(float(k)), 0), frames - 1))


def check_ultrasound_volume(frames: int, modality: Optional[str] = None,
                            minimum: Optional[float] = None, name: Optional[str] = None) -> None:
    """Refuse what is clearly not 2D ultrasound: a CT/MR series, or a multi-slice volume with
    negative intensities (Hounsfield units). A multi-slice US volume is taken as a cine."""
    label = f"{name}: " if name else ""
    if modality and modality.upper() != "US":
        raise NotUltrasound(f"{label}a {modality.upper()} image, not ultrasound: USVLM contours 2D "
                            "ultrasound images and cine loops")
    if frames > 1 and minimum is not None and minimum < -100:
        raise NotUltrasound(f"{label}a 3D volume of {frames} slices with intensities down to "
                            f"{minimum:.0f} (CT-like), not an ultrasound image or cine loop")


def frames_to_volume(mask: np.ndarray, frames: Sequence[int], total_frames: int) -> np.ndarray:
    """Masks of the segmented `frames` ((H, W) or (T, H, W)) as the uint8 [K, J, I] array of the
    whole volume: a run on one frame of a cine lands on that frame's slice, the others stay empty."""
    stack = np.asarray(mask)
    if stack.ndim == 2:
        stack = stack[np.newaxis]
    if stack.ndim != 3 or stack.shape[0] != len(frames):
        raise ValueError(f"{stack.shape} mask for {len(frames)} segmented frame(s)")
    if list(frames) == list(range(total_frames)):
        return stack.astype(np.uint8)
    out = np.zeros((total_frames,) + stack.shape[1:], dtype=np.uint8)
    out[list(frames)] = stack
    return out

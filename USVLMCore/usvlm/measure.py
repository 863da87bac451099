"""Measurements of a contoured finding, in millimetres when the image is calibrated.

Long axis: the longest diameter (maximum Feret diameter of the sub-pixel contour). Short axis: the
longest chord perpendicular to it, as sonographers measure (BI-RADS / TI-RADS practice). Units
are honest: when the pixel spacing is a placeholder, `calibrated` is False and the numbers are in
pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from skimage import measure as skmeasure


@dataclass(frozen=True)
class Measurements:
    area: float  # mm^2 (px^2 when not calibrated)
    long_axis: float  # mm (px)
    short_axis: float  # mm (px)
    width: float  # lateral extent (x), mm (px)
    height: float  # depth extent (y), mm (px)
    taller_than_wide: bool
    circularity: float  # 4 pi A / P^2: 1 for a disk, lower for irregular or spiculated margins
    echogenicity_ratio: float | None  # mean inside / mean in a surrounding ring
    echogenicity_db: float | None
    components: int
    calibrated: bool
    unit: str  # "mm" or "px"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _contour_points_mm(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Sub-pixel boundary points (x, y) in mm of all components."""
    padded = np.pad(mask.astype(np.float32), 1)
    contours = skmeasure.find_contours(padded, 0.5)
    if not contours:
        return np.zeros((0, 2))
    pts = np.concatenate(contours) - 1.0  # (row, col) in pixels, undo the padding
    return np.column_stack([pts[:, 1] * spacing[0], pts[:, 0] * spacing[1]])


def _perimeter_mm(mask: np.ndarray, spacing: tuple[float, float]) -> float:
    """Length of the boundary. The raw iso-contour of a binary mask zigzags along pixel edges
    (about +8 % on smooth shapes); a short circular moving average removes the staircase."""
    padded = np.pad(mask.astype(np.float32), 1)
    total = 0.0
    for c in skmeasure.find_contours(padded, 0.5):
        closed = np.allclose(c[0], c[-1])
        if closed and len(c) > 8:
            ring = c[:-1]
            ring = sum(np.roll(ring, k, axis=0) for k in range(-2, 3)) / 5.0
            c = np.vstack([ring, ring[:1]])
        d = np.diff(c, axis=0) * np.array([spacing[1], spacing[0]])
        total += float(np.hypot(d[:, 0], d[:, 1]).sum())
    return total


def feret_axes(points: np.ndarray, step: float) -> tuple[float, float, np.ndarray]:
    """Long axis length, longest perpendicular chord, and the long axis direction (unit x, y)."""
    if len(points) < 2:
        return 0.0, 0.0, np.array([1.0, 0.0])
    try:
        hull = points[ConvexHull(points).vertices]
    except QhullError:  # collinear points: a line segment
        hull = points
    diff = hull[:, None, :] - hull[None, :, :]
    dist = np.hypot(diff[..., 0], diff[..., 1])
    i, j = np.unravel_index(np.argmax(dist), dist.shape)
    long_axis = float(dist[i, j])
    if long_axis == 0:
        return 0.0, 0.0, np.array([1.0, 0.0])
    u = (hull[j] - hull[i]) / long_axis
    v = np.array([-u[1], u[0]])
    along, across = points @ u, points @ v
    # Chords perpendicular to the long axis: extent across the axis within thin slabs along it.
    bins = np.floor((along - along.min()) / step).astype(int)
    order = np.argsort(bins)
    b_sorted, a_sorted = bins[order], across[order]
    starts = np.flatnonzero(np.r_[True, np.diff(b_sorted) != 0])
    widths = np.maximum.reduceat(a_sorted, starts) - np.minimum.reduceat(a_sorted, starts)
    return long_axis, float(widths.max()), u


def measure_mask(mask: np.ndarray, spacing_mm: tuple[float, float], *, calibrated: bool = True,
                 image: np.ndarray | None = None, ring_mm: float = 2.0) -> Measurements:
    """Measure a 2D boolean mask; `image` (grey, same grid) adds relative echogenicity."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"measure a single frame mask (H, W), got {mask.shape}")
    sx, sy = spacing_mm if calibrated else (1.0, 1.0)
    unit = "mm" if calibrated else "px"
    _, components = ndimage.label(mask)
    if not mask.any():
        return Measurements(0.0, 0.0, 0.0, 0.0, 0.0, False, 0.0, None, None, 0, calibrated, unit)
    area = float(mask.sum()) * sx * sy
    points = _contour_points_mm(mask, (sx, sy))
    long_axis, short_axis, _ = feret_axes(points, step=min(sx, sy))
    rows, cols = np.nonzero(mask)
    width = float(cols.max() - cols.min() + 1) * sx
    height = float(rows.max() - rows.min() + 1) * sy
    perimeter = _perimeter_mm(mask, (sx, sy))
    circularity = float(min(1.0, 4 * np.pi * area / perimeter**2)) if perimeter > 0 else 0.0
    ratio = db = None
    if image is not None:
        ratio, db = _relative_echogenicity(np.asarray(image, dtype=np.float64), mask, ring_mm,
                                           (sx, sy))
    return Measurements(area, long_axis, short_axis, width, height, height > width, circularity,
                        ratio, db, int(components), calibrated, unit)


def _relative_echogenicity(image: np.ndarray, mask: np.ndarray, ring_mm: float,
                           spacing: tuple[float, float]) -> tuple[float | None, float | None]:
    radius = (max(1, round(ring_mm / spacing[1])), max(1, round(ring_mm / spacing[0])))
    structure = np.ones((2 * radius[0] + 1, 2 * radius[1] + 1), dtype=bool)
    ring = ndimage.binary_dilation(mask, structure) & ~mask & (image > 0)  # 0 = outside the scan area
    if not ring.any():
        return None, None
    inside, around = image[mask].mean(), image[ring].mean()
    if around <= 0:
        return None, None
    ratio = float(inside / around)
    return ratio, float(20 * np.log10(max(ratio, 1e-6)))

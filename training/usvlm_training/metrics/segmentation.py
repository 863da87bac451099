"""Segmentation metrics: Dice, IoU, HD95 and ASD in millimetres, with empty masks made explicit.

Definitions (the same as MONAI's `compute_dice`, `compute_hausdorff_distance(percentile=95)` and
`compute_average_surface_distance(symmetric=True)`, which the tests check):
- the surface of a mask is its boundary pixels: mask pixels with a 4-neighbour outside the mask
  (pixels on the image border count as boundary);
- distances run from each surface pixel of one mask to the nearest surface pixel of the other,
  in mm with the pixel spacing per axis (rows, columns), so anisotropic pixels are measured right;
- HD95 is the larger of the two directed 95th percentiles (linear interpolation);
- ASD is the mean of all distances of both directions.

Empty masks (the reference code drops them from the mean without a word):
- both empty: Dice = IoU = 1, HD95 = ASD = 0 (nothing to find, nothing found);
- exactly one empty: Dice = IoU = 0, HD95 = ASD = inf (undefined), flagged per image.
`aggregate` reports Dice and IoU over all images, HD95 and ASD over the images where both masks
are non-empty, and counts the empty predictions, empty ground truths and excluded images; with
`empty_penalty_mm` the one-empty images count with that distance (both-empty with 0) instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

Spacing = float | Sequence[float]


def as_mask(x: Any, name: str = "mask") -> np.ndarray:
    """A boolean array from a bool / 0-1 array or tensor; probabilities must be thresholded first."""
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if arr.dtype == bool:
        return arr
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be binary (bool or 0 / 1); threshold probabilities first")
    return arr.astype(bool)


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = as_mask(pred, "prediction"), as_mask(gt, "ground truth")
    if p.shape != g.shape:
        raise ValueError(f"prediction of shape {p.shape} and ground truth of shape {g.shape} differ")
    return p, g


def _spacing(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing, dtype=float), (ndim,)))
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be positive and finite, got {spacing}")
    return values


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels: in the mask with a face neighbour outside it (outside the image counts)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(pred: Any, gt: Any, spacing: Spacing = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(prediction -> ground truth, ground truth -> prediction) distances from every surface pixel
    to the other surface, in the units of `spacing` (per axis: rows, columns). Both non-empty."""
    p, g = _pair(pred, gt)
    if not p.any() or not g.any():
        raise ValueError("surface distances need two non-empty masks")
    sampling = _spacing(spacing, p.ndim)
    # Work in the union's bounding box plus one pixel: every surface pixel lies inside it, so the
    # distances are exact, and large images with small structures stay cheap.
    box = tuple(slice(max(int(ix.min()) - 1, 0), int(ix.max()) + 2) for ix in np.nonzero(p | g))
    sp, sg = surface(p)[box], surface(g)[box]
    to_gt = ndimage.distance_transform_edt(~sg, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=sampling)
    return to_gt[sp], to_pred[sg]


def dice(pred: Any, gt: Any) -> float:
    """2 |P n G| / (|P| + |G|); 1 when both are empty."""
    p, g = _pair(pred, gt)
    total = int(p.sum()) + int(g.sum())
    return 1.0 if total == 0 else 2.0 * int((p & g).sum()) / total


def iou(pred: Any, gt: Any) -> float:
    """|P n G| / |P u G|; 1 when both are empty."""
    p, g = _pair(pred, gt)
    union = int((p | g).sum())
    return 1.0 if union == 0 else int((p & g).sum()) / union


def _hd(d1: np.ndarray, d2: np.ndarray, percentile: float) -> float:
    return float(max(np.percentile(d1, percentile), np.percentile(d2, percentile)))


def _asd(d1: np.ndarray, d2: np.ndarray) -> float:
    return float((d1.sum() + d2.sum()) / (d1.size + d2.size))


def _empty_distance(p: np.ndarray, g: np.ndarray) -> float | None:
    """The convention's distance when a mask is empty, None when both have pixels."""
    if p.any() and g.any():
        return None
    return 0.0 if not p.any() and not g.any() else math.inf


def hd95(pred: Any, gt: Any, spacing: Spacing = 1.0, percentile: float = 95.0) -> float:
    """95th-percentile symmetric Hausdorff distance in the units of `spacing` (default pixels)."""
    p, g = _pair(pred, gt)
    empty = _empty_distance(p, g)
    return empty if empty is not None else _hd(*surface_distances(p, g, spacing), percentile)


def asd(pred: Any, gt: Any, spacing: Spacing = 1.0) -> float:
    """Average symmetric surface distance in the units of `spacing` (default pixels)."""
    p, g = _pair(pred, gt)
    empty = _empty_distance(p, g)
    return empty if empty is not None else _asd(*surface_distances(p, g, spacing))


@dataclass(frozen=True)
class SegmentationScores:
    """The metrics of one image; distances in the units of the spacing given (mm)."""

    dice: float
    iou: float
    hd95: float
    asd: float
    empty_pred: bool
    empty_gt: bool

    @property
    def both_empty(self) -> bool:
        return self.empty_pred and self.empty_gt

    @property
    def has_distances(self) -> bool:
        """Whether HD95 / ASD are measured (both masks non-empty), not set by convention."""
        return not (self.empty_pred or self.empty_gt)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(pred: Any, gt: Any, spacing: Spacing = 1.0, *, percentile: float = 95.0) -> SegmentationScores:
    """All metrics of one prediction (surface distances computed once)."""
    p, g = _pair(pred, gt)
    empty = _empty_distance(p, g)
    if empty is None:
        d1, d2 = surface_distances(p, g, spacing)
        hd, mean = _hd(d1, d2, percentile), _asd(d1, d2)
    else:
        _spacing(spacing, p.ndim)  # still refuse a bad spacing
        hd = mean = empty
    return SegmentationScores(dice(p, g), iou(p, g), hd, mean, not p.any(), not g.any())


@dataclass(frozen=True)
class Stat:
    """Mean and standard deviation (population, ddof=0) of n values; NaN when n is 0."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        if not len(values):
            return cls(math.nan, math.nan, 0)
        arr = np.asarray(values, dtype=float)
        return cls(float(arr.mean()), float(arr.std()), int(arr.size))

    def __str__(self) -> str:
        return f"{self.mean:.4g} +/- {self.std:.4g} (n={self.n})"


@dataclass(frozen=True)
class SegmentationSummary:
    n: int
    dice: Stat
    iou: Stat
    hd95: Stat
    asd: Stat
    empty_pred: int  # images with an empty prediction
    empty_gt: int  # images with an empty ground truth
    both_empty: int
    distance_excluded: int  # images left out of the HD95 / ASD statistics
    empty_penalty: float | None  # the distance one-empty images were given, if any

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def aggregate(scores: Iterable[SegmentationScores], *, empty_penalty_mm: float | None = None
              ) -> SegmentationSummary:
    """Mean +/- std over images, counting what is empty; see the module notes for the rules."""
    scores = list(scores)
    if empty_penalty_mm is None:
        measured = [s for s in scores if s.has_distances]
        hd, mean = [s.hd95 for s in measured], [s.asd for s in measured]
    else:
        if not (math.isfinite(empty_penalty_mm) and empty_penalty_mm >= 0):
            raise ValueError(f"empty_penalty_mm must be a finite distance, got {empty_penalty_mm}")
        def fill(s: SegmentationScores, value: float) -> float:
            return value if s.has_distances else (0.0 if s.both_empty else empty_penalty_mm)
        hd, mean = [fill(s, s.hd95) for s in scores], [fill(s, s.asd) for s in scores]
    return SegmentationSummary(
        n=len(scores), dice=Stat.of([s.dice for s in scores]), iou=Stat.of([s.iou for s in scores]),
        hd95=Stat.of(hd), asd=Stat.of(mean), empty_pred=sum(s.empty_pred for s in scores),
        empty_gt=sum(s.empty_gt for s in scores), both_empty=sum(s.both_empty for s in scores),
        distance_excluded=len(scores) - len(hd), empty_penalty=empty_penalty_mm)

"""Field of view: where on the screen the ultrasound scan area lies.

Pixel conventions: x = column, y = row, pixel centres at integer coordinates, boxes inclusive.
A fan (convex or phased-array probe) is the set of points between two straight edges through the
apex and between an inner and an outer arc around it; angles are measured at the apex from the
+y axis (straight down, the beam direction) towards +x, so the left edge has the smaller angle.

The estimate uses only what every scanner shares: inside the scan area there is speckle (almost
every pixel above the background level), outside it the screen is black or uniform, and
annotations there (text, bars, logos) are thin or small and separate from the scan area.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from usvlm.io.image import FieldOfViewSource, USImage
from usvlm.preprocess._arrays import Box, box_mask, clip_box, luminance, mask_box, unit_frames

FieldOfViewKind = Literal["fan", "rectangle"]

# A pixel belongs to the scan area when this fraction of its neighbourhood is above background;
# below 0.5 so that dark speckle at the edge does not erode the area.
_CONTENT_FRACTION = 0.4
# A scan area smaller than this fraction of the search box is not trusted.
_MIN_AREA_FRACTION = 0.05
# The estimate must agree this well (IoU) with its model, else the search box is returned.
_MIN_FIT_IOU = 0.7
# ... and cover at least this fraction of it.
_MIN_COVERAGE = 0.95
# Edges opening by less than this (dx/dy) are parallel: a linear probe, not a fan.
_MIN_FAN_OPENING = 0.05
# A fan edge runs along at least this fraction of the scan area's height.
_MIN_EDGE_SPAN = 0.05
# Pixels of a cine whose standard deviation over time stays below this are still (annotations).
_STILL_STD = 1e-3


@dataclass(frozen=True, eq=False)
class FieldOfView:
    """The scan area of an ultrasound image.

    `source` says where the shape came from: "estimated" from the pixels (bounded by the DICOM
    region when there is one), "ultrasound_region" when it is the DICOM region rectangle itself
    and "full_image" when nothing better was known. `region` is the DICOM region used, if any.
    """

    kind: FieldOfViewKind
    box: Box
    mask: np.ndarray  # (H, W) bool, true inside the scan area
    source: FieldOfViewSource
    apex: tuple[float, float] | None = None  # fan only: (x, y), may lie above the image
    radii: tuple[float, float] | None = None  # fan only: (inner, outer) in pixels
    angles: tuple[float, float] | None = None  # fan only: (left, right) in radians
    region: Box | None = None

    @property
    def outside(self) -> np.ndarray:
        """(H, W) bool, true for pixels outside the scan area."""
        return ~self.mask

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.mask.shape[0]), int(self.mask.shape[1]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (the mask left out)."""
        return {"kind": self.kind, "box": list(self.box), "source": self.source,
                "apex": None if self.apex is None else list(self.apex),
                "radii": None if self.radii is None else list(self.radii),
                "angles": None if self.angles is None else list(self.angles),
                "region": None if self.region is None else list(self.region),
                "shape": list(self.shape)}


def detect_field_of_view(image: USImage) -> FieldOfView:
    """The scan area of `image` (a frame or a cine; a cine uses all frames)."""
    grey = luminance(unit_frames(image), image.is_rgb)
    return field_of_view_from_frames(grey, search_region(image))


def search_region(image: USImage) -> Box | None:
    """The largest 2D tissue region of the DICOM header, clipped to the image.

    Regions of downsized or cropped images can reach past the pixels, hence the clipping.
    """
    shape = image.frame_shape
    boxes = [clip_box((r.x0, r.y0, r.x1, r.y1), shape)
             for r in image.info.regions if r.is_2d_tissue_in_cm]
    boxes = [b for b in boxes if b is not None]
    if boxes:
        return max(boxes, key=_box_area)  # first of equal ones (left image of a dual display)
    if image.info.field_of_view is not None and image.info.field_of_view_source == "ultrasound_region":
        return clip_box(image.info.field_of_view, shape)
    return None


def field_of_view_from_frames(grey: np.ndarray, region: Box | None = None) -> FieldOfView:
    """The scan area from grey float frames (T, H, W) or one frame (H, W), inside `region`."""
    # The temporal maximum lights up tissue that is dark in some frames (heart chambers, shadows).
    summary = grey if grey.ndim == 2 else grey[0] if len(grey) == 1 else grey.max(axis=0)
    # Annotations stay still while the tissue of a cine changes from frame to frame.
    moving = _moving(grey) if grey.ndim == 3 and len(grey) >= 3 else None
    shape = summary.shape
    bound = region if region is not None else (0, 0, shape[1] - 1, shape[0] - 1)
    fallback = FieldOfView("rectangle", bound, box_mask(bound, shape),
                           "ultrasound_region" if region is not None else "full_image",
                           region=region)
    area = scan_area(summary, bound, moving)
    if area is None:
        return fallback
    hull = convex_fill(area)
    candidates = [c for c in (_fit_rectangle(hull), _fit_fan(area, hull, bound)) if c is not None]
    # Cutting off tissue is worse than keeping some background: a shape must cover the area.
    size = np.count_nonzero(area)
    scores = [_iou(c.mask, area) if np.count_nonzero(c.mask & area) >= _MIN_COVERAGE * size else 0.0
              for c in candidates]
    best = int(np.argmax(scores))  # the rectangle comes first and wins ties
    fit = candidates[best]
    # A shape that fills the search box, or that the model does not explain, adds nothing.
    if scores[best] < _MIN_FIT_IOU or fit.mask.sum() >= 0.98 * _box_area(bound):
        return fallback
    return FieldOfView(fit.kind, fit.box, fit.mask, "estimated", fit.apex, fit.radii, fit.angles,
                       region)


def _moving(grey: np.ndarray) -> np.ndarray:
    """(H, W): pixels whose standard deviation over the frames exceeds `_STILL_STD`, computed in
    bands of rows (std over a whole cine makes a temporary as large as the cine)."""
    moving = np.empty(grey.shape[1:], dtype=bool)
    step = max(1, (1 << 22) // max(grey.shape[0] * grey.shape[2], 1))
    for start in range(0, grey.shape[1], step):
        moving[start:start + step] = grey[:, start:start + step].std(axis=0) > _STILL_STD
    return moving


def scan_area(summary: np.ndarray, bound: Box, moving: np.ndarray | None = None) -> np.ndarray | None:
    """(H, W) mask of the connected, hole-free speckle area inside `bound`, or None.

    `moving` (cine only) marks pixels that change over time; still ones are not tissue, unless
    the whole loop is still (a frozen or repeated frame).
    """
    x0, y0, x1, y1 = bound
    sub = summary[y0:y1 + 1, x0:x1 + 1]
    sample = sub[::2, ::2]
    lo, hi = np.percentile(sample, [1, 99])
    if hi - lo < 0.02:  # uniform: no scan area to find
        return None
    # Just above the background: dim speckle at the flanks of a fan is only a few levels up.
    content = sub > lo + max(2.5 / 255, 0.01 * (hi - lo))
    if moving is not None:
        live = content & moving[y0:y1 + 1, x0:x1 + 1]
        if live.sum() >= 0.5 * content.sum():
            content = live
    # A windowed majority vote fills dark speckle inside and removes thin strokes (text, ticks).
    window = max(5, (min(sub.shape) // 40) | 1)
    # (a uint8 view of the mask, not a float copy of it: the output is the only float array)
    voted = ndimage.uniform_filter(content.view(np.uint8), window, output=np.float32,
                                   mode="constant") > _CONTENT_FRACTION
    labels, count = ndimage.label(voted)
    del voted  # large frames: free each full-size temporary as soon as it is used
    if count == 0:
        return None
    sizes = _label_sizes(labels, count)[1:]
    biggest = int(np.argmax(sizes))
    if sizes[biggest] < _MIN_AREA_FRACTION * sub.size:
        return None
    largest = labels == biggest + 1
    del labels
    # The vote shifts edges by a pixel either way; the raw pixels near the voted area do not.
    near = ndimage.maximum_filter(largest, 5)
    del largest
    near &= content
    area = np.zeros(summary.shape, dtype=bool)
    area[y0:y1 + 1, x0:x1 + 1] = _fill_holes(near)
    return area


def _label_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """np.bincount of a label image in bands of rows: bincount converts its input to int64, which
    for a whole 16384 x 16384 frame is a 2 GiB copy."""
    sizes = np.zeros(count + 1, dtype=np.int64)
    step = max(1, (1 << 22) // max(labels.shape[1], 1))
    for start in range(0, labels.shape[0], step):
        sizes += np.bincount(labels[start:start + step].ravel(), minlength=count + 1)
    return sizes


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """`ndimage.binary_fill_holes` by labelling the background once: the same result, but one pass
    instead of dilating until nothing changes (minutes on a 16384 x 16384 frame)."""
    labels, count = ndimage.label(~mask)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    reaches_border = np.zeros(count + 1, dtype=bool)  # a lookup table, not np.isin (which sorts)
    reaches_border[border[border > 0]] = True
    return ~reaches_border[labels]


def convex_fill(area: np.ndarray) -> np.ndarray:
    """`area` with its convex hull filled in.

    Fans and rectangles are convex; what cuts into the scan area is tissue that happens to be
    dark (shadows, fluid, dim flanks), so the hull is closer to the true area than the pixels.
    """
    ys = np.flatnonzero(area.any(axis=1))
    rows = area[ys]
    xl = np.argmax(rows, axis=1)
    xr = area.shape[1] - 1 - np.argmax(rows[:, ::-1], axis=1)
    # Corners of the outermost pixels, so the hull contains every pixel of `area`.
    px = np.concatenate([xl - 0.5, xl - 0.5, xr + 0.5, xr + 0.5])
    py = np.concatenate([ys - 0.5, ys + 0.5, ys - 0.5, ys + 0.5])
    try:
        hull = ConvexHull(np.column_stack([px, py]))
    except QhullError:  # a line or a point: nothing to fill
        return area
    # Each facet a*x + b*y + c <= 0 bounds x on every row: a row's span is between the
    # tightest lower and upper bounds (vectorised over rows x facets).
    a, b, c = hull.equations.T
    y = np.arange(area.shape[0], dtype=np.float64)[:, np.newaxis]
    limit = (-c - b * y) / np.where(a == 0, np.nan, a)
    with np.errstate(invalid="ignore"):
        lo = np.nanmax(np.where(a < -1e-12, limit, -np.inf), axis=1)
        hi = np.nanmin(np.where(a > 1e-12, limit, np.inf), axis=1)
        rows_ok = np.all((b * y + c <= 1e-9) | (np.abs(a) > 1e-12), axis=1)
    x = np.arange(area.shape[1])
    inside = (x >= lo[:, np.newaxis] - 1e-9) & (x <= hi[:, np.newaxis] + 1e-9) & rows_ok[:, np.newaxis]
    return area | inside


@dataclass(frozen=True)
class _Fit:
    kind: FieldOfViewKind
    box: Box
    mask: np.ndarray
    apex: tuple[float, float] | None = None
    radii: tuple[float, float] | None = None
    angles: tuple[float, float] | None = None


def _fit_rectangle(area: np.ndarray) -> _Fit:
    """The rows and columns filled to at least half the fullest one (ignores small attachments)."""
    rows, cols = area.sum(axis=1), area.sum(axis=0)
    ys, xs = np.flatnonzero(rows >= 0.5 * rows.max()), np.flatnonzero(cols >= 0.5 * cols.max())
    box = (int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1]))
    return _Fit("rectangle", box, box_mask(box, area.shape))


def _fit_fan(area: np.ndarray, hull: np.ndarray, bound: Box) -> _Fit | None:
    """A fan through the left/right ends of each row (edges) and the column ends (arcs).

    Edges and outer arc come from the convex hull of the area; the inner arc, which is concave,
    from the area itself.
    """
    bx0, by0, bx1, by1 = bound
    ys = np.flatnonzero(hull.any(axis=1))
    rows = hull[ys]
    xl = np.argmax(rows, axis=1)
    xr = hull.shape[1] - 1 - np.argmax(rows[:, ::-1], axis=1)
    # Row ends on the search box border are where the box cuts the fan, not fan edges.
    height = float(ys[-1] - ys[0])
    left = _fit_edge(ys[xl > bx0], xl[xl > bx0], np.argmin, height)
    right = _fit_edge(ys[xr < bx1], xr[xr < bx1], np.argmax, height)
    if left is None or right is None:
        return None
    (al, bl), (ar, br) = left, right
    if ar - al < _MIN_FAN_OPENING:
        return None
    apex_y = (br - bl) / (al - ar)
    apex_x = al * apex_y + bl
    if apex_y > ys[0] + 0.1 * (ys[-1] - ys[0]):  # the edges must meet above the scan area
        return None
    angles = (float(np.arctan(al)), float(np.arctan(ar)))

    cols = np.flatnonzero(hull.any(axis=0))
    top = np.argmax(area[:, cols], axis=0)
    bottom = hull.shape[0] - 1 - np.argmax(hull[::-1, cols], axis=0)
    r_in = _arc_radius(cols, top, top > by0, (apex_x, apex_y), angles, default=0.0)
    r_out = _arc_radius(cols, bottom, bottom < by1, (apex_x, apex_y), angles, default=np.inf)

    # Pixel centres within half a pixel of the fitted boundary (which runs through the centres
    # of the outermost scan-area pixels) are inside.
    yy, xx = np.ogrid[by0:by1 + 1, bx0:bx1 + 1]
    dx, dy = xx - apex_x, yy - apex_y
    dist2 = dx * dx + dy * dy
    inside = ((xx >= al * yy + bl - 0.5) & (xx <= ar * yy + br + 0.5) & (dy > 0)
              & (dist2 >= max(r_in - 0.5, 0.0) ** 2) & (dist2 <= (r_out + 0.5) ** 2))
    mask = np.zeros(area.shape, dtype=bool)
    mask[by0:by1 + 1, bx0:bx1 + 1] = inside
    box = mask_box(mask)
    if box is None:
        return None
    return _Fit("fan", box, mask, (float(apex_x), float(apex_y)),
                (float(r_in), float(r_out) if np.isfinite(r_out) else float(np.sqrt(dist2.max()))),
                angles)


def _fit_edge(y: np.ndarray, x: np.ndarray, extreme: Any, height: float) -> tuple[float, float] | None:
    """Robust line x = a*y + b through one side's row ends, above the widest row.

    Below the widest row the side follows the outer arc, and at the top it may follow the inner
    arc; a fit on the middle rows, then refits on the rows within 2 px, keeps only the edge.
    """
    if y.size < 10:
        return None
    end = int(extreme(x))  # first row where the fan is widest: the edge ends there
    y, x = y[:end + 1].astype(np.float64), x[:end + 1].astype(np.float64)
    if y.size < 10:
        return None
    n = y.size
    keep = np.zeros(n, dtype=bool)
    keep[int(0.25 * n):int(0.85 * n) + 1] = True
    for _ in range(4):
        if keep.sum() < 5:
            return None
        a, b = np.polyfit(y[keep], x[keep], 1)
        keep = np.abs(x - (a * y + b)) <= 2.0
    if not keep.any() or np.ptp(y[keep]) < _MIN_EDGE_SPAN * height:
        return None  # a short piece: an arc end or a corner, not an edge
    return float(a), float(b)


def _arc_radius(cols: np.ndarray, rows: np.ndarray, usable: np.ndarray,
                apex: tuple[float, float], angles: tuple[float, float], default: float) -> float:
    """Median distance to the apex of the column ends that lie on an arc.

    Only column ends well inside the angular range (not on the straight edges) and not on the
    search box border count.
    """
    dx, dy = cols - apex[0], rows - apex[1]
    theta = np.arctan2(dx, dy)
    margin = 0.15 * (angles[1] - angles[0])
    on_arc = usable & (theta > angles[0] + margin) & (theta < angles[1] - margin)
    if on_arc.sum() < 5:
        return default
    return float(np.median(np.hypot(dx[on_arc], dy[on_arc])))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _box_area(box: Box) -> int:
    return (box[2] - box[0] + 1) * (box[3] - box[1] + 1)

"""Probe geometry: the image grid, the field of view, and the beam grid echoes are formed on.

Echoes are formed along the beams (rows = range below the skin, columns = scan lines), as a
scanner does, then scan-converted to the image. For a linear probe the beam grid is the image
grid (or the part of it the field covers, when the field is narrower or shallower than the
image); for a convex probe it is a polar grid around the apex, so speckle, shadows and enhancement
follow the fan's radial beams. A phased array is a sector too (a small virtual apex radius and a
wide angle), but its face is flat: the tissue layers stay horizontal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

from .config import GeometryRanges, VarietyRanges, uniform


@dataclass(frozen=True)
class ProbeGeometry:
    kind: str                       # "linear", "convex" or "phased"
    shape: tuple[int, int]          # image (rows, columns)
    spacing_mm: float               # isotropic pixel spacing
    radius_mm: float = 0.0          # sector: radius of the probe face (phased: of the tip) around the apex
    angle_deg: float = 0.0          # sector: opening angle of the fan
    field_px: tuple[int, int] | None = None   # linear: (rows, columns) of a field smaller than
                                              # the image, at the top, centred; None: all of it

    @property
    def sector(self) -> bool:
        return self.kind != "linear"

    @property
    def depth_mm(self) -> float:
        return self.shape[0] * self.spacing_mm

    @property
    def width_mm(self) -> float:
        return self.shape[1] * self.spacing_mm

    # ----- convex fan parameters (apex above the image, on the centre line)
    @cached_property
    def _half_angle(self) -> float:
        """Largest visible beam angle: the fan, or the image side if the fan is wider."""
        half = math.radians(self.angle_deg) / 2
        return min(half, math.asin(min(1.0, self.width_mm / 2 / self.radius_mm)))

    @cached_property
    def apex_z_mm(self) -> float:
        """Depth of the apex (negative: above the image); the face's highest visible point is row 0."""
        return -self.radius_mm * math.cos(self._half_angle) if self.sector else 0.0

    @cached_property
    def beam_range_mm(self) -> float:
        """Imaging depth along the beams; the far arc touches the bottom of the image."""
        if self.kind == "linear":
            return self.beam_shape[0] * self.spacing_mm
        return self.depth_mm - self.apex_z_mm - self.radius_mm

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "rows": self.shape[0], "columns": self.shape[1],
               "spacing_mm": self.spacing_mm, "depth_mm": self.depth_mm, "width_mm": self.width_mm}
        if self.sector:
            out.update(radius_mm=self.radius_mm, angle_deg=self.angle_deg,
                       apex_mm=[0.0, self.apex_z_mm], beam_range_mm=self.beam_range_mm)
        elif self.field_px is not None:
            out.update(field_rows=self.field_px[0], field_columns=self.field_px[1],
                       field_depth_mm=self.field_px[0] * self.spacing_mm,
                       field_width_mm=self.field_px[1] * self.spacing_mm)
        return out

    @cached_property
    def _field(self) -> tuple[slice, slice]:
        """Linear: the image rows and columns the field covers."""
        rows, cols = self.field_px or self.shape
        first = (self.shape[1] - cols) // 2
        return slice(0, rows), slice(first, first + cols)

    # ----- image grid
    @cached_property
    def _image_xz(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel centres in mm: x from the centre line, z from the top (broadcastable)."""
        rows, cols = self.shape
        x = ((np.arange(cols) + 0.5) * self.spacing_mm - self.width_mm / 2)[None, :]
        z = ((np.arange(rows) + 0.5) * self.spacing_mm)[:, None]
        return x, z

    @cached_property
    def _polar(self) -> tuple[np.ndarray, np.ndarray]:
        x, z = self._image_xz
        dz = z - self.apex_z_mm
        return np.hypot(x, dz), np.arctan2(x, dz)

    @cached_property
    def tissue_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(along-skin mm, depth below the skin mm) of every pixel: anatomy is layered in these."""
        if self.kind in ("linear", "phased"):     # flat face: layers parallel to the top
            x, z = self._image_xz
            return np.broadcast_to(x, self.shape), np.broadcast_to(z, self.shape)
        r, phi = self._polar
        return (self.radius_mm * phi).astype(np.float32), (r - self.radius_mm).astype(np.float32)

    @cached_property
    def fov_mask(self) -> np.ndarray:
        if self.kind == "linear":
            if self.field_px is None:
                return np.ones(self.shape, bool)
            fov = np.zeros(self.shape, bool)
            fov[self._field] = True
            return fov
        r, phi = self._polar
        return ((r >= self.radius_mm) & (r <= self.radius_mm + self.beam_range_mm)
                & (np.abs(phi) <= math.radians(self.angle_deg) / 2))

    def skin_angle(self, row: float, col: float) -> float:
        """Tilt of the skin surface above a pixel (radians): structures lie parallel to it."""
        if self.kind != "convex":
            return 0.0
        x = (col + 0.5) * self.spacing_mm - self.width_mm / 2
        return float(math.atan2(x, (row + 0.5) * self.spacing_mm - self.apex_z_mm))

    # ----- beam grid
    @cached_property
    def beam_shape(self) -> tuple[int, int]:
        if self.kind == "linear":
            return self.field_px or self.shape
        n_range = math.ceil(self.beam_range_mm / self.spacing_mm)
        mid_radius = self.radius_mm + self.beam_range_mm / 2
        n_lines = math.ceil(2 * self._half_angle * mid_radius / self.spacing_mm)
        return n_range, n_lines

    @cached_property
    def beam_depth_mm(self) -> np.ndarray:
        """Depth below the skin of each beam-grid row."""
        return ((np.arange(self.beam_shape[0]) + 0.5) * self.spacing_mm).astype(np.float32)

    @cached_property
    def line_spacing_mm(self) -> np.ndarray:
        """Distance between neighbouring scan lines at each beam-grid row (fans spread out)."""
        if self.kind == "linear":
            return np.full(self.beam_shape[0], self.spacing_mm, np.float32)
        dphi = 2 * self._half_angle / self.beam_shape[1]
        return ((self.radius_mm + self.beam_depth_mm) * dphi).astype(np.float32)

    @cached_property
    def _beam_to_image_coords(self) -> np.ndarray:
        """Beam-grid (row, line) coordinates of the image pixels inside the fan."""
        r, phi = (np.broadcast_to(a, self.shape) for a in self._polar)
        fov = self.fov_mask
        dphi = 2 * self._half_angle / self.beam_shape[1]
        return np.stack([(r[fov] - self.radius_mm) / self.spacing_mm - 0.5,
                         (phi[fov] + self._half_angle) / dphi - 0.5]).astype(np.float32)

    @cached_property
    def _image_to_beam_coords(self) -> np.ndarray:
        """Image (row, column) coordinates of every beam-grid sample."""
        n_range, n_lines = self.beam_shape
        r = self.radius_mm + self.beam_depth_mm[:, None]
        dphi = 2 * self._half_angle / n_lines
        phi = (-self._half_angle + (np.arange(n_lines) + 0.5) * dphi)[None, :]
        rows = (self.apex_z_mm + r * np.cos(phi)) / self.spacing_mm - 0.5
        cols = (r * np.sin(phi) + self.width_mm / 2) / self.spacing_mm - 0.5
        return np.stack([rows, cols]).astype(np.float32)

    def to_beam(self, image_map: np.ndarray, order: int = 1) -> np.ndarray:
        """Resample a map from the image grid onto the beam grid (bilinear; 0: nearest)."""
        if self.kind == "linear":
            return image_map if self.field_px is None else image_map[self._field]
        return ndimage.map_coordinates(image_map, self._image_to_beam_coords, order=order,
                                       mode="nearest")

    def to_image(self, beam_map: np.ndarray) -> np.ndarray:
        """Scan-convert a beam-grid map to the image grid (bilinear); 0 outside the fan."""
        if self.kind == "linear":
            if self.field_px is None:
                return beam_map
            out = np.zeros(self.shape, beam_map.dtype)
            out[self._field] = beam_map
            return out
        out = np.zeros(self.shape, beam_map.dtype)
        out[self.fov_mask] = ndimage.map_coordinates(beam_map, self._beam_to_image_coords,
                                                     order=1, mode="nearest")
        return out


def _square_spacing_bounds(side: tuple[int, int], ranges: GeometryRanges) -> tuple[float, float]:
    rows, cols = side
    low = max(ranges.spacing_mm[0], ranges.depth_mm[0] / rows, ranges.width_mm[0] / cols)
    high = min(ranges.spacing_mm[1], ranges.depth_mm[1] / rows, ranges.width_mm[1] / cols)
    return low, high


def check_size(size: int | tuple[int, int], ranges: GeometryRanges = GeometryRanges()) -> tuple[int, int]:
    """Validate a requested image size; ValueError names the problem."""
    rows, cols = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    lo_px, hi_px = ranges.side_px
    if not (lo_px <= rows <= hi_px and lo_px <= cols <= hi_px):
        raise ValueError(f"image sides must be {lo_px}-{hi_px} px, got {rows} x {cols}")
    low, high = _square_spacing_bounds((rows, cols), ranges)
    if low > high:
        raise ValueError(f"no pixel spacing in {ranges.spacing_mm} mm gives a depth in "
                         f"{ranges.depth_mm} mm and a width in {ranges.width_mm} mm "
                         f"for {rows} x {cols} px")
    return int(rows), int(cols)


def sample_geometry(rng: np.random.Generator, size: int | tuple[int, int] | None,
                    probe: str | None, ranges: GeometryRanges,
                    variety: VarietyRanges | None = None) -> ProbeGeometry:
    if probe is not None:
        kind = probe
    elif variety is None:
        kind = "convex" if rng.random() < ranges.convex_probability else "linear"
    else:
        weights = np.asarray(variety.probe_weights, float)
        kind = str(("linear", "convex", "phased")[rng.choice(3, p=weights / weights.sum())])
    if size is None:
        # Spacing first, then sides that keep depth, width and side length in range.
        spacing = uniform(rng, (ranges.spacing_mm[0], ranges.width_mm[1] / ranges.side_px[0]))
        def side(mm: tuple[float, float]) -> int:
            lo = max(ranges.side_px[0], math.ceil(mm[0] / spacing))
            hi = min(ranges.side_px[1], math.floor(mm[1] / spacing))
            return int(rng.integers(lo, hi + 1))
        shape = (side(ranges.depth_mm), side(ranges.width_mm))
    else:
        shape = check_size(size, ranges)
        spacing = uniform(rng, _square_spacing_bounds(shape, ranges))
    if kind == "phased":
        return ProbeGeometry("phased", shape, spacing, radius_mm=uniform(rng, ranges.phased_radius_mm),
                             angle_deg=uniform(rng, ranges.phased_angle_deg))
    if variety is None:
        if kind == "linear":
            return ProbeGeometry("linear", shape, spacing)
        return ProbeGeometry("convex", shape, spacing,
                             radius_mm=uniform(rng, ranges.convex_radius_mm),
                             angle_deg=uniform(rng, ranges.convex_angle_deg))
    if kind == "linear":
        field = None
        if rng.random() < variety.partial_field_probability:
            # Narrower (taller-than-wide field) or shallower (wider-than-deep) than the image.
            fraction = uniform(rng, variety.field_fraction)
            field = ((round(shape[0] * fraction), shape[1]) if rng.random() < 0.35
                     else (shape[0], round(shape[1] * fraction)))
        return ProbeGeometry("linear", shape, spacing, field_px=field)
    # Convex: the opening angle first, then a radius whose face fits in the image width (so the
    # fan's edges and the black corners are visible, as scanners show a convex image).
    angle = uniform(rng, variety.convex_angle_deg)
    width = shape[1] * spacing
    fit = variety.convex_fit * width / 2 / math.sin(math.radians(angle) / 2)
    low, high = variety.convex_radius_mm
    radius = uniform(rng, (min(low, fit), min(high, fit)))
    return ProbeGeometry("convex", shape, spacing, radius_mm=radius, angle_deg=angle)

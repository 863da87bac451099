"""Image geometry: pixel spacing, origin and direction, and the IJK-to-RAS matrix Slicer uses.

Conventions (the same as Slicer's):
- I runs along image columns (x, left to right), J along rows (y, top to bottom), K along frames.
  A numpy array of a 2D image is indexed [row, column] = [J, I]; a cine is [frame, row, column].
- Physical space is RAS in millimetres. Files in LPS (DICOM, ITK, NRRD written by slicerio)
  are converted with `LPS_TO_RAS`.
- An image with no position information (PNG, most ultrasound DICOM) gets ITK's default
  placement: origin 0 and identity direction in LPS. That is where Slicer itself puts such an
  image when it loads the file, so outputs written with this geometry overlay the image there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# A frame pitch for cine loops: frames have no physical spacing; Slicer shows them as slices 1 mm apart.
DEFAULT_FRAME_SPACING_MM = 1.0

# Pixel spacings outside this range are not ultrasound images and most likely a unit error.
PLAUSIBLE_SPACING_MM = (1e-4, 10.0)


def _as_tuple3(values: object, name: str) -> tuple[float, float, float]:
    arr = np.asarray(values, dtype=float).reshape(-1)
    if arr.size != 3:
        raise ValueError(f"{name} needs 3 values, got {arr.size}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


@dataclass(frozen=True)
class Geometry:
    """Where the pixels of an image lie in patient (RAS) space."""

    spacing: tuple[float, float, float] = (1.0, 1.0, DEFAULT_FRAME_SPACING_MM)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # Columns are the RAS directions of the I, J and K axes.
    direction: tuple[tuple[float, float, float], ...] = field(
        default_factory=lambda: tuple(map(tuple, LPS_TO_RAS.tolist())))
    # False when the spacing is a 1 mm placeholder: sizes are then in pixels, not millimetres.
    calibrated: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", _as_tuple3(self.spacing, "spacing"))
        object.__setattr__(self, "origin", _as_tuple3(self.origin, "origin"))
        d = np.asarray(self.direction, dtype=float)
        if d.shape != (3, 3):
            raise ValueError(f"direction must be 3x3, got {d.shape}")
        object.__setattr__(self, "direction", tuple(tuple(float(v) for v in row) for row in d))
        for s in self.spacing:
            if not math.isfinite(s) or s <= 0:
                raise ValueError(f"spacing must be finite and positive, got {self.spacing}")
        if not all(math.isfinite(v) for v in self.origin):
            raise ValueError(f"origin must be finite, got {self.origin}")
        if abs(abs(np.linalg.det(d)) - 1.0) > 1e-3:
            raise ValueError("direction must be an orthonormal matrix")

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def for_pixels(cls, spacing_x_mm: float, spacing_y_mm: float, *, calibrated: bool = True,
                   frame_spacing_mm: float = DEFAULT_FRAME_SPACING_MM) -> "Geometry":
        """Geometry of an image without position information (ITK's default placement)."""
        return cls(spacing=(spacing_x_mm, spacing_y_mm, frame_spacing_mm), calibrated=calibrated)

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray, *, calibrated: bool = True) -> "Geometry":
        m = np.asarray(matrix, dtype=float)
        if m.shape != (4, 4):
            raise ValueError(f"IJK-to-RAS must be 4x4, got {m.shape}")
        axes = m[:3, :3]
        spacing = np.linalg.norm(axes, axis=0)
        if np.any(spacing <= 0):
            raise ValueError("IJK-to-RAS matrix has a zero-length axis")
        return cls(spacing=spacing, origin=m[:3, 3], direction=axes / spacing, calibrated=calibrated)

    @classmethod
    def from_lps(cls, spacing: object, origin_lps: object, direction_lps: object, *,
                 calibrated: bool = True) -> "Geometry":
        """From ITK / DICOM / NRRD conventions (LPS)."""
        origin = LPS_TO_RAS @ np.asarray(origin_lps, dtype=float).reshape(3)
        direction = LPS_TO_RAS @ np.asarray(direction_lps, dtype=float).reshape(3, 3)
        return cls(spacing=spacing, origin=origin, direction=direction, calibrated=calibrated)

    # -- matrices -----------------------------------------------------------------------------
    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float)

    @property
    def spacing_x(self) -> float:
        return self.spacing[0]

    @property
    def spacing_y(self) -> float:
        return self.spacing[1]

    def ijk_to_ras(self) -> np.ndarray:
        """The 4x4 matrix Slicer stores in a volume node (`GetIJKToRASMatrix`)."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix * np.asarray(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras())

    def ijk_to_lps(self) -> np.ndarray:
        m = self.ijk_to_ras()
        m[:3, :] = LPS_TO_RAS @ m[:3, :]
        return m

    @property
    def origin_lps(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in LPS_TO_RAS @ np.asarray(self.origin))  # type: ignore[return-value]

    @property
    def direction_lps(self) -> np.ndarray:
        return LPS_TO_RAS @ self.direction_matrix

    def ijk_to_ras_points(self, ijk: np.ndarray) -> np.ndarray:
        """Map (N, 3) continuous IJK indices to RAS millimetres."""
        pts = np.atleast_2d(np.asarray(ijk, dtype=float))
        m = self.ijk_to_ras()
        return pts @ m[:3, :3].T + m[:3, 3]

    def ras_to_ijk_points(self, ras: np.ndarray) -> np.ndarray:
        pts = np.atleast_2d(np.asarray(ras, dtype=float))
        m = self.ras_to_ijk()
        return pts @ m[:3, :3].T + m[:3, 3]

    def with_spacing(self, spacing_x_mm: float, spacing_y_mm: float, *, calibrated: bool) -> "Geometry":
        return Geometry(spacing=(spacing_x_mm, spacing_y_mm, self.spacing[2]), origin=self.origin,
                        direction=self.direction, calibrated=calibrated)

    def pixel_area_mm2(self) -> float:
        return self.spacing[0] * self.spacing[1]

    def to_dict(self) -> dict[str, object]:
        return {"spacing_mm": list(self.spacing), "origin_ras": list(self.origin),
                "direction_ras": [list(r) for r in self.direction], "calibrated": self.calibrated,
                "ijk_to_ras": self.ijk_to_ras().tolist()}

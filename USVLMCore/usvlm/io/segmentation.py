"""What the writers take: named, coloured, coded binary masks on the source image grid.

A mask is (H, W) for a single image or (T, H, W) for a cine, indexed like the source pixels
([row, column] = [J, I], frames along K), so it overlays the source with the source's `Geometry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from usvlm.io.geometry import Geometry
from usvlm.oneline import one_line_problem
from usvlm.text.terminology import DEFAULT_TERMINOLOGY, RGB, Terminology

DEFAULT_COLOR: RGB = (1.0, 0.0, 0.0)


@dataclass
class Segment:
    """One structure: a name, a display colour (RGB 0-1), its terminology and its binary mask."""

    name: str
    mask: np.ndarray
    color: RGB = DEFAULT_COLOR
    terminology: Terminology = field(default_factory=lambda: DEFAULT_TERMINOLOGY)

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask)
        if mask.ndim not in (2, 3) or 0 in mask.shape:
            raise ValueError(f"segment {self.name!r}: mask must be (H, W) or (T, H, W), "
                             f"got shape {mask.shape}")
        self.mask = mask.astype(bool, copy=False)
        color = tuple(float(c) for c in self.color)
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"segment {self.name!r}: colour must be 3 values in 0-1, got {self.color}")
        self.color = color  # type: ignore[assignment]
        if not self.name.strip() or one_line_problem(self.name):
            # Names go into NRRD header lines and DICOM strings: one line of text.
            raise ValueError(f"segment name must be one non-empty line of text, got {self.name!r}")

    @property
    def frames(self) -> np.ndarray:
        """The mask with a leading frame axis: (T, H, W)."""
        return self.mask if self.mask.ndim == 3 else self.mask[np.newaxis]


def mask_shape(segments: Sequence[Segment]) -> tuple[int, ...]:
    """The common mask shape of `segments` (ValueError when there are none or they differ)."""
    if not segments:
        raise ValueError("no segments to write")
    shapes = {s.mask.shape for s in segments}
    if len(shapes) != 1:
        raise ValueError(f"segment masks differ in shape: {sorted(shapes)}")
    return shapes.pop()


def stacked_frames(segments: Sequence[Segment]) -> np.ndarray:
    """(T, H, W, S) boolean array of all segments, segment s at [..., s]."""
    mask_shape(segments)
    return np.stack([s.frames for s in segments], axis=-1)


@dataclass
class SegmentationResult:
    """Segments of one image and the geometry of that image."""

    segments: list[Segment]
    geometry: Geometry = field(default_factory=Geometry)

    def __post_init__(self) -> None:
        mask_shape(self.segments)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.segments[0].mask.shape

    @property
    def is_cine(self) -> bool:
        return len(self.shape) == 3

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.segments]

    def segment(self, name: str) -> Segment:
        for s in self.segments:
            if s.name == name:
                return s
        raise KeyError(f"no segment named {name!r}; segments: {', '.join(self.names)}")

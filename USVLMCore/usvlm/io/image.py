"""The one image type of the project: pixels + `Geometry` + what the source file said."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from usvlm.io.geometry import Geometry

# Where the pixel spacing came from. `image_header`: the spacing of a NRRD / NIfTI / MHA file;
# `user`: given on the command line or by the caller.
SpacingSource = Literal["ultrasound_region", "pixel_spacing", "imager_pixel_spacing", "image_header", "user",
                        "none"]
FieldOfViewSource = Literal["ultrasound_region", "estimated", "full_image"]


@dataclass(frozen=True)
class UltrasoundRegion:
    """One item of the DICOM Sequence of Ultrasound Regions (bounds inclusive, as in DICOM)."""

    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: int  # 1 = 2D tissue/flow, 2 = M-mode, 3 = spectral, 4 = waveform ...
    data_type: int  # 1 = tissue, 2 = colour flow, 3 = PW spectral ...
    units_x: int  # 3 = cm, 4 = seconds, 0 = none ...
    units_y: int
    delta_x: float  # physical units per pixel
    delta_y: float

    @property
    def is_2d_tissue_in_cm(self) -> bool:
        """A B-mode region whose pixel size is given in centimetres."""
        return (self.spatial_format == 1 and self.units_x == 3 and self.units_y == 3
                and self.delta_x > 0 and self.delta_y > 0)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ImageInfo:
    """What the source said about the image (never patient attributes: those stay in the file)."""

    path: str | None = None
    format: str = "array"
    modality: str | None = None
    photometric: str = "MONOCHROME2"
    spacing_source: SpacingSource = "none"
    regions: list[UltrasoundRegion] = field(default_factory=list)
    # [x0, y0, x1, y1] in pixels, inclusive, clipped to the image.
    field_of_view: tuple[int, int, int, int] | None = None
    field_of_view_source: FieldOfViewSource = "full_image"
    frame_time_ms: float | None = None
    transfer_syntax: str | None = None
    warnings: list[str] = field(default_factory=list)
    # The DICOM header without pixel data; DICOM SEG export references it.
    dicom_header: Any = None


@dataclass
class USImage:
    """An ultrasound image: a single frame (H, W) / (H, W, 3) or a cine (T, H, W) / (T, H, W, 3)."""

    pixels: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)
    info: ImageInfo = field(default_factory=ImageInfo)
    is_rgb: bool = False
    is_cine: bool = False

    def __post_init__(self) -> None:
        expected = 2 + int(self.is_rgb) + int(self.is_cine)
        if self.pixels.ndim != expected:
            raise ValueError(f"pixels of shape {self.pixels.shape} do not match "
                             f"is_rgb={self.is_rgb}, is_cine={self.is_cine}")
        if self.is_rgb and self.pixels.shape[-1] != 3:
            raise ValueError(f"an RGB image needs 3 channels, got shape {self.pixels.shape}")

    @property
    def frames(self) -> int:
        return int(self.pixels.shape[0]) if self.is_cine else 1

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[1 if self.is_cine else 0])

    @property
    def columns(self) -> int:
        return int(self.pixels.shape[2 if self.is_cine else 1])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.rows, self.columns)

    def as_frames(self) -> np.ndarray:
        """Pixels with a leading frame axis: (T, H, W) or (T, H, W, 3)."""
        return self.pixels if self.is_cine else self.pixels[np.newaxis]

    def frame(self, index: int) -> "USImage":
        if not 0 <= index < self.frames:
            raise IndexError(f"frame {index} out of range (image has {self.frames})")
        return replace(self, pixels=self.as_frames()[index], is_cine=False)

    def grey(self) -> "USImage":
        """The same image with colour converted to luminance (grey images are returned as is)."""
        from usvlm.io.color import rgb_to_luminance

        if not self.is_rgb:
            return self
        return replace(self, pixels=rgb_to_luminance(self.pixels), is_rgb=False,
                       info=replace(self.info, photometric="MONOCHROME2"))

    def field_of_view_mask(self) -> np.ndarray:
        """Boolean (H, W) mask of the field-of-view rectangle (all true when unknown)."""
        mask = np.zeros(self.frame_shape, dtype=bool)
        if self.info.field_of_view is None:
            mask[:] = True
        else:
            x0, y0, x1, y1 = self.info.field_of_view
            mask[y0:y1 + 1, x0:x1 + 1] = True
        return mask

"""Pixel spacing from a DICOM header alone, by the same rule the reader applies to a file.

Slicer's DICOM plugins load an ultrasound image with 1 mm spacing when the file has none, and
without saying so; the module then sends the instance's header (no pixel data) to the engine,
which decides here whether the image is calibrated, where the field of view lies and what the
spacing is. One rule (`dicom_reader.calibrate`), not a copy of it on the Slicer side.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

from usvlm.errors import InputError
from usvlm.io.image import ImageInfo

# A header without its pixel data is a few KB; a private blob or an icon can make it larger.
MAX_HEADER_BYTES = 8 << 20


@dataclass(frozen=True)
class HeaderCalibration:
    spacing_mm: tuple[float, float]  # (x, y); (1, 1) when not calibrated
    calibrated: bool
    source: str  # ultrasound_region | pixel_spacing | imager_pixel_spacing | none
    field_of_view: tuple[int, int, int, int] | None  # [x0, y0, x1, y1], inclusive
    rows: int
    columns: int
    warnings: tuple[str, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_from_header(data: bytes, source: str = "DICOM header") -> HeaderCalibration:
    """The calibration of the image whose DICOM header (a DICOM file without, or with, its pixel
    data) is `data`. A header that cannot be read, or that lacks Rows / Columns, is an InputError."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from usvlm.io.dicom_reader import calibrate

    if len(data) > MAX_HEADER_BYTES:
        raise InputError(source, f"DICOM header of {len(data)} bytes is too large "
                                 f"(at most {MAX_HEADER_BYTES})")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (InvalidDicomError, AttributeError, TypeError, ValueError, EOFError, OSError, KeyError):
        raise InputError(source, "not a readable DICOM header with Rows and Columns") from None
    except RecursionError:
        raise InputError(source, "DICOM header nested too deeply") from None
    info = ImageInfo(path=source, format="dicom-header")
    spacing, calibrated = calibrate(Path(source), ds, info, rows, columns)
    return HeaderCalibration((float(spacing[0]), float(spacing[1])), calibrated, info.spacing_source,
                             info.field_of_view, rows, columns, tuple(info.warnings))

"""Is a volume's pixel spacing a measurement or a placeholder? (stdlib only, Python 3.9)

Sizes are reported in mm only when the spacing was measured: from the DICOM header's ultrasound
regions or pixel spacing (read by the engine, see dicom_header.py), or from an image format that
stores spacing (NRRD, NIfTI, MetaImage). Slicer's DICOM plugin puts 1 mm where the header has no
spacing, and a PNG or JPEG has none: those images are uncalibrated and reported in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from .engine_client import Calibration

# File types whose headers carry a physical spacing.
SPACING_FORMATS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".vtk", ".vti")


@dataclass(frozen=True)
class VolumeCalibration:
    spacing: Tuple[float, float]  # (x, y) mm per pixel; a placeholder when not calibrated
    calibrated: bool
    source: str  # one line for the panel: where the spacing came from

    def describe(self) -> str:
        if self.calibrated:
            return f"{self.spacing[0]:.3g} x {self.spacing[1]:.3g} mm per pixel ({self.source})"
        return f"uncalibrated: sizes in pixels ({self.source})"


def volume_calibration(spacing: Tuple[float, float], file_name: Optional[str] = None,
                       dicom: Optional[Calibration] = None) -> VolumeCalibration:
    """The calibration of a volume with `spacing` (from its IJK-to-RAS), loaded from `file_name`
    (None: made in the scene, or a sequence item), with `dicom` the engine's reading of its DICOM
    header when it came from the DICOM database."""
    if dicom is not None:
        if dicom.calibrated:
            return VolumeCalibration(tuple(dicom.spacing_mm), True,  # type: ignore[arg-type]
                                     "DICOM " + dicom.source.replace("_", " "))
        return VolumeCalibration(spacing, False, "the DICOM header has no ultrasound region or pixel spacing")
    name = (file_name or "").lower()
    if name.endswith(SPACING_FORMATS):
        return VolumeCalibration(spacing, True, "the image file's header")
    if name:
        return VolumeCalibration(spacing, False, "the image file stores no pixel spacing")
    if tuple(round(s, 9) for s in spacing) == (1.0, 1.0):
        return VolumeCalibration(spacing, False, "spacing 1 x 1, a placeholder")
    return VolumeCalibration(spacing, True, "the volume's geometry")

"""Write a synthetic grey image as a US Image Storage DICOM with a calibrated ultrasound region.

Used to make the bundled sample and test fixtures: a DICOM whose pixel spacing and field of view
are known exactly, as a scanner would store them (Sequence of Ultrasound Regions, cm units).
Patient attributes are placeholders; nothing here is real personal data.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (PYDICOM_ROOT_UID, ExplicitVRLittleEndian, UltrasoundImageStorage,
                         UltrasoundMultiFrameImageStorage, generate_uid)

from usvlm.io.atomic import atomic_output

def _uid(*parts: object) -> str:
    """Deterministic UIDs from the seed (under pydicom's root): the same sample is bit-identical on
    every machine. (With prefix=None pydicom ignores the entropy and returns a random UUID UID.)"""
    return generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["usvlm-us-dicom", *map(str, parts)])


def write_us_dicom(path: str | Path, pixels: np.ndarray, spacing_mm: tuple[float, float], *,
                   region: tuple[int, int, int, int] | None = None, seed: int = 0,
                   description: str = "USVLM phantom", frame_time_ms: float = 33.3) -> Path:
    """Write (H, W) or (T, H, W) uint8 pixels as MONOCHROME2 ultrasound (cine when T > 1).

    `spacing_mm` is (x, y); `region` the B-mode area [x0, y0, x1, y1] (whole image by default).
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError("pixels must be uint8 (H, W) or (T, H, W)")
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    rows, columns = pixels.shape[-2:]
    x0, y0, x1, y1 = region or (0, 0, columns - 1, rows - 1)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = _uid(seed, "sop", description)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_ROOT_UID + "1"

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(seed, "study")
    ds.SeriesInstanceUID = _uid(seed, "series", description)
    date = datetime.date(2026, 1, 1).strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "US"
    ds.Manufacturer = "USVLM"
    ds.ManufacturerModelName = "USVLM-Phantom v1"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = f"PHANTOM-{seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.SeriesDescription = description[:64]
    ds.Laterality = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameTime = f"{frame_time_ms:.3f}"
        ds.FrameIncrementPointer = 0x00181063  # Frame Time

    item = Dataset()
    item.RegionSpatialFormat = 1  # 2D
    item.RegionDataType = 1  # tissue
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = int(x0), int(y0)
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = int(x1), int(y1)
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3  # cm
    item.PhysicalDeltaX = spacing_mm[0] / 10.0
    item.PhysicalDeltaY = spacing_mm[1] / 10.0
    item.ReferencePixelX0 = item.ReferencePixelY0 = 0
    ds.SequenceOfUltrasoundRegions = Sequence([item])
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()

    path = Path(path)
    with atomic_output(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path

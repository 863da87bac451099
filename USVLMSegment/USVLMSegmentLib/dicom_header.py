"""The DICOM header of a volume Slicer loaded from its DICOM database, for the engine to calibrate.

Slicer's DICOM plugins store the instance UIDs of a loaded volume in its `DICOM.instanceUIDs`
attribute (space-separated; DICOMScalarVolumePlugin, DICOMImageSequencePlugin) and the database
maps a UID to its file (`slicer.dicomDatabase.fileForInstance`). The header is read with the
pydicom that Slicer bundles (2.4 in Slicer 5.8 and 5.10) without the pixel data, and sent to the
engine (`EngineClient.calibration`), which applies the core reader's spacing rule.
"""

from __future__ import annotations

import io
from typing import Any, Optional

# A header without pixel data is a few KB; refuse to send anything unreasonably large.
MAX_HEADER_BYTES = 8 << 20


def header_bytes(path: str) -> bytes:
    """The DICOM file at `path` without its pixel data, as bytes (pydicom 2.4 or 3)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    buffer = io.BytesIO()
    ds.save_as(buffer)  # as read: the defaults of pydicom 2 and 3 keep the file as it is
    data = buffer.getvalue()
    if len(data) > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: DICOM header of {len(data)} bytes is too large to send")
    return data


def volume_dicom_file(volume_node: Any, dicom_database: Any) -> Optional[str]:
    """The file of the first DICOM instance a volume node was loaded from, or None for a volume
    that did not come from the DICOM database (a NRRD, a PNG: their spacing is what the file said)."""
    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids or dicom_database is None:
        return None
    path = dicom_database.fileForInstance(uids[0])
    return path or None

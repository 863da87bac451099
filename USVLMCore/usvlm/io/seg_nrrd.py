"""Slicer segmentation files (.seg.nrrd) through slicerio.

The segmentation has the geometry of the source image, so Slicer shows it over the source. A 2D
image is a single-slice volume; a cine is a volume with frames along K. slicerio indexes voxels
[i, j, k] (NRRD's Fortran order), our masks [k, j, i]: the two differ by a transpose.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import slicerio

from usvlm.errors import InputError
from usvlm.io.atomic import atomic_output
from usvlm.io.geometry import LPS_TO_RAS, Geometry
from usvlm.io.segmentation import DEFAULT_COLOR, Segment, SegmentationResult, mask_shape
from usvlm.text.terminology import DEFAULT_TERMINOLOGY, Terminology


def write_seg_nrrd(path: str | os.PathLike[str], segments: Sequence[Segment], geometry: Geometry,
                   *, compression_level: int = 6) -> Path:
    """Write `segments` (masks on the source grid) as a Slicer .seg.nrrd with the source geometry."""
    shape = mask_shape(segments)
    frames = shape[0] if len(shape) == 3 else 1
    segmentation = slicerio.create_segmentation((shape[-1], shape[-2], frames), geometry.ijk_to_lps())
    segmentation["containedRepresentationNames"] = ["Binary labelmap"]  # as Slicer writes it
    for index, segment in enumerate(segments, start=1):
        # add_segment puts overlapping segments in extra layers, as Slicer does.
        slicerio.add_segment(segmentation, segment.frames.transpose(2, 1, 0), {
            "id": f"Segment_{index}",
            "name": segment.name,
            "color": list(segment.color),
            "terminology": segment.terminology.to_slicer_dict(),
        })
    with atomic_output(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=compression_level)
    return Path(path)


def read_seg_nrrd(path: str | os.PathLike[str]) -> SegmentationResult:
    """Read a .seg.nrrd into masks ((H, W) for a single slice, else (T, H, W)) and geometry."""
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(path, f"not a readable segmentation file ({exc})") from exc
    voxels = segmentation["voxels"]
    if voxels is None or not segmentation.get("segments"):
        raise InputError(path, "segmentation file has no segments")

    ijk_to_ras = np.asarray(segmentation["ijkToLPS"], dtype=float).copy()
    ijk_to_ras[:3, :] = LPS_TO_RAS @ ijk_to_ras[:3, :]
    geometry = Geometry.from_ijk_to_ras(ijk_to_ras)

    segments = []
    for info in segmentation["segments"]:
        frames = slicerio.segment_mask(segmentation, info).transpose(2, 1, 0)
        terminology = info.get("terminology")
        segments.append(Segment(
            name=info.get("name", info["id"]),
            mask=frames[0] if frames.shape[0] == 1 else frames,
            color=tuple(info.get("color", DEFAULT_COLOR)),  # type: ignore[arg-type]
            terminology=Terminology.from_slicer(terminology) if terminology else DEFAULT_TERMINOLOGY,
        ))
    return SegmentationResult(segments=segments, geometry=geometry)

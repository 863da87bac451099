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
from usvlm.io import nrrd_names
from usvlm.io.atomic import atomic_output
from usvlm.io.geometry import LPS_TO_RAS, Geometry
from usvlm.io.itk_data import check_data
from usvlm.io.itk_header import read_header
from usvlm.io.limits import check_pixel_bytes
from usvlm.io.segmentation import DEFAULT_COLOR, Segment, SegmentationResult, mask_shape
from usvlm.text.terminology import DEFAULT_TERMINOLOGY, Terminology


def write_seg_nrrd(path: str | os.PathLike[str], segments: Sequence[Segment], geometry: Geometry,
                   *, compression_level: int = 6) -> Path:
    """Write `segments` (masks on the source grid) as a Slicer .seg.nrrd with the source geometry."""
    shape = mask_shape(segments)
    frames = shape[0] if len(shape) == 3 else 1
    segmentation = slicerio.create_segmentation((shape[-1], shape[-2], frames), geometry.ijk_to_lps())
    segmentation["containedRepresentationNames"] = ["Binary labelmap"]  # as Slicer writes it
    utf8_names: dict[str, str] = {}  # placeholder -> name (pynrrd writes ASCII only)
    for index, segment in enumerate(segments, start=1):
        name = segment.name
        if nrrd_names.needs_placeholder(name):
            name = nrrd_names.placeholder(index)
            utf8_names[name] = segment.name
        # add_segment puts overlapping segments in extra layers, as Slicer does.
        slicerio.add_segment(segmentation, segment.frames.transpose(2, 1, 0), {
            "id": f"Segment_{index}",
            "name": name,
            "color": list(segment.color),
            "terminology": segment.terminology.to_slicer_dict(),
        })
    with atomic_output(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=compression_level)
        nrrd_names.put_names(tmp, utf8_names)
    return Path(path)


def read_seg_nrrd(path: str | os.PathLike[str]) -> SegmentationResult:
    """Read a .seg.nrrd into masks ((H, W) for a single slice, else (T, H, W)) and geometry."""
    if not Path(path).is_file():
        raise InputError(path, "file not found")
    if Path(path).stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    _check_header(Path(path))
    try:
        # slicerio and pynrrd raise many types for damaged files (StopIteration, zlib.error,
        # ImportError for NIfTI without nibabel, ...): any of them means an unusable file.
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"not a readable segmentation file ({_reason(exc)})") from exc
    voxels = segmentation["voxels"]
    if voxels is None or not segmentation.get("segments"):
        raise InputError(path, "segmentation file has no segments")
    if voxels.ndim not in (3, 4):
        raise InputError(path, f"segmentation voxels have {voxels.ndim} dimensions; expected 3 "
                               "(one layer) or 4 (layers)")
    _check_segment_labels(path, segmentation["segments"], voxels)

    try:
        ijk_to_ras = np.asarray(segmentation["ijkToLPS"], dtype=float).copy()
        ijk_to_ras[:3, :] = LPS_TO_RAS @ ijk_to_ras[:3, :]
        geometry = Geometry.from_ijk_to_ras(ijk_to_ras)
    except (ValueError, TypeError) as exc:
        raise InputError(path, f"invalid geometry in the segmentation header ({_reason(exc)})") from exc

    segments = []
    utf8_names = nrrd_names.read_names(path)  # pynrrd drops non-ASCII bytes of names
    for index, info in enumerate(segmentation["segments"]):
        try:
            frames = slicerio.segment_mask(segmentation, info).transpose(2, 1, 0)
            terminology = info.get("terminology")
            segments.append(Segment(
                name=utf8_names.get(f"Segment{index}_Name") or info.get("name", info["id"]),
                mask=frames[0] if frames.shape[0] == 1 else frames,
                color=tuple(info.get("color", DEFAULT_COLOR)),  # type: ignore[arg-type]
                terminology=Terminology.from_slicer(terminology) if terminology else DEFAULT_TERMINOLOGY,
            ))
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise InputError(path, f"segment {info.get('id', '?')!r} cannot be read "
                                   f"({_reason(exc)})") from exc
    return SegmentationResult(segments=segments, geometry=geometry)


def _check_header(path: Path) -> None:
    """pynrrd follows a detached data file anywhere and allocates what the header claims: the
    header and its data are checked as for images first (same folder, regular file, size)."""
    with open(path, "rb") as fh:
        if not fh.read(8).startswith(b"NRRD000"):
            return  # not NRRD: slicerio gives the error
    facts = read_header(path)
    problem = check_pixel_bytes(facts.nbytes)
    if problem:
        raise InputError(path, problem)
    check_data(path, facts)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:160] if text else "") or type(exc).__name__


def _check_segment_labels(path: str | os.PathLike[str], segments: list[dict], voxels: np.ndarray) -> None:
    """Segment IDs are unique, and no two segments share a label value in a layer (Slicer never
    writes either: such a file would give two segments the same mask)."""
    layers = voxels.shape[0] if voxels.ndim == 4 else 1
    ids: set[str] = set()
    owners: dict[tuple[int, int], str] = {}
    for info in segments:
        segment_id = str(info.get("id"))
        if segment_id in ids:
            raise InputError(path, f"segment ID {segment_id!r} is used by two segments")
        ids.add(segment_id)
        layer, label = info.get("layer", 0), info.get("labelValue", 1)
        if not 0 <= layer < layers:
            raise InputError(path, f"segment {segment_id!r} is in layer {layer}, but the file has "
                                   f"{layers} layer(s)")
        if (layer, label) in owners:
            raise InputError(path, f"segments {owners[layer, label]!r} and {segment_id!r} both use label "
                                   f"value {label} in layer {layer}")
        owners[layer, label] = segment_id

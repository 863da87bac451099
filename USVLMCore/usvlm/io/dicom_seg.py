"""DICOM Segmentation (binary SEG) through highdicom, referencing the source ultrasound instance.

Ultrasound images have no patient coordinate system (no Image Position / Orientation (Patient),
no Pixel Measures). For such sources a SEG frame is tied to its source by the Derivation Image
Functional Group (same pixel grid, "Spatial Locations Preserved"), which highdicom writes.

highdicom (0.28; issue ImagingDataCommons/highdicom#284) only does this for a single source frame.
For a multi-frame cine we let highdicom build the SEG of one frame from a single-frame view of the
source, then give each SEG frame its source frame: Referenced Frame Number in the derivation
reference, and Temporal Position Index as the second dimension after the segment number.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.pixels import pack_bits
from pydicom.uid import UltrasoundImageStorage
from pydicom.valuerep import PersonName

from usvlm import __version__
from usvlm.errors import InputError
from usvlm.io.atomic import atomic_output
from usvlm.io.deidentify import WRITER_OWN, apply_basic_profile
from usvlm.io.image import USImage
from usvlm.io.segmentation import Segment, stacked_frames

MANUFACTURER = "USVLM"
ALGORITHM_NAME = "USVLM"
SERIES_NUMBER = 900  # well clear of the series numbers scanners use

_NEEDS_DICOM = "DICOM SEG needs a DICOM source image"


def _source_header(source: USImage | Dataset) -> tuple[Dataset, str]:
    """The source DICOM header and a name for messages."""
    if isinstance(source, Dataset):
        return source, str(getattr(source, "filename", None) or "source image")
    name = source.info.path or "source image"
    if source.info.dicom_header is None:
        raise InputError(name, f"{_NEEDS_DICOM}; this image is {source.info.format}")
    return source.info.dicom_header, name


def _source_frames(header: Dataset) -> int | None:
    """Number of frames of a multi-frame source, None for a single-frame one."""
    return int(header.NumberOfFrames) if "NumberOfFrames" in header else None


def _segment_description(number: int, segment: Segment, algorithm_version: str) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    codes_ = segment.terminology.to_highdicom()
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.name.replace("\\", "/")[:64],  # LO: 64 characters, no backslash
        segmented_property_category=codes_.category,
        segmented_property_type=codes_.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence,
            version=algorithm_version, source=MANUFACTURER),
        anatomic_regions=codes_.anatomic_regions,
        display_color=hd.color.CIELabColor.from_rgb(*(round(c * 255) for c in segment.color)),
    )
    # highdicom has no arguments for modifiers; they nest in the item they modify.
    if codes_.type_modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            codes_.type_modifier]
    if codes_.anatomic_region_modifier is not None and "AnatomicRegionSequence" in description:
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
            codes_.anatomic_region_modifier]
    return description


def _single_frame_view(header: Dataset) -> Dataset:
    """The header as a single-frame ultrasound image, which highdicom can reference."""
    view = copy.deepcopy(header)
    view.SOPClassUID = UltrasoundImageStorage
    for keyword in ("NumberOfFrames", "FrameIncrementPointer"):
        if keyword in view:
            delattr(view, keyword)
    return view


def _restore_sop_class(dataset: Dataset, instance_uid: str, sop_class_uid: str) -> None:
    """Point every reference to `instance_uid` back at its real SOP class."""
    for element in dataset:
        if element.VR != "SQ":
            continue
        for item in element.value:
            if item.get("ReferencedSOPInstanceUID") == instance_uid:
                item.ReferencedSOPClassUID = sop_class_uid
            _restore_sop_class(item, instance_uid, sop_class_uid)


def _spread_over_source_frames(seg: Dataset, stack: np.ndarray) -> None:
    """Turn the one-frame SEG (one frame per segment) into frames per (source frame, segment)."""
    templates = list(seg.PerFrameFunctionalGroupsSequence)
    items, frames = [], []
    for s in range(stack.shape[-1]):  # frames ordered by segment, then time, as highdicom does
        for t in range(stack.shape[0]):
            if not stack[t, ..., s].any():
                continue  # empty frames are left out, as highdicom does by default
            item = copy.deepcopy(templates[s])
            item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber = t + 1
            content = item.FrameContentSequence[0]
            content.TemporalPositionIndex = t + 1
            content.DimensionIndexValues = [s + 1, t + 1]
            items.append(item)
            frames.append(stack[t, ..., s])
    if not items:  # an all-empty segmentation still needs one frame
        items, frames = [copy.deepcopy(templates[0])], [stack[0, ..., 0]]
        items[0].DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber = 1
        items[0].FrameContentSequence[0].TemporalPositionIndex = 1
        items[0].FrameContentSequence[0].DimensionIndexValues = [1, 1]

    temporal = Dataset()
    temporal.DimensionOrganizationUID = seg.DimensionIndexSequence[0].DimensionOrganizationUID
    temporal.DimensionIndexPointer = tag_for_keyword("TemporalPositionIndex")
    temporal.FunctionalGroupPointer = tag_for_keyword("FrameContentSequence")
    temporal.DimensionDescriptionLabel = "Temporal Position Index"
    seg.DimensionIndexSequence.append(temporal)
    seg.PerFrameFunctionalGroupsSequence = items
    seg.NumberOfFrames = len(frames)
    seg.PixelData = pack_bits(np.stack(frames).astype(np.uint8))


def deidentify_seg(seg: Dataset) -> None:
    """Apply the DICOM PS3.15 Basic Application Level Confidentiality Profile (Retain UIDs
    Option) to a SEG, keeping the attributes the writer sets to values of its own; see
    `usvlm.io.deidentify`."""
    apply_basic_profile(seg, keep=WRITER_OWN)


def _scrubbed(exc: BaseException, header: Dataset) -> str:
    """An exception's first line without any attribute value of the header (highdicom's
    validation messages quote the offending value, e.g. a malformed birth date)."""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", text)
    try:
        for element in header.iterall():
            value = element.value
            if isinstance(value, (str, bytes, PersonName)):
                shown = (value.decode(errors="ignore") if isinstance(value, bytes) else str(value)).strip()
                if len(shown) >= 3:
                    text = text.replace(shown, "...")
    except Exception:  # noqa: BLE001 - an unreadable header: say only what kind of error it was
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def build_dicom_seg(segments: Sequence[Segment], source: USImage | Dataset, *,
                    series_number: int = SERIES_NUMBER,
                    algorithm_version: str = __version__, deidentify: bool = False) -> Dataset:
    """A binary DICOM SEG dataset of `segments` (masks on the source grid) for the source instance.

    `deidentify`: apply the DICOM PS3.15 Basic Application Level Confidentiality Profile with the
    Retain UIDs Option (the references to the source stay; see `usvlm.io.deidentify`)."""
    import highdicom as hd

    header, name = _source_header(source)
    if deidentify:
        # Nothing identifying reaches highdicom, so nothing of it can be copied (or quoted).
        header = copy.deepcopy(header)
        apply_basic_profile(header)
    n_source = _source_frames(header)
    stack = stacked_frames(segments).astype(np.uint8)  # (T, H, W, S)
    expected = (n_source or 1, int(header.Rows), int(header.Columns))
    if stack.shape[:3] != expected:
        raise InputError(name, f"masks of {stack.shape[0]} frame(s) of {stack.shape[1]}x{stack.shape[2]} "
                               f"pixels do not match the DICOM image ({expected[0]} frame(s) of "
                               f"{expected[1]}x{expected[2]})")
    spread = n_source is not None and hd.spatial.get_image_coordinate_system(header) is None
    kwargs: dict[str, Any] = dict(
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment_description(i, s, algorithm_version)
                              for i, s in enumerate(segments, start=1)],
        series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=ALGORITHM_NAME,
        software_versions=algorithm_version, device_serial_number="0",
        series_description="USVLM segmentation", content_label="USVLM",
        content_description="Text-prompted ultrasound segmentation")
    try:
        if spread:
            # One template frame per segment; the real frames are made from `stack` below.
            view = _single_frame_view(header)
            seg = hd.seg.Segmentation(source_images=[view], omit_empty_frames=False,
                                      pixel_array=np.ones((1, *stack.shape[1:]), np.uint8), **kwargs)
            _restore_sop_class(seg, header.SOPInstanceUID, header.SOPClassUID)
            _spread_over_source_frames(seg, stack)
        else:
            seg = hd.seg.Segmentation(source_images=[header], pixel_array=stack,
                                      omit_empty_frames=bool(stack.any()), **kwargs)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise InputError(name, f"cannot derive a DICOM SEG from this image ({_scrubbed(exc, header)})") from None
    if "ImageOrientationPatient" not in header and "PatientOrientation" not in seg:
        # General Image module: Type 2C when the image has no patient position/orientation;
        # the SEG shares the source's pixel grid, so it shares its orientation too.
        seg.PatientOrientation = header.get("PatientOrientation", "")
    if deidentify:
        deidentify_seg(seg)
    return seg


def save_dicom_seg(path: str | os.PathLike[str], seg: Dataset) -> Path:
    with atomic_output(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return Path(path)


def write_dicom_seg(path: str | os.PathLike[str], segments: Sequence[Segment],
                    source: USImage | Dataset, **options: Any) -> Path:
    """Write a binary DICOM SEG of `segments` referencing the source DICOM instance."""
    return save_dicom_seg(path, build_dicom_seg(segments, source, **options))

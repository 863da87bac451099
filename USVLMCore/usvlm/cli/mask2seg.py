"""usvlm mask2seg: turn a mask image drawn on an ultrasound image into a Slicer segmentation
(.seg.nrrd) aligned with that image and, for a DICOM image, a DICOM SEG.

A binary mask (0/1 or 0/255) gives one segment; a label image (several non-zero values) gives one
segment per value, in increasing order.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from usvlm.cli._common import add_force_arg
from usvlm.errors import InputError, OutputError
from usvlm.oneline import one_line_problem
from usvlm.io.image import USImage
from usvlm.io.segmentation import Segment
from usvlm.text.terminology import ORGAN_TARGETS, RGB, Terminology, organ_target

# Beyond this many distinct values a "mask" is an image, not labels.
MAX_LABELS = 255
# Colours of the further segments of a label image (Slicer's first GenericAnatomyColors entries).
EXTRA_COLORS: tuple[RGB, ...] = ((0.50, 0.68, 0.50), (0.95, 0.84, 0.57), (0.69, 0.48, 0.40),
                                 (0.44, 0.72, 0.82), (0.85, 0.40, 0.31), (0.87, 0.51, 0.40))


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("mask2seg", help="convert a mask image to a Slicer segmentation / DICOM SEG",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("mask", metavar="MASK", help="mask image (PNG, NRRD, ...) on the reference's grid")
    p.add_argument("--reference", required=True, metavar="IMAGE",
                   help="the ultrasound image the mask was drawn on")
    p.add_argument("--name", type=_name_arg,
                   help="segment name (default: what --organ contours, else 'Segment')")
    p.add_argument("--organ", choices=sorted(ORGAN_TARGETS),
                   help="organ of the image; sets the segment's terminology (e.g. breast: mass)")
    p.add_argument("--color", type=_color_arg, metavar="R,G,B",
                   help="segment colour, 0-255 or 0-1 per channel")
    p.add_argument("-o", "--output", required=True, metavar="OUT.seg.nrrd", help="segmentation to write")
    p.add_argument("--dicom-seg", metavar="OUT.dcm", help="also write a DICOM SEG (DICOM reference only)")
    p.add_argument("--deidentify", action="store_true",
                   help="DICOM SEG de-identified by the DICOM PS3.15 Basic Application Level "
                        "Confidentiality Profile (UIDs kept to reference the source)")
    add_force_arg(p)
    return p


def _name_arg(text: str) -> str:
    if not text.strip() or one_line_problem(text):
        raise argparse.ArgumentTypeError("expected a non-empty one-line name")
    return text.strip()


def _color_arg(text: str) -> RGB:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError("expected three numbers, e.g. 255,0,0") from exc
    if len(values) != 3 or not all(math.isfinite(v) and 0 <= v <= 255 for v in values):
        raise argparse.ArgumentTypeError("expected three numbers in 0-255 (or 0-1), e.g. 255,0,0")
    scale = 255.0 if max(values) > 1 else 1.0
    return (values[0] / scale, values[1] / scale, values[2] / scale)


def mask_labels(mask: USImage, reference: USImage) -> np.ndarray:
    """The mask's label values on the reference grid: (H, W) or (T, H, W) integers."""
    source = mask.info.path
    pixels = mask.pixels
    if mask.is_rgb:
        channels = np.moveaxis(pixels, -1, 0)
        if not (np.array_equal(channels[0], channels[1]) and np.array_equal(channels[1], channels[2])):
            raise InputError(source, "a colour mask must be grey (all channels equal) to be read as labels")
        pixels = channels[0]
    if (mask.frames, *mask.frame_shape) != (reference.frames, *reference.frame_shape):
        raise InputError(source, f"mask is {_size(mask)} but the reference {reference.info.path} is "
                                 f"{_size(reference)}; the mask must be drawn on the reference's pixels")
    return pixels


def _size(image: USImage) -> str:
    size = f"{image.columns} x {image.rows} pixels"
    return f"{image.frames} frames of {size}" if image.is_cine else size


def segments_from_labels(labels: np.ndarray, source: str | None, name: str,
                         terminology: Terminology, color: RGB) -> list[Segment]:
    """One segment per distinct non-zero value (a binary mask gives one segment)."""
    values = np.unique(labels)
    values = values[values != 0]
    if values.size == 0:
        raise InputError(source, "mask is empty (no non-zero pixel)")
    if values.size > MAX_LABELS:
        raise InputError(source, f"mask has {values.size} distinct values; expected a binary mask "
                                 "or a label image")
    if values.size == 1:
        return [Segment(name, labels == values[0], color, terminology)]
    colors = (color, *EXTRA_COLORS)
    return [Segment(f"{name} {value:g}", labels == value, colors[i % len(colors)], terminology)
            for i, value in enumerate(values.tolist())]


def _check_output(path: Path, *, suffix: str) -> None:
    if not path.name.lower().endswith(suffix):
        raise OutputError(path, f"file name must end with {suffix}")


def run(args: argparse.Namespace) -> int:
    from usvlm.io.atomic import AtomicGroup
    from usvlm.io.dicom_seg import build_dicom_seg, save_dicom_seg
    from usvlm.io.output_plan import OutputPlan
    from usvlm.io.readers import read_image
    from usvlm.io.seg_nrrd import write_seg_nrrd

    output = Path(args.output)
    dicom_output = Path(args.dicom_seg) if args.dicom_seg else None
    _check_output(output, suffix=".seg.nrrd")
    plan = OutputPlan([args.mask, args.reference], force=args.force)  # before reading anything
    plan.claim(output)
    if dicom_output is not None:
        plan.claim(dicom_output)

    reference = read_image(args.reference)
    if dicom_output is not None and reference.info.dicom_header is None:
        raise InputError(args.reference, "DICOM SEG needs a DICOM source image; "
                                         "leave out --dicom-seg for this reference")
    mask = read_image(args.mask, as_cine=reference.is_cine)
    terminology = organ_target(args.organ)
    name = args.name or (terminology.type.meaning if args.organ else "Segment")
    color = args.color or terminology.recommended_color or (1.0, 0.0, 0.0)
    segments = segments_from_labels(mask_labels(mask, reference), mask.info.path, name, terminology, color)

    # Build the DICOM SEG before writing anything, so its errors leave no output behind.
    dicom_seg = build_dicom_seg(segments, reference, deidentify=args.deidentify) \
        if dicom_output is not None else None
    with AtomicGroup() as group:  # the .seg.nrrd and the DICOM SEG land together or not at all
        write_seg_nrrd(group.path(output), segments, reference.geometry)
        if dicom_seg is not None and dicom_output is not None:
            save_dicom_seg(group.path(dicom_output), dicom_seg)
    for path in plan.targets:
        print(f"wrote {path} ({len(segments)} segment{'s' if len(segments) > 1 else ''})")
    return 0

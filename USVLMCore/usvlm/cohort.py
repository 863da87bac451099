""""Add to training cohort": an image and its (edited) segments into a folder that training reads.

Layout (the Slicer-export layout of `usvlm_training.data.layouts.read_slicer`):

    cohort/<id>.nrrd        the image (pixels and geometry only)
    cohort/<id>.seg.nrrd    its segments (names, colours, terminology)
    cohort/labels.csv       image,label (benign / malignant), when a label is given

De-identified: the id is a hash of the pixel values (the same image added twice replaces its
earlier entry instead of duplicating it), and nothing of the source's DICOM header is written
(no patient attributes, no dates, no UIDs). Burned-in text in the pixels is the user's to check.

`cohort_sample` makes a sample's two files as bytes (the engine sends them to the Slicer module,
which writes them where the user chose: USVLMSegmentLib/cohort_files.py); `add_to_cohort` writes
them into a local folder.
"""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from usvlm.errors import InputError
from usvlm.io.atomic import AtomicGroup, atomic_output
from usvlm.io.image import USImage
from usvlm.io.segmentation import Segment

LABELS = "labels.csv"
LABEL_VALUES = ("benign", "malignant")


def cohort_id(image: USImage) -> str:
    """A de-identified, stable id from the pixel values alone."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr((image.pixels.shape, str(image.pixels.dtype))).encode())
    h.update(np.ascontiguousarray(image.pixels).data)
    return f"us-{h.hexdigest()}"


def _write_image(path: Path, image: USImage) -> None:
    import SimpleITK as sitk

    if not image.geometry.calibrated:
        _write_uncalibrated(path, image)
        return
    g = image.geometry
    itk = sitk.GetImageFromArray(np.ascontiguousarray(image.pixels), isVector=image.is_rgb)
    itk.SetSpacing(g.spacing[:2])
    itk.SetOrigin(g.origin_lps[:2])
    # A 2D image keeps the in-plane part of the direction; Slicer places it on the same plane when
    # the direction is axis-aligned (the usual case for ultrasound loaded from files).
    itk.SetDirection(g.direction_lps[:2, :2].ravel().tolist())
    sitk.WriteImage(itk, str(path), useCompression=True)


def _write_uncalibrated(path: Path, image: USImage) -> None:
    """An image without a measured spacing keeps it unknown in the cohort: NRRD's own "nan"
    spacing, which the readers take as uncalibrated (sizes in pixels), never as 1 mm."""
    import gzip

    pixels = np.ascontiguousarray(image.pixels)
    if pixels.dtype.byteorder == ">":
        pixels = pixels.astype(pixels.dtype.newbyteorder("<"))
    types = {"u1": "uint8", "i1": "int8", "u2": "uint16", "i2": "int16", "u4": "uint32",
             "i4": "int32", "f4": "float", "f8": "double"}
    kind = pixels.dtype.str[1:]
    if kind not in types:
        raise InputError(None, f"cannot store {pixels.dtype} pixels in the cohort")
    rows, columns = pixels.shape[:2]
    if image.is_rgb:
        axes = f"dimension: 3\nsizes: {pixels.shape[2]} {columns} {rows}\nspacings: nan nan nan\n" \
               "kinds: RGB-color domain domain\n"
    else:
        axes = f"dimension: 2\nsizes: {columns} {rows}\nspacings: nan nan\nkinds: domain domain\n"
    header = f"NRRD0004\ntype: {types[kind]}\n{axes}endian: little\nencoding: gzip\n\n"
    path.write_bytes(header.encode("ascii") + gzip.compress(pixels.tobytes(), mtime=0))


def _set_label(folder: Path, sample_id: str, label: str | None) -> None:
    path = folder / LABELS
    rows: list[list[str]] = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh)][1:]
    rows = [r for r in rows if r and r[0] != sample_id]
    if label is not None:
        rows.append([sample_id, label])
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image", "label"])
        writer.writerows(sorted(rows))


def _frame_mask(segment: Segment, image: USImage, frame: int) -> np.ndarray:
    """The (H, W) mask of `segment` on frame `frame`: a cine's segment is (T, H, W) over the
    cine, or (H, W) for that frame alone; a single image's is (H, W) (or (1, H, W))."""
    mask = segment.mask
    if mask.ndim == 3:
        if mask.shape[0] == image.frames and image.is_cine:
            mask = mask[frame]
        elif mask.shape[0] == 1:
            mask = mask[0]
    if mask.shape != image.frame_shape:
        grid = [image.frames, *image.frame_shape] if image.is_cine else list(image.frame_shape)
        raise InputError(None, f"segment masks are not on the image grid: {segment.name!r} is "
                               f"{list(segment.mask.shape)}, the image {grid}")
    return mask


@dataclass(frozen=True)
class CohortSample:
    """One de-identified training sample as file contents: `<id>.nrrd` (the image) and
    `<id>.seg.nrrd` (its segments), in that order. Written by `add_to_cohort` here, or by the
    Slicer module from the engine's reply (`POST /v1/cohort`) into a folder on the user's side."""

    id: str
    files: tuple[tuple[str, bytes], ...]

    @property
    def seg_name(self) -> str:
        return f"{self.id}.seg.nrrd"


def cohort_sample(image: USImage, segments: Sequence[Segment], *, frame: int = 0) -> CohortSample:
    """The files of one sample (frame `frame` of a cine), as bytes: nothing is written anywhere
    but a private temporary folder, removed before this returns."""
    from usvlm.io.seg_nrrd import write_seg_nrrd

    if not segments:
        raise InputError(None, "no segments to add to the cohort")
    names = [s.name for s in segments]
    if len({n.casefold() for n in names}) != len(names):
        raise InputError(None, f"segment names must be unique in a training sample: {', '.join(names)}")
    if image.is_cine and not 0 <= frame < image.frames:
        raise InputError(None, f"frame {frame} is out of range (the cine has {image.frames} frames)")
    single = image.frame(frame) if image.is_cine else image
    plain = [Segment(s.name, _frame_mask(s, image, frame), s.color, s.terminology) for s in segments]
    sample_id = cohort_id(single)
    files = (f"{sample_id}.nrrd", f"{sample_id}.seg.nrrd")
    with tempfile.TemporaryDirectory(prefix="usvlm-cohort-") as scratch:
        paths = [Path(scratch) / name for name in files]
        _write_image(paths[0], single)
        write_seg_nrrd(paths[1], plain, single.geometry)
        return CohortSample(sample_id, tuple((p.name, p.read_bytes()) for p in paths))


def add_to_cohort(folder: str | os.PathLike[str], image: USImage, segments: Sequence[Segment], *,
                  frame: int = 0, label: str | None = None) -> Path:
    """Write one sample (frame `frame` of a cine) and return the path of its .seg.nrrd."""
    if not str(folder).strip():
        # An empty path box in Slicer gives "", which Path() turns into the working directory:
        # samples would land wherever Slicer happened to start.
        raise InputError(None, "no cohort folder chosen: pick the folder of the training cohort")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "cohort folder does not exist")
    if label is not None and label not in LABEL_VALUES:
        raise InputError(None, f"label must be one of {', '.join(LABEL_VALUES)}, got {label!r}")
    sample = cohort_sample(image, segments, frame=frame)
    with AtomicGroup() as group:  # image and segmentation appear together or not at all
        for name, data in sample.files:
            group.path(folder / name).write_bytes(data)
    _set_label(folder, sample.id, label)
    return folder / sample.seg_name

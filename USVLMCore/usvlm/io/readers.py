"""`read_image`: one entry point for every supported file, chosen by content and name."""

from __future__ import annotations

import os
from pathlib import Path

from usvlm.errors import InputError
from usvlm.io.limits import check_spacing
from usvlm.io.image import USImage
from usvlm.io.itk_reader import ITK_SUFFIXES
from usvlm.io.raster_reader import RASTER_SUFFIXES

_MAGIC = {b"\x89PNG": "raster", b"\xff\xd8\xff": "raster", b"BM": "raster", b"II*\x00": "raster",
          b"MM\x00*": "raster", b"NRRD": "itk"}


def detect_format(path: Path) -> str:
    """'dicom', 'itk' or 'raster'; by magic bytes first, then by file name."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    name = path.name.lower()
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    return "dicom"  # DICOM without preamble, usually with no or any extension


def read_image(path: str | os.PathLike[str], *, as_cine: bool = False,
               spacing_mm: tuple[float, float] | None = None) -> USImage:
    """Read an ultrasound image file into a `USImage`.

    `spacing_mm` (x, y) overrides the file's pixel spacing, e.g. for PNGs of a public data set whose
    spacing is known; `as_cine` reads a 3D NRRD/NIfTI volume as frames.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not an image file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(path, f"cannot access file ({exc.strerror})") from exc
    if size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    try:
        kind = detect_format(path)
    except OSError as exc:
        raise InputError(path, f"cannot open file ({exc.strerror})") from exc
    if kind == "dicom":
        from usvlm.io.dicom_reader import read_dicom
        image = read_dicom(path)
    elif kind == "itk":
        from usvlm.io.itk_reader import read_itk
        image = read_itk(path, as_cine=as_cine)
    else:
        from usvlm.io.raster_reader import read_raster
        image = read_raster(path)
    if spacing_mm is not None:
        image = with_spacing(image, spacing_mm)
    return image


def with_spacing(image: USImage, spacing_mm: tuple[float, float]) -> USImage:
    """The same image with a user-given pixel spacing (x, y) in mm."""
    from dataclasses import replace

    problem = check_spacing(spacing_mm, "the given spacing")
    if problem:
        raise InputError(image.info.path, problem)
    info = replace(image.info, spacing_source="user",  # type: ignore[arg-type]
                   warnings=[w for w in image.info.warnings if "spacing" not in w])
    geometry = image.geometry.with_spacing(float(spacing_mm[0]), float(spacing_mm[1]), calibrated=True)
    return replace(image, geometry=geometry, info=info)

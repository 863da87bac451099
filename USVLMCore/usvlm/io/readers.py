"""`read_image`: one entry point for every supported file, chosen by content and name."""

from __future__ import annotations

import os
from pathlib import Path

from usvlm.errors import InputError
from usvlm.io.limits import check_spacing
from usvlm.io.image import USImage
from usvlm.io.itk_header import sniff_itk_format
from usvlm.io.itk_reader import ITK_SUFFIXES
from usvlm.io.raster_reader import RASTER_SUFFIXES

_MAGIC = {b"\x89PNG": "raster", b"\xff\xd8\xff": "raster", b"BM": "raster", b"II*\x00": "raster",
          b"MM\x00*": "raster", b"NRRD": "itk"}

# Common formats USVLM does not read, recognised by their first bytes so the user is told what the
# file is (instead of "not a DICOM file"). Checked after the supported magics.
_UNSUPPORTED = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
                (b"\xffO\xffQ", "JPEG 2000"), (b"\xff\x0a", "JPEG XL"),
                (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"), (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"),
                (b"%PDF", "PDF"), (b"PK\x03\x04", "ZIP"), (b"8BPS", "Photoshop (PSD)"), (b"v/1\x01", "OpenEXR"), (b"\x89HDF\r\n\x1a\n", "HDF5"),
                (b"DDS ", "DDS"), (b"#?RADIANCE", "Radiance HDR"), (b"\x1a\x45\xdf\xa3", "Matroska/WebM video"),
                (b"BZh", "bzip2"), (b"7z\xbc\xaf\x27\x1c", "7-Zip"), (b"\xfd7zXZ\x00", "xz"))
SUPPORTED = "DICOM, NRRD/NHDR, NIfTI (.nii, .nii.gz), MetaImage (.mha/.mhd), PNG, JPEG, BMP, TIFF"


def detect_format(path: Path) -> str:
    """'dicom', 'itk' or 'raster'; by magic bytes first, then by file name. A file of a common
    format USVLM does not read is refused here, by name ("unsupported format GIF")."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    name = path.name.lower()
    unsupported = _unsupported_format(head, name)
    if unsupported:
        raise InputError(path, f"unsupported format {unsupported}; USVLM reads {SUPPORTED}")
    if sniff_itk_format(head) or name.endswith(ITK_SUFFIXES):
        return "itk"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    return "dicom"  # DICOM without preamble, usually with no or any extension


def _unsupported_format(head: bytes, name: str) -> str | None:
    for magic, fmt in _UNSUPPORTED:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"AVI "):
        return "WebP" if head[8:12] == b"WEBP" else "AVI video"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "HEIF/AVIF" if brand in (b"heic", b"heix", b"mif1", b"avif", b"avis") else "MP4/QuickTime video"
    if head.startswith(b"\x1f\x8b") and not name.endswith(".nii.gz"):
        return "gzip (only .nii.gz is read compressed)"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n":
        return "PNM (PBM/PGM/PPM)"
    return None


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
        image = read_itk(path, as_cine=as_cine, spacing_given=spacing_mm is not None)
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

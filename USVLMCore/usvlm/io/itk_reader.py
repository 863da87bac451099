"""NRRD / NIfTI / MHA / MHD reader through SimpleITK.

Slicer saves a 2D image as a single-slice 3D volume; that is read as 2D. A volume with several
slices is a cine only when asked (`as_cine=True`) or when it is a Slicer sequence (.seq.nrrd,
4D with one singleton spatial axis); otherwise it is a 3D volume, which USVLM does not contour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from usvlm.errors import InputError
from usvlm.io.geometry import Geometry
from usvlm.io.image import ImageInfo, USImage
from usvlm.io.limits import check_frame_size, check_pixel_bytes, check_spacing

ITK_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def read_itk(path: str | Path, *, as_cine: bool = False) -> USImage:
    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, f"cannot read image header ({_itk_reason(exc)})") from exc
    size = list(reader.GetSize())
    components = reader.GetNumberOfComponents()
    itemsize = np.dtype(_numpy_dtype(reader)).itemsize
    _check_size(path, size, components, itemsize)
    nbytes = int(np.prod(size, dtype=np.int64)) * components * itemsize
    if path.name.lower().endswith(".nii"):
        _check_nifti_data(path, nbytes)
    elif path.name.lower().endswith(".nrrd"):
        _check_nrrd_data(path, nbytes)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(path, f"cannot read pixel data ({_itk_reason(exc)})") from exc

    pixels = sitk.GetArrayFromImage(image)  # [K, J, I(, C)] in numpy order
    spacing = list(image.GetSpacing())
    origin = list(image.GetOrigin())
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(image.GetDimension(), -1)
    dim = image.GetDimension()
    if dim == 4:
        pixels, spacing, origin, direction = _squeeze_sequence(path, pixels, spacing, origin, direction,
                                                               components)
        dim, as_cine = 3, True
    if dim == 2:
        spacing, origin = spacing + [1.0], origin + [0.0]
        d3 = np.eye(3)
        d3[:2, :2] = direction
        direction = d3

    if components not in (1, 3):
        raise InputError(path, f"{components} components per pixel; expected grey (1) or RGB (3)")
    is_rgb = components == 3
    slices = 1 if dim == 2 else int(pixels.shape[0])
    if dim == 3 and slices == 1:
        pixels = pixels[0]
    elif dim == 3 and not as_cine:
        raise InputError(path, f"a 3D volume of {slices} slices ({size[0]} x {size[1]} x {size[2]}), "
                               "not a 2D ultrasound image; pass it as a cine if its slices are frames")
    if np.issubdtype(pixels.dtype, np.floating) and not np.all(np.isfinite(pixels)):
        raise InputError(path, "pixel data holds NaN or infinite values")
    problem = check_spacing(spacing[:2])
    if problem:
        raise InputError(path, problem)
    try:
        geometry = Geometry.from_lps(spacing, origin, direction)
    except ValueError as exc:
        raise InputError(path, f"invalid geometry in header: {exc}") from exc
    info = ImageInfo(path=str(path), format=_format_name(path), spacing_source="image_header",
                     photometric="RGB" if is_rgb else "MONOCHROME2")
    return USImage(pixels=np.ascontiguousarray(pixels), geometry=geometry, info=info, is_rgb=is_rgb,
                   is_cine=pixels.ndim == 3 + int(is_rgb))


def _numpy_dtype(reader: sitk.ImageFileReader) -> type:
    pixel_id = reader.GetPixelID()
    name = sitk.GetPixelIDValueAsString(pixel_id)
    for key, dtype in (("64-bit float", np.float64), ("32-bit float", np.float32), ("64-bit", np.int64),
                       ("32-bit", np.int32), ("16-bit", np.int16)):
        if key in name:
            return dtype
    return np.uint8


def _check_size(path: Path, size: list[int], components: int, itemsize: int) -> None:
    problem = check_frame_size(size[1] if len(size) > 1 else 1, size[0])
    if problem:
        raise InputError(path, problem)
    voxels = int(np.prod(size, dtype=np.int64))
    problem = check_pixel_bytes(voxels * components * itemsize)
    if problem:
        raise InputError(path, problem)


# Deflate cannot expand data more than about 1032-fold.
_MAX_DEFLATE_RATIO = 1032


def _check_nrrd_data(path: Path, nbytes: int) -> None:
    """ITK allocates (and zero-fills) what the header claims before it finds the data short: a
    2,000-frame claim in a 4 KiB file would cost gigabytes. Refuse such claims from the file size."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    end = head.find(b"\n\n")
    if not head.startswith(b"NRRD") or end < 0:
        return
    fields = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        key, sep, value = line.partition(":")
        if sep and not value.startswith("=") and not line.startswith("#"):
            fields[key.strip().lower()] = value.strip().lower()
    if fields.keys() & {"data file", "datafile", "line skip", "lineskip", "byte skip", "byteskip"}:
        return
    available = path.stat().st_size - (end + 2)
    encoding = fields.get("encoding", "")
    if encoding == "raw" and available < nbytes:
        raise InputError(path, f"NRRD file holds {available} bytes of pixel data, its header claims {nbytes}")
    if encoding in ("gzip", "gz") and available * _MAX_DEFLATE_RATIO < nbytes:
        raise InputError(path, f"NRRD header claims {nbytes} bytes, more than {available} bytes of gzip "
                               "data can hold")


def _check_nifti_data(path: Path, nbytes: int) -> None:
    """ITK's NIfTI reader fills missing voxel data and replaces NaN/Inf by 0 without an error; an
    uncompressed .nii is checked here: all voxel bytes present and, for float data, finite."""
    import struct

    with open(path, "rb") as fh:
        header = fh.read(348)
    if len(header) < 348:
        raise InputError(path, "NIfTI header is truncated")
    endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    datatype = struct.unpack(endian + "h", header[70:72])[0]
    offset = int(struct.unpack(endian + "f", header[108:112])[0])
    available = path.stat().st_size - offset
    if available < nbytes:
        raise InputError(path, f"NIfTI file holds {max(available, 0)} bytes of voxel data, its header "
                               f"needs {nbytes}")
    floats = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64
    if datatype in floats:
        data = np.fromfile(path, dtype=endian + floats[datatype], count=nbytes // int(floats[datatype][1]),
                           offset=offset)
        if not np.all(np.isfinite(data)):
            raise InputError(path, "pixel data holds NaN or infinite values")


def _squeeze_sequence(path: Path, pixels: np.ndarray, spacing: list[float], origin: list[float],
                      direction: np.ndarray, components: int):  # noqa: ANN202
    """A Slicer sequence of 2D frames is 4D with a singleton spatial axis: drop that axis."""
    # numpy order [T, K, J, I]; a sequence of 2D frames has K == 1.
    if pixels.shape[1] != 1:
        raise InputError(path, "a sequence of 3D volumes, not of 2D ultrasound frames")
    return pixels[:, 0], spacing[:3], origin[:3], direction[:3, :3]


def _format_name(path: Path) -> str:
    name = path.name.lower()
    for suffix in ITK_SUFFIXES:
        if name.endswith(suffix):
            return suffix.lstrip(".")
    return "itk"


def _itk_reason(exc: RuntimeError) -> str:
    # ITK messages span many lines with source locations; keep the last meaningful one.
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()[:160]
    return (lines[-1] if lines else type(exc).__name__)[:160]

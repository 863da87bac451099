"""NRRD / NIfTI / MHA / MHD reader through SimpleITK.

Slicer saves a 2D image as a single-slice 3D volume; that is read as 2D. A volume with several
slices is a cine only when asked (`as_cine=True`) or when it is a Slicer sequence (.seq.nrrd,
4D with one singleton spatial axis); otherwise it is a 3D volume, which USVLM does not contour
(refused from the header, before any pixel is read). A file whose header gives no pixel spacing
is read as uncalibrated (sizes in pixels), never as a calibrated 1 mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from usvlm.errors import InputError
from usvlm.io.geometry import Geometry
from usvlm.io.image import ImageInfo, USImage
from usvlm.io.itk_data import check_data
from usvlm.io.itk_header import read_header
from usvlm.io.limits import check_frame_size, check_pixel_bytes, check_spacing

ITK_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def read_itk(path: str | Path, *, as_cine: bool = False, spacing_given: bool = False) -> USImage:
    """Read a NRRD / NIfTI / MetaImage file. The header is parsed and its data checked here first
    (`usvlm.io.itk_header`, `usvlm.io.itk_data`); ITK is then told which reader to use, so it
    never probes other formats. `spacing_given`: the caller overrides the spacing, so an
    implausible one in the header is not refused."""
    path = Path(path)
    facts = read_header(path)
    problem = check_frame_size(facts.frame_size[1], facts.frame_size[0]) or check_pixel_bytes(facts.nbytes)
    if problem:
        raise InputError(path, problem)
    check_data(path, facts)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(facts.image_io)
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, f"cannot read image header ({_itk_reason(exc)})") from exc
    size = list(reader.GetSize())
    components = reader.GetNumberOfComponents()
    itemsize = np.dtype(_numpy_dtype(reader)).itemsize
    _check_size(path, size, components, itemsize)
    _check_shape(path, size, components, as_cine)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(path, f"cannot read pixel data ({_itk_reason(exc)})") from exc

    pixels = sitk.GetArrayFromImage(image)  # [K, J, I(, C)] in numpy order
    spacing = list(image.GetSpacing())
    origin = list(image.GetOrigin())
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(image.GetDimension(), -1)
    dim = image.GetDimension()
    del image  # the copy in `pixels` is all that is needed: do not hold the data twice
    if dim == 4:
        pixels, spacing, origin, direction = pixels[:, 0], spacing[:3], origin[:3], direction[:3, :3]
        dim, as_cine = 3, True
    if dim == 2:
        spacing, origin = spacing + [1.0], origin + [0.0]
        d3 = np.eye(3)
        d3[:2, :2] = direction
        direction = d3

    is_rgb = components == 3
    if dim == 3 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if np.issubdtype(pixels.dtype, np.floating) and not _all_finite(pixels):
        raise InputError(path, "pixel data holds NaN or infinite values")
    calibrated = facts.spacing is not None
    warnings = []
    if calibrated and not spacing_given:
        problem = check_spacing(spacing[:2], "the image header")
        if problem:
            raise InputError(path, problem + " (give the spacing with --spacing to override)")
    if not calibrated:
        spacing[:2] = [1.0, 1.0]
        warnings.append(f"no pixel spacing in the file ({facts.spacing_note}): sizes are in pixels, "
                        "not calibrated (1 mm assumed)")
    try:
        geometry = Geometry.from_lps(spacing, origin, direction, calibrated=calibrated)
    except ValueError as exc:
        raise InputError(path, f"invalid geometry in header: {exc}") from exc
    info = ImageInfo(path=str(path), format=_format_name(path),
                     spacing_source="image_header" if calibrated else "none",
                     photometric="RGB" if is_rgb else "MONOCHROME2", warnings=warnings)
    return USImage(pixels=np.ascontiguousarray(pixels), geometry=geometry, info=info, is_rgb=is_rgb,
                   is_cine=pixels.ndim == 3 + int(is_rgb))


def _check_shape(path: Path, size: list[int], components: int, as_cine: bool) -> None:
    """Refuse from the header what is not a 2D image or cine, before any pixel is read."""
    if components not in (1, 3):
        raise InputError(path, f"{components} components per pixel; expected grey (1) or RGB (3)")
    dim = len(size)
    if dim > 4:
        raise InputError(path, f"a {dim}D image, not a 2D ultrasound image or cine")
    if dim == 4 and size[2] != 1:
        # A Slicer sequence of 2D frames is 4D with a singleton third axis.
        raise InputError(path, "a sequence of 3D volumes, not of 2D ultrasound frames")
    if dim == 3 and size[2] > 1 and not as_cine:
        raise InputError(path, f"a 3D volume of {size[2]} slices ({size[0]} x {size[1]} x {size[2]}), "
                               "not a 2D ultrasound image; pass it as a cine if its slices are frames")


def _all_finite(pixels: np.ndarray) -> bool:
    """np.isfinite frame by frame: a whole-array check would allocate a mask as large as the cine."""
    frames = pixels.reshape(-1, *pixels.shape[-2:]) if pixels.ndim > 2 else pixels[np.newaxis]
    return all(np.isfinite(frame).all() for frame in frames)


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

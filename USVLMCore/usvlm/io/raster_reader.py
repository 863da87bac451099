"""PNG / JPEG / BMP / TIFF reader (scikit-image). Such files carry no calibration: spacing is
1 mm and flagged as uncalibrated unless the caller gives it. The decoded size is checked from the
codec's header (`usvlm.io.raster_header`) before any decoder runs."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import skimage.io

from usvlm.errors import InputError
from usvlm.io.geometry import Geometry
from usvlm.io.image import ImageInfo, USImage
from usvlm.io.limits import check_frame_size, check_pixel_bytes
from usvlm.io.raster_header import read_raster_header

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_raster(path: str | Path) -> USImage:
    path = Path(path)
    facts = read_raster_header(path)
    problem = check_frame_size(facts.height, facts.width) or check_pixel_bytes(facts.decoded_bytes)
    if problem:
        raise InputError(path, problem)
    if facts.colour_space == "CMYK":
        # No faithful conversion to screen colours exists without the file's ICC profile, and
        # scanners never write print colour spaces: the file was prepared for print.
        raise InputError(path, f"CMYK {facts.format} (a print colour space) is not supported; save it "
                               "as an RGB or greyscale image")
    try:
        with warnings.catch_warnings(), _decoder_size_limit(facts.width * facts.height):
            warnings.simplefilter("ignore")
            _verify_png(path)
            pixels = np.asarray(skimage.io.imread(path))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - imageio/PIL raise many types for corrupt files
        raise InputError(path, f"cannot decode image ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:120] if str(exc) else 'corrupt file'})") from exc
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    if facts.pages in (3, 4) and pixels.shape == (facts.height, facts.width, facts.pages):
        # scikit-image moves a stack of 3 or 4 grey pages to the last axis, as if it were colour
        pixels = np.moveaxis(pixels, -1, 0)
    is_cine = False
    if pixels.ndim == 3 and pixels.shape[-1] in (2, 4):
        pixels = _drop_opaque_alpha(path, pixels)
    elif pixels.ndim == 3 and pixels.shape[-1] != 3:
        is_cine = path.suffix.lower() in (".tif", ".tiff")  # multi-page TIFF: frames
        if not is_cine:
            raise InputError(path, f"unexpected image shape {pixels.shape}")
    elif pixels.ndim == 4 and pixels.shape[-1] == 3:
        is_cine = True
    elif pixels.ndim not in (2, 3):
        raise InputError(path, f"unexpected image shape {pixels.shape}")
    is_rgb = pixels.shape[-1] == 3 and pixels.ndim == 3 + int(is_cine)
    rows, cols = pixels.shape[int(is_cine):int(is_cine) + 2]
    problem = check_frame_size(rows, cols)
    if problem:
        raise InputError(path, problem)
    if np.issubdtype(pixels.dtype, np.floating) and not np.all(np.isfinite(pixels)):
        raise InputError(path, "pixel data holds NaN or infinite values")
    info = ImageInfo(path=str(path), format=path.suffix.lower().lstrip("."), spacing_source="none",
                     photometric="RGB" if is_rgb else "MONOCHROME2",
                     warnings=["no pixel spacing in the file: sizes are in pixels, not calibrated "
                               "(1 mm assumed)"])
    return USImage(pixels=np.ascontiguousarray(pixels), geometry=Geometry.for_pixels(1.0, 1.0, calibrated=False),
                   info=info, is_rgb=is_rgb, is_cine=is_cine)


@contextlib.contextmanager
def _decoder_size_limit(pixels: int):  # noqa: ANN202
    """Pillow's own bomb guard refuses images above ~179 Mpx, below the documented 16384 x 16384;
    the header has been checked against USVLM's limit, so Pillow's is set to this image's size."""
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(pixels, previous or 0)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _drop_opaque_alpha(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Screenshots often carry a fully opaque alpha channel; transparency means a composited
    graphic, not an ultrasound image, and is refused."""
    alpha = pixels[..., -1]
    opaque = np.iinfo(pixels.dtype).max if np.issubdtype(pixels.dtype, np.integer) else 1.0
    if not np.all(alpha == opaque):
        raise InputError(path, f"{pixels.shape[-1]}-channel image with transparency; expected a grey "
                               "or RGB ultrasound image")
    colour = pixels[..., :-1]
    return colour[..., 0] if colour.shape[-1] == 1 else colour


def _verify_png(path: Path) -> None:
    """PIL checks the CRC of PNG header chunks only; `verify` checks every chunk's CRC, so a damaged
    file is refused instead of decoded into wrong pixels."""
    from PIL import Image

    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as exc:  # noqa: BLE001 - PIL raises SyntaxError, OSError, struct.error, ...
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InputError(path, f"cannot decode image (corrupt PNG file: {reason})") from None

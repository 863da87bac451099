"""Limits that keep bad or hostile files from exhausting memory or producing nonsense.

One decoded-pixel limit holds for every reader and every path (DICOM of any transfer syntax,
NRRD/NIfTI/MHA, PNG/JPEG/TIFF): it is checked against the codec's own header *before* anything is
decoded, so a small file that claims a huge image never allocates it.
"""

from __future__ import annotations

import math
import os

from usvlm.errors import USVLMError
from usvlm.io.geometry import PLAUSIBLE_SPACING_MM

# Decoded pixel data larger than this is refused before decoding (a 20000 x 20000 header claim,
# a 2,000-frame RGB cine). Reading and preparing an image peaks at about 12-14 times its decoded
# size (float32 working copies, field-of-view and overlay masks; measured by
# Testing/test_hostile_readers.py), so 512 MiB keeps a run near 7 GB; 2 GiB would need 25-30 GB.
# Override with the environment variable USVLM_MAX_PIXEL_BYTES (bytes, a plain integer, >= 1 MiB).
MAX_PIXEL_BYTES_ENV = "USVLM_MAX_PIXEL_BYTES"
DEFAULT_MAX_PIXEL_BYTES = 512 * 1024**2
_SMALLEST_LIMIT = 1024**2

# Smallest frame side the pipeline accepts (the model works on patches of 16 px).
MIN_SIDE_PX = 16

# Largest side of one frame.
MAX_SIDE_PX = 16384


class LimitSettingError(USVLMError):
    """USVLM_MAX_PIXEL_BYTES is set to something that is not a usable byte count."""


def max_pixel_bytes() -> int:
    """The decoded-pixel limit in bytes, read from the environment on every call (so a changed
    setting applies at once), with a one-line error for a value that is not a whole number."""
    text = os.environ.get(MAX_PIXEL_BYTES_ENV)
    if text is None or not text.strip():
        return DEFAULT_MAX_PIXEL_BYTES
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        raise LimitSettingError(f"{MAX_PIXEL_BYTES_ENV}={text[:40]!r} is not a whole number of bytes "
                                f"(e.g. {DEFAULT_MAX_PIXEL_BYTES})") from None
    if value < _SMALLEST_LIMIT:
        raise LimitSettingError(f"{MAX_PIXEL_BYTES_ENV}={value} is below the smallest usable limit "
                                f"({_SMALLEST_LIMIT} bytes)")
    return value


def check_frame_size(rows: int, columns: int) -> str | None:
    """A problem description when the frame size is unusable, else None."""
    if rows <= 0 or columns <= 0:
        return f"image has no pixels ({rows} x {columns})"
    if rows < MIN_SIDE_PX or columns < MIN_SIDE_PX:
        return f"image of {columns} x {rows} pixels is too small (at least {MIN_SIDE_PX} x {MIN_SIDE_PX})"
    if rows > MAX_SIDE_PX or columns > MAX_SIDE_PX:
        return f"image of {columns} x {rows} pixels is too large (at most {MAX_SIDE_PX} per side)"
    return None


def check_pixel_bytes(nbytes: int | float) -> str | None:
    """A problem description when `nbytes` of decoded pixels exceed the limit, else None."""
    limit = max_pixel_bytes()
    if not math.isfinite(nbytes) or nbytes > limit:
        return (f"decoded pixel data would take {nbytes / 1024**2:.0f} MiB, above the limit of "
                f"{limit / 1024**2:.0f} MiB (set {MAX_PIXEL_BYTES_ENV} to raise it)")
    return None


def check_spacing(spacing_mm: tuple[float, ...], source: str | None = None) -> str | None:
    """A problem description when an (x, y) pixel spacing cannot be an ultrasound image's
    (most likely a unit error), else None. `source` says where it came from."""
    low, high = PLAUSIBLE_SPACING_MM
    values = [float(s) for s in spacing_mm]
    if len(values) == 2 and all(math.isfinite(s) and low <= s <= high for s in values):
        return None
    shown = " x ".join(f"{s:.6g}" for s in values)
    origin = f" (from {source})" if source else ""
    return f"implausible pixel spacing {shown} mm{origin}; expected {low}-{high} mm"

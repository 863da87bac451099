"""Limits that keep bad or hostile files from exhausting memory or producing nonsense."""

from __future__ import annotations

import os

from usvlm.io.geometry import PLAUSIBLE_SPACING_MM

# Decoded pixel data larger than this is refused before decoding (a 20000 x 20000 header claim,
# a 2,000-frame RGB cine). Override with the environment variable USVLM_MAX_PIXEL_BYTES.
MAX_PIXEL_BYTES = int(os.environ.get("USVLM_MAX_PIXEL_BYTES", 2 * 1024**3))

# Smallest frame side the pipeline accepts (the model works on patches of 16 px and more).
MIN_SIDE_PX = 8

# Largest side of one frame.
MAX_SIDE_PX = 16384


def check_frame_size(rows: int, columns: int) -> str | None:
    """A problem description when the frame size is unusable, else None."""
    if rows <= 0 or columns <= 0:
        return f"image has no pixels ({rows} x {columns})"
    if rows < MIN_SIDE_PX or columns < MIN_SIDE_PX:
        return f"image of {columns} x {rows} pixels is too small (at least {MIN_SIDE_PX} x {MIN_SIDE_PX})"
    if rows > MAX_SIDE_PX or columns > MAX_SIDE_PX:
        return f"image of {columns} x {rows} pixels is too large (at most {MAX_SIDE_PX} per side)"
    return None


def check_pixel_bytes(nbytes: int) -> str | None:
    if nbytes > MAX_PIXEL_BYTES:
        return (f"decoded pixel data would take {nbytes / 1024**2:.0f} MiB, above the limit of "
                f"{MAX_PIXEL_BYTES / 1024**2:.0f} MiB (set USVLM_MAX_PIXEL_BYTES to raise it)")
    return None


def check_spacing(spacing_mm: tuple[float, ...], source: str | None = None) -> str | None:
    """A problem description when an (x, y) pixel spacing cannot be an ultrasound image's
    (most likely a unit error), else None. `source` says where it came from."""
    low, high = PLAUSIBLE_SPACING_MM
    values = [float(s) for s in spacing_mm]
    if len(values) == 2 and all(low <= s <= high for s in values):
        return None
    shown = " x ".join(f"{s:.6g}" for s in values)
    origin = f" (from {source})" if source else ""
    return f"implausible pixel spacing {shown} mm{origin}; expected {low}-{high} mm"

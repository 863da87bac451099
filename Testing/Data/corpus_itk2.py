"""Bad-input corpus, second hardening round: NRRD / NHDR / MHD / NIfTI and raster files: detached data files outside the header's folder, ASCII NRRD, bad vox_offset, spacing, TIFF, CMYK JPEG, GIF.

Called by make_bad_corpus.py (`make(out, entry)`); every file written here is listed with `entry`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def make(out: Path, entry: Callable[..., None]) -> None:
    """Write this area's cases into `out` (none yet)."""

"""Bad-input corpus, second hardening round: DICOM files: codec headers that lie about the size (JPEG SOF, JPEG 2000 SIZ, deflate), palette tables, deep sequences, truncated JPEG.

Called by make_bad_corpus.py (`make(out, entry)`); every file written here is listed with `entry`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def make(out: Path, entry: Callable[..., None]) -> None:
    """Write this area's cases into `out` (none yet)."""

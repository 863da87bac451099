"""Segment names of any script in .seg.nrrd headers, as 3D Slicer writes them: UTF-8 bytes.

pynrrd (under slicerio) writes header lines as ASCII and reads them with non-ASCII bytes dropped,
so "توده‌ی پستان" or "nódulo tiroideo" could not be saved. Non-ASCII names are handed to slicerio
as ASCII placeholders and swapped for their UTF-8 bytes in the written header; on reading, the
name lines are decoded from the header bytes again.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

_PLACEHOLDER = "usvlm-utf8-name-{}"
_NAME_LINE = re.compile(rb"^(Segment\d+_Name):=(.*)$")
_MAX_HEADER_BYTES = 1 << 20


def placeholder(index: int) -> str:
    return _PLACEHOLDER.format(index)


def needs_placeholder(name: str) -> bool:
    return not name.isascii()


def put_names(path: str | os.PathLike[str], names: Mapping[str, str]) -> None:
    """Replace each placeholder in the header of the NRRD file at `path` by its UTF-8 name; the
    data after the header are copied unchanged."""
    if not names:
        return
    path = Path(path)
    patched = path.with_name(path.name + ".names")
    try:
        with open(path, "rb") as src, open(patched, "wb") as dst:
            for line in iter(src.readline, b""):
                for token, name in names.items():
                    line = line.replace(token.encode("ascii"), name.encode("utf-8"))
                dst.write(line)
                if line in (b"\n", b"\r\n"):  # the blank line that ends the header
                    break
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(patched, path)
    finally:
        patched.unlink(missing_ok=True)


def read_names(path: str | os.PathLike[str]) -> dict[str, str]:
    """{"Segment0_Name": name, ...} decoded as UTF-8 from the header of the NRRD file at `path`."""
    names: dict[str, str] = {}
    read = 0
    with open(path, "rb") as fh:
        for line in iter(lambda: fh.readline(_MAX_HEADER_BYTES), b""):
            read += len(line)
            line = line.rstrip(b"\r\n")
            if not line or read > _MAX_HEADER_BYTES:
                break
            match = _NAME_LINE.match(line)
            if match:
                names[match.group(1).decode("ascii")] = match.group(2).decode("utf-8", "replace")
    return names

"""Atomic file output: write to a temporary file beside the target, then rename.

A crash, an exception or Ctrl-C while writing leaves the target untouched and removes the
temporary file, so a user never finds a half-written segmentation.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from usvlm.errors import OutputError


def _default_file_mode() -> int:
    # mkstemp creates 0600 files; outputs should get the permissions any new file would get.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _temp_suffix(target: Path) -> str:
    # Keep the full multi-part suffix (".seg.nrrd", ".nii.gz") so libraries that pick the format
    # from the file name write the right thing into the temporary file.
    name = target.name
    dot = name.find(".")
    return name[dot:] if dot > 0 else ""


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; move it onto `target` on success."""
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(target, f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(target, f"output folder {folder} is not writable")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + _temp_suffix(target),
                                    dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise OutputError(target, "writer produced no data")
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()

"""Write a training sample that the engine made (`EngineClient.cohort_sample`) into the cohort
folder the user chose, on the Slicer side: a remote engine never writes on its own disk.

The layout is the core's (`usvlm.cohort`, read by training's Slicer-export layout):

    <folder>/<id>.nrrd        the image (pixels and geometry only)
    <folder>/<id>.seg.nrrd    its segments
    <folder>/labels.csv       image,label: one row per sample id, sorted

Both files appear together or not at all (temporary files in the folder, then renames, undone
when one fails); labels.csv is replaced atomically. The file names come from the engine and are
never trusted: only `<id>.nrrd` and `<id>.seg.nrrd` with a plain id are written.

Standard library only, Python 3.9 syntax: this runs in Slicer's Python.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:
    from .engine_client import CohortSample

LABELS = "labels.csv"
LABEL_VALUES = ("benign", "malignant")
# The core's ids are "us-" and 16 hex digits; anything that is not a plain name is refused.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class CohortError(ValueError):
    """A sample that cannot be written; `str()` is one line for the user."""


def write_sample(folder: Union[str, "os.PathLike[str]"], sample: "CohortSample",
                 label: Optional[str]) -> Path:
    """Write `sample`'s two files into `folder` and set its row of labels.csv (removed when
    `label` is None); return the path of the .seg.nrrd."""
    if not str(folder).strip():
        # Slicer's empty path box gives "", which Path() would turn into the working directory.
        raise CohortError("no cohort folder chosen: pick the folder of the training cohort")
    target = Path(folder)
    if not target.is_dir():
        raise CohortError(f"cohort folder {str(folder)[:300]} does not exist")
    if label is not None and label not in LABEL_VALUES:
        raise CohortError(f"label must be one of {', '.join(LABEL_VALUES)} or none, got {str(label)[:50]!r}")
    files = _checked_files(sample)
    try:
        _write_together(target, files)
        _set_label(target, str(sample.id), label)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CohortError(f"cannot write to the cohort folder {target} ({reason})") from None
    return target / files[1][0]


def _checked_files(sample: "CohortSample") -> List[Tuple[str, bytes]]:
    """The sample's files as (name, bytes), image first; CohortError unless they are exactly
    `<id>.nrrd` and `<id>.seg.nrrd` with a plain id and some content each."""
    sample_id = getattr(sample, "id", None)
    if not isinstance(sample_id, str) or not _SAFE_ID.fullmatch(sample_id):
        raise CohortError(f"the engine sent a sample id that is not a plain name: {str(sample_id)[:80]!r}")
    wanted = (f"{sample_id}.nrrd", f"{sample_id}.seg.nrrd")
    files = list(getattr(sample, "files", None) or ())
    names = [f[0] if isinstance(f, tuple) and len(f) == 2 else None for f in files]
    if sorted(map(str, names)) != sorted(wanted):
        shown = ", ".join(repr(str(n)[:80]) for n in names)
        raise CohortError(f"the engine sent files other than {wanted[0]} and {wanted[1]}: {shown}")
    data = dict(files)
    for name in wanted:
        if not isinstance(data[name], (bytes, bytearray)) or not data[name]:
            raise CohortError(f"the engine sent no content for {name}")
    return [(name, bytes(data[name])) for name in wanted]


def _file_mode() -> int:
    """The mode a plain new file gets under the process's umask (temporary files are 0600)."""
    try:  # Linux shows the umask without changing it (os.umask is process-wide: racy in Slicer)
        with open("/proc/self/status", encoding="ascii") as fh:
            umask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _temporary(folder: Path, name: str, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=str(folder))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _file_mode())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def _write_together(folder: Path, files: Sequence[Tuple[str, bytes]]) -> None:
    """All the files in place, or (after any error) none of them new and the ones they were to
    replace as they were. The core's `usvlm.io.atomic` does the same; Slicer's Python cannot
    import the core, hence this copy: keep the two in step."""
    pending: List[Tuple[Path, Path]] = []  # (temporary, target)
    aside: List[Tuple[Path, Path]] = []  # (backup, target)
    placed: List[Path] = []
    try:
        for name, data in files:
            pending.append((_temporary(folder, name, data), folder / name))
        for _, target in pending:
            if target.is_dir():
                raise IsADirectoryError(21, "a folder has the sample's file name", str(target))
            if target.exists() or target.is_symlink():
                fd, backup = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".old", dir=str(folder))
                os.close(fd)
                os.replace(target, backup)
                aside.append((Path(backup), target))
        for tmp, target in pending:
            os.replace(tmp, target)
            placed.append(target)
    except BaseException:
        for target in placed:
            with contextlib.suppress(OSError):
                target.unlink()
        for backup, target in aside:
            with contextlib.suppress(OSError):
                os.replace(backup, target)
        for tmp, _ in pending:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    for backup, _ in aside:
        with contextlib.suppress(OSError):
            backup.unlink()


def _set_label(folder: Path, sample_id: str, label: Optional[str]) -> None:
    """labels.csv as the core writes it: header `image,label`, one row per id, sorted."""
    path = folder / LABELS
    rows: List[List[str]] = []
    if path.is_file():
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))[1:]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise CohortError(f"{path} is not a readable labels file ({exc}); fix or remove it") from None
    rows = [r for r in rows if r and r[0] != sample_id]
    if label is not None:
        rows.append([sample_id, label])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "label"])
    writer.writerows(sorted(rows))
    _write_together(folder, [(LABELS, text.getvalue().encode("utf-8"))])

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
from usvlm.interrupts import uninterruptible


def default_file_mode() -> int:
    """The mode a plain new file gets under the current umask (0o644 under umask 022).

    Temporary files (mkstemp) and safetensors are created 0600; outputs get this mode instead."""
    try:  # Linux exposes the umask without changing it (os.umask is process-wide, racy)
        with open("/proc/self/status", encoding="ascii") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _temp_suffix(target: Path) -> str:
    """The target's format suffix (".seg.nrrd", ".nii.gz", ".png"), for the temporary file: libraries
    that pick the format from the file name must write the right thing into it."""
    name = target.name.lower()
    for compound in (".seg.nrrd", ".nii.gz"):
        if name.endswith(compound):
            return target.name[-len(compound):]
    return target.suffix


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; move it onto `target` on success."""
    with AtomicGroup() as group:
        yield group.path(target)


class AtomicGroup:
    """Several outputs that appear together or not at all (a .seg.nrrd with its DICOM SEG,
    overlay and JSON): each file is written to a temporary path; `commit` puts them all in place.

        with AtomicGroup() as group:
            write_seg_nrrd(group.path(out / "a.seg.nrrd"), ...)
            write_dicom_seg(group.path(out / "a.dcm"), ...)
        # both exist now, or (after an exception) neither, and files they replace are untouched

    The commit moves the files it replaces aside first and restores them when any rename fails, so a
    failure never leaves a new .seg.nrrd beside an old JSON; Ctrl-C / SIGTERM wait until it is done.
    An OSError while writing (disk full, permissions) becomes a one-line `OutputError`.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def path(self, target: str | os.PathLike[str]) -> Path:
        """A temporary path beside `target` (same format suffix), moved onto it by `commit`."""
        target = Path(target)
        folder = target.parent if str(target.parent) else Path(".")
        if not folder.is_dir():
            raise OutputError(target, f"output folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise OutputError(target, f"output folder {folder} is not writable")
        if target.is_dir():
            raise OutputError(target, "is a folder; give a file name")
        tmp = _unused_name(target, ".tmp" + _temp_suffix(target))
        self._pending.append((tmp, target))
        return tmp

    def commit(self) -> list[Path]:
        for tmp, target in self._pending:
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise OutputError(target, "writer produced no data")
        mode = default_file_mode()
        with uninterruptible():
            _replace_all(self._pending, mode)
        done = [target for _, target in self._pending]
        self._pending.clear()
        return done

    def abort(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):  # best effort: the first error is the one to report
                tmp.unlink()
        self._pending.clear()

    def __enter__(self) -> "AtomicGroup":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is not None:
            targets = [target for _, target in self._pending]
            self.abort()
            if isinstance(exc, OSError) and targets:
                raise _write_error(targets[0], exc) from exc
            return
        try:
            self.commit()
        except OSError as error:
            raise _write_error(self._pending[0][1], error) from error
        finally:
            self.abort()


def _unused_name(target: Path, suffix: str) -> Path:
    """A fresh hidden name beside `target` (created and removed again: some writers refuse to
    overwrite an existing file)."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    os.unlink(name)
    return Path(name)


def _replace_all(pending: list[tuple[Path, Path]], mode: int) -> None:
    """Move every temporary file onto its target; all or nothing. Existing targets are moved aside
    first and put back when a later step fails."""
    aside: list[tuple[Path, Path]] = []  # (backup, target)
    placed: list[Path] = []
    try:
        for tmp, target in pending:
            os.chmod(tmp, mode)
            if target.exists() or target.is_symlink():
                backup = _unused_name(target, ".old")
                os.replace(target, backup)
                aside.append((backup, target))
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
        raise
    for backup, _ in aside:
        with contextlib.suppress(OSError):
            backup.unlink()


def _write_error(target: Path, error: OSError) -> OutputError:
    reason = error.strerror or type(error).__name__
    return OutputError(target, f"cannot write the output ({reason}); nothing was written")

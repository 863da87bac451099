"""Every file a command will write, planned and checked before any work is done.

A command first names its inputs, then claims each output path. A claim is refused, with one line
naming the file, when the path is one of the inputs (by resolved path or by inode, so a hard link or
a symlink to the input counts), when another output of the same run already claimed it, when it is a
folder, or when it exists and the user did not ask for `--force`. Only when every claim holds does
the command start; the files themselves are then written with `AtomicGroup`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from usvlm.errors import OutputError


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _resolved(path: Path) -> Path:
    """The absolute path with symlinks of the folder resolved (the file itself may not exist)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file: the same resolved path, or (through a hard link or a
    symlink) the same inode."""
    a, b = Path(a), Path(b)
    if _resolved(a) == _resolved(b):
        return True
    ida = _identity(a)
    return ida is not None and ida == _identity(b)


class OutputPlan:
    """The outputs of one command, checked against its inputs and against existing files."""

    def __init__(self, inputs: Iterable[str | os.PathLike[str]] = (), *, force: bool = False) -> None:
        self.force = force
        self._inputs: dict[Path, Path] = {}  # resolved -> as given
        self._inodes: dict[tuple[int, int], Path] = {}
        self._claimed: dict[Path, Path] = {}
        for one in inputs:
            self.add_input(one)

    def add_input(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        self._inputs[_resolved(path)] = path
        identity = _identity(path)
        if identity is not None:
            self._inodes[identity] = path

    def claim(self, target: str | os.PathLike[str]) -> Path:
        """Reserve `target` for writing; an `OutputError` when it must not be written."""
        target = Path(target)
        resolved = _resolved(target)
        source = self._inputs.get(resolved) or self._inodes.get(_identity(target) or (-1, -1))
        if source is not None:
            raise OutputError(target, f"is an input of this command ({source}); it is never "
                                      "overwritten: choose another output name")
        if resolved in self._claimed:
            raise OutputError(target, "would be written twice by this command (two outputs share "
                                      "the name); write them into different folders")
        if target.is_dir():
            raise OutputError(target, "is a folder; give a file name")
        if (target.exists() or target.is_symlink()) and not self.force:
            raise OutputError(target, "already exists; add --force to replace it")
        self._claimed[resolved] = target
        return target

    @property
    def targets(self) -> list[Path]:
        return list(self._claimed.values())

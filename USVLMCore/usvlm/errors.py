"""The project's own error types.

Every error a user can cause is raised as a `USVLMError` subclass whose message is one line that
names the file (when there is one) and the problem. The CLI prints that line and exits with 2.
"""

from __future__ import annotations

from pathlib import Path


class USVLMError(Exception):
    """Base class of all errors the user can cause and fix."""


class InputError(USVLMError):
    """A file or value given by the user cannot be used (unreadable, wrong shape, absurd values)."""

    def __init__(self, source: str | Path | None, problem: str) -> None:
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class OutputError(USVLMError):
    """An output cannot be written (folder missing, not writable, refused overwrite)."""

    def __init__(self, target: str | Path, problem: str) -> None:
        self.target = str(target)
        self.problem = problem
        super().__init__(f"{self.target}: {problem}")

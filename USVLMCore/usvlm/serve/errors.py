"""Errors of the engine's HTTP interface: every one is JSON `{"error": one line, "kind": word}`
with an HTTP status, so a client shows the line and branches on the kind."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from usvlm.errors import InputError, USVLMError
from usvlm.oneline import printable

log = logging.getLogger("usvlm.serve")

MAX_MESSAGE_CHARS = 400


class RequestError(USVLMError):
    """A request the engine refuses: `status` is the HTTP code, `kind` a stable word."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclass(frozen=True)
class ErrorReply:
    status: int
    kind: str
    message: str

    def body(self) -> dict[str, str]:
        return {"error": self.message, "kind": self.kind}


def error_reply(exc: BaseException) -> ErrorReply:
    """The reply for an exception: the project's one-line messages for what a user can cause, a
    short 'internal error' line (traceback in the engine's log) for a defect."""
    from usvlm.engine import Cancelled

    def line(text: object) -> str:
        return printable(str(text).replace("\n", " "), MAX_MESSAGE_CHARS)

    if isinstance(exc, RequestError):
        return ErrorReply(exc.status, exc.kind, line(exc))
    if isinstance(exc, Cancelled):
        return ErrorReply(409, "cancelled", line(exc))
    if isinstance(exc, InputError):
        return ErrorReply(422, "input", line(exc))
    if isinstance(exc, USVLMError):
        return ErrorReply(422, "usvlm", line(exc))
    if isinstance(exc, MemoryError):
        return ErrorReply(507, "memory", "the engine ran out of memory for this request")
    log.error("internal error", exc_info=exc)
    return ErrorReply(500, "internal", line(f"internal error in the engine: {type(exc).__name__}: {exc}"))

"""Ctrl-C and SIGTERM as exceptions, held back while a set of outputs is being committed.

The command line turns SIGINT / SIGTERM into `KeyboardInterrupt` / `Terminated`, so that atomic
writers and temporary folders clean up. The few renames that put a finished set of outputs in place
(`AtomicGroup.commit`) must not be cut in half, though: a signal that arrives inside `uninterruptible()`
is remembered and raised when the block ends, after the set is whole. (Blocking the signal with
`pthread_sigmask` would not do: Python runs handlers in the main thread whichever thread the kernel
delivered to, and torch starts threads of its own.)
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_state = threading.local()
_lock = threading.Lock()
_pending: list[int] = []  # signals that arrived inside an uninterruptible block
_depth = 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that atomic writers and temporary folders clean up."""


def interruption(signum: int) -> KeyboardInterrupt:
    """The exception that stands for `signum`."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def defer(signum: int) -> bool:
    """Called by the signal handler: True (and the signal is kept for later) while an
    uninterruptible block runs, else False (the handler raises at once)."""
    with _lock:
        if _depth > 0:
            _pending.append(signum)
            return True
    return False


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Hold SIGINT / SIGTERM back for the duration of the block, then raise the first that came."""
    global _depth
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            arrived = _pending[:1] if _depth == 0 else []
            if _depth == 0:
                _pending.clear()
        if arrived:
            raise interruption(arrived[0])

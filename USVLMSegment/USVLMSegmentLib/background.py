"""One engine call at a time off the GUI thread, polled from a QTimer (stdlib only, Python 3.9).

The call itself waits on a socket (the model runs in the engine process), so a Python thread is
enough. But Slicer never enables PythonQt's thread support, so its main thread keeps the GIL
while it sits in the Qt event loop and a Python thread runs only when the main thread releases it.
So the GUI thread waits on the call's event with a short timeout, which releases the GIL
(SlicerNNInteractive's `done_event.wait(0.03)` between `processEvents()`): the module's poll timer
calls `give_time()` on every tick, `LogicWait` loops do the same between event pumps.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from .engine_client import EngineCancelled, Progress

# How long each poll gives the worker thread: 10 ms of every 30 ms timer tick keeps the panel
# responsive and lets a reply of a few MB be decoded without waiting long for the GIL.
GIVE_SECONDS = 0.01


@dataclass(frozen=True)
class CallEvent:
    """kind: "progress" (payload: Progress), "done" (payload: the result), "error" (payload: the
    exception) or "cancelled"."""

    kind: str
    payload: Any = None


class BackgroundCall:
    """Runs `fn(report_progress)` on a daemon thread; the GUI thread polls `events()`."""

    def __init__(self, fn: Callable[[Callable[[Progress], None]], Any], name: str = "USVLM call",
                 context: Any = None) -> None:
        self.name = name
        self.context = context  # what the caller needs when the result arrives (the target nodes)
        self._fn = fn
        self._events: "queue.Queue[CallEvent]" = queue.Queue()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.started = time.monotonic()

    def start(self) -> "BackgroundCall":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            result = self._fn(lambda p: self._events.put(CallEvent("progress", p)))
            self._events.put(CallEvent("done", result))
        except EngineCancelled:
            self._events.put(CallEvent("cancelled"))
        except BaseException as exc:  # noqa: BLE001 - every failure reaches the GUI as an event
            self._events.put(CallEvent("error", exc))
        finally:
            self._finished.set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def events(self) -> List[CallEvent]:
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the call ended (or `timeout`); releases the GIL meanwhile."""
        return self._finished.wait(timeout)

    def give_time(self, seconds: float = GIVE_SECONDS) -> bool:
        """For the GUI thread's poll timer: let the call's thread run for up to `seconds`."""
        return self._finished.wait(seconds)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

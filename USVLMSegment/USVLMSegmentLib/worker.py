"""One persistent worker thread that owns the model and does all torch work.

The GUI thread submits jobs and polls for events with a QTimer (`Worker.poll`); the worker never
calls Qt or MRML, so nothing here needs Slicer and it is tested with pytest. Keeping one thread
(not a new one per run) keeps the model, its CUDA context and the engine's feature caches alive
between runs: a new prompt or a new threshold on the same image costs only the decoder.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """What the worker tells the GUI thread: progress, a result, an error or a cancel."""

    job: int
    kind: str  # "progress" | "done" | "error" | "cancelled"
    payload: Any = None


@dataclass
class JobContext:
    """Handed to a job function on the worker thread."""

    job: int
    worker: "Worker"
    cancel: Any  # usvlm.engine.CancelToken

    def progress(self, done: int, total: int, stage: str) -> None:
        self.worker._events.put(Event(self.job, "progress", (done, total, stage)))

    @property
    def state(self) -> dict[str, Any]:
        """Lives as long as the worker (the loaded Segmenter is kept here)."""
        return self.worker._state


@dataclass
class _Job:
    id: int
    fn: Callable[[JobContext], Any]
    cancel: Any = None


class Worker:
    """A daemon thread running queued jobs one at a time, in order."""

    def __init__(self, name: str = "USVLMWorker") -> None:
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._events: queue.Queue[Event] = queue.Queue()
        self._state: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._current: _Job | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- GUI thread ----------------------------------------------------------------------------
    def submit(self, fn: Callable[[JobContext], Any]) -> int:
        """Queue `fn(context)`; its return value arrives as a "done" event."""
        job = _Job(next(self._ids), fn)
        self._jobs.put(job)
        return job.id

    def cancel(self) -> None:
        """Cancel the running job (at its next check) and drop the queued ones."""
        while True:
            try:
                queued = self._jobs.get_nowait()
            except queue.Empty:
                break
            if queued is not None:
                self._events.put(Event(queued.id, "cancelled"))
        with self._lock:
            if self._current is not None and self._current.cancel is not None:
                self._current.cancel.cancel()

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._current is not None or not self._jobs.empty()

    def poll(self) -> list[Event]:
        """Events since the last poll (call from a QTimer on the GUI thread)."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def shutdown(self, timeout: float = 5.0) -> None:
        self.cancel()
        self._jobs.put(None)
        self._thread.join(timeout)

    # -- worker thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            from usvlm.engine import CancelToken, Cancelled  # torch loads here, not in the GUI

            job.cancel = CancelToken()
            with self._lock:
                self._current = job
            try:
                result = job.fn(JobContext(job.id, self, job.cancel))
                if job.cancel.cancelled:
                    raise Cancelled()
                self._events.put(Event(job.id, "done", result))
            except Cancelled:
                self._events.put(Event(job.id, "cancelled"))
            except Exception as exc:  # reported to the user in the module, never lost
                log.debug("USVLM job %d failed", job.id, exc_info=True)
                self._events.put(Event(job.id, "error", (exc, traceback.format_exc())))
            finally:
                with self._lock:
                    self._current = None


# -- jobs ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentRequest:
    """Everything a run needs, copied from the scene on the GUI thread."""

    image: Any  # usvlm.io.image.USImage
    prompts: Sequence[str]
    model: str | Path  # installed model name or directory
    device: str = "auto"
    organ: str | None = None
    frames: Sequence[int] | None = None  # None = all
    options: Any = None  # usvlm.postprocess.PostprocessOptions
    classify: bool = True
    prompt_dir: Path | None = None


@dataclass
class SegmentResponse:
    output: Any  # usvlm.engine.SegmentationOutput
    summaries: list[dict[str, Any]] = field(default_factory=list)
    model_dir: Path | None = None


def segmenter_for(context: JobContext, model: str | Path, device: str, organ: str | None,
                  prompt_dir: Path | None) -> Any:
    """The worker's Segmenter, reloaded only when the model or device changes."""
    from usvlm.engine import Segmenter
    from usvlm.model.registry import resolve_model
    from usvlm.text.banks import load_banks
    from usvlm.text.resolve import PromptResolver

    model_dir = resolve_model(model).resolve()
    key = (str(model_dir), device)
    cached = context.state.get("segmenter")
    if cached is None or context.state.get("segmenter_key") != key:
        context.progress(0, 1, "loading model")
        context.state.pop("segmenter", None)  # free the old model before loading the next
        cached = Segmenter(model_dir, device=device)
        context.state.update(segmenter=cached, segmenter_key=key, model_dir=model_dir)
    banks_key = (str(prompt_dir), organ)
    if context.state.get("banks_key") != banks_key:
        banks = load_banks(prompt_dir)
        cached.resolver = PromptResolver(banks, organ=organ)
        context.state["banks_key"] = banks_key
    return cached


def segment_job(request: SegmentRequest) -> Callable[[JobContext], SegmentResponse]:
    """A job that contours `request.prompts` and summarises each result (with classification)."""

    def run(context: JobContext) -> SegmentResponse:
        from usvlm.report import summarize_result

        segmenter = segmenter_for(context, request.model, request.device, request.organ,
                                  request.prompt_dir)
        output = segmenter.segment(request.image, list(request.prompts),
                                   frames=None if request.frames is None else list(request.frames),
                                   options=request.options, progress=context.progress,
                                   cancel=context.cancel)
        context.cancel.check()
        summaries = [summarize_result(r, output, segmenter if request.classify else None)
                     for r in output.results]
        return SegmentResponse(output, summaries, context.state.get("model_dir"))

    return run

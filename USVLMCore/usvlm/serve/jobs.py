"""One worker thread runs the model's jobs in order; the HTTP side waits on their events.

torch work stays on one thread (the Segmenter and its caches are not thread-safe) while the event
loop keeps answering: info, refine and cancel are served while a cine is being segmented. Cancel
sets the job's `CancelToken`, which the engine checks between batches of frames and between
stages; a job cancelled while still queued never starts.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from usvlm.engine import CancelToken
from usvlm.serve.errors import RequestError

log = logging.getLogger("usvlm.serve")

JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_QUEUED = 16  # more waiting jobs than this is a client in a loop


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    stage: str


@dataclass(frozen=True)
class Finished:
    value: Any


@dataclass(frozen=True)
class Failed:
    error: BaseException


Event = Progress | Finished | Failed


class JobContext:
    """What a job function gets on the worker thread."""

    def __init__(self, job: "Job") -> None:
        self._job = job
        self.cancel = job.cancel

    def progress(self, done: int, total: int, stage: str) -> None:
        self.cancel.check()  # a stage boundary: stop here once cancelled
        if stage != "done":  # the result itself says so (and a quick job then needs no stream)
            self._job.emit(Progress(int(done), int(total), str(stage)))


class Job:
    def __init__(self, job_id: str, fn: Callable[[JobContext], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.id = job_id
        self.fn = fn
        self.cancel = CancelToken()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.finished = threading.Event()
        self._loop = loop

    def emit(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed (engine shutting down)
            pass


class JobRunner:
    def __init__(self) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._current: Job | None = None
        self._thread = threading.Thread(target=self._loop, name="usvlm-engine-worker", daemon=True)
        self._thread.start()

    def new_id(self) -> str:
        return f"job-{next(self._ids)}"

    def submit(self, job_id: str | None, fn: Callable[[JobContext], Any]) -> Job:
        """Queue `fn`; its events arrive on the returned job's queue (on the calling loop)."""
        job_id = job_id or self.new_id()
        if not JOB_ID.match(job_id):
            raise RequestError(400, "bad_request", "job id must be 1-64 letters, digits, '.', '_' or '-'")
        job = Job(job_id, fn, asyncio.get_running_loop())
        with self._lock:
            if job_id in self._jobs:
                raise RequestError(409, "job_exists", f"job {job_id} is already running or queued")
            if len(self._jobs) >= MAX_QUEUED:
                raise RequestError(503, "busy", f"the engine has {MAX_QUEUED} jobs waiting; try later")
            self._jobs[job_id] = job
        self._queue.put(job)
        return job

    def cancel(self, job_id: str) -> str:
        """'cancelling' when the job was running or queued, else 'unknown' (finished or never seen)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return "unknown"
        job.cancel.cancel()
        return "cancelling"

    def cancel_all(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.cancel()

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._jobs)

    @property
    def current(self) -> str | None:
        job = self._current
        return None if job is None else job.id

    def shutdown(self, timeout: float = 5.0) -> None:
        self.cancel_all()
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._current = job
            try:
                job.cancel.check()
                job.emit(Finished(job.fn(JobContext(job))))
            except BaseException as exc:  # noqa: BLE001 - reported to the client, logged there
                job.emit(Failed(exc))
            finally:
                self._current = None
                with self._lock:
                    self._jobs.pop(job.id, None)
                job.finished.set()

"""The local engine: `usvlm serve` started as a child process of Slicer.

Standard library only besides engine_client (Python 3.9 syntax): nothing here imports torch or
usvlm. The engine runs in its own Python environment (the path of its python is given), listens
on 127.0.0.1 on a free port with a random token, and stops when Slicer does (it watches its
standard input, which is a pipe from this process).

What the GUI needs from it:
- `start()` waits for the engine's LISTENING line within a deadline and checks its health;
- any call first restarts an engine that died (once; a crash loop is an error), and
  `take_events()` / `on_event` tell the GUI so ("the engine stopped and was restarted");
- a request that loses its engine raises `EngineCrashed` (the engine is restarted for the next);
- `cancel()` kills an engine that does not acknowledge the cancel, or does not stop, in time;
- `stop()` on shutdown (or a scene close) stops the process, killing it when it does not exit.
"""

from __future__ import annotations

import collections
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, TypeVar, Union

from .engine_client import (Calibration, ClassifyReply, CohortSample, CohortSegment, EngineCancelled,
                            EngineClient, EngineError, EngineInfo, EngineUnavailable, ImageData,
                            InstalledModel, PostOptions, PromptChoices, PromptPreview, SegmentReply)

LISTENING = "USVLM-ENGINE LISTENING "
TOKEN_ENV = "USVLM_ENGINE_TOKEN"
# Variables Slicer's launcher sets for its own Python: inherited, they would make the engine's
# interpreter load Slicer's packages instead of its environment's.
_PYTHON_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "PYTHONNOUSERSITE",
                     "PYTHONSAFEPATH")
MAX_RESTARTS = 3
RESTART_WINDOW_S = 600.0
T = TypeVar("T")


class EngineStartError(EngineError):
    """The engine process did not come up (its last log line says why)."""


class EngineCrashed(EngineError):
    """The engine process died during a request; it has been restarted for the next one."""


@dataclass(frozen=True)
class EngineEvent:
    """For the GUI's status line: kind is "started", "crashed", "restarted", "killed" or "stopped"."""

    kind: str
    message: str
    time: float


class LocalEngine:
    """Starts, watches and stops one `python -m usvlm serve` process."""

    def __init__(self, python: Union[str, Path], *, model: Optional[str] = None,
                 device: Optional[str] = None, extra_args: Sequence[str] = (),
                 env: Optional[Dict[str, str]] = None, start_timeout: float = 300.0,
                 request_timeout: float = 600.0, cancel_grace: float = 5.0,
                 on_event: Optional[Callable[[EngineEvent], None]] = None, log_lines: int = 400) -> None:
        self.python = str(python)
        self.model, self.device = model, device
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.request_timeout = request_timeout
        self.cancel_grace = cancel_grace
        self.on_event = on_event
        self._log: Deque[str] = collections.deque(maxlen=log_lines)
        self._events: List[EngineEvent] = []
        self._restarts: Deque[float] = collections.deque()
        self._proc: Optional[subprocess.Popen] = None
        self._client: Optional[EngineClient] = None
        self._info: Optional[EngineInfo] = None
        self._lock = threading.RLock()
        self._stopping = False
        self._killed: set = set()  # pids killed on purpose (a cancel not honoured in time)

    # -- state ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return None if self._proc is None else self._proc.pid

    @property
    def info(self) -> Optional[EngineInfo]:
        return self._info

    def log_tail(self, lines: int = 50) -> List[str]:
        """The engine's last output lines (its stderr and stdout), for a log panel."""
        return list(self._log)[-lines:]

    def take_events(self) -> List[EngineEvent]:
        """Events since the last call (poll from the GUI thread)."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def _event(self, kind: str, message: str) -> None:
        event = EngineEvent(kind, message, time.time())
        with self._lock:
            self._events.append(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # noqa: BLE001 - a GUI callback must not break the engine's control
                pass

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> EngineInfo:
        """Start the engine (if it is not running) and return its health."""
        with self._lock:
            if self.running and self._client is not None and self._info is not None:
                return self._info
            self._stopping = False
            return self._launch()

    def _command(self) -> List[str]:
        cmd = [self.python, "-m", "usvlm", "serve", "--host", "127.0.0.1", "--port", "0", "--exit-with-stdin"]
        if self.model:
            cmd += ["--model", str(self.model)]
        if self.device:
            cmd += ["--device", str(self.device)]
        return cmd + self.extra_args

    def _environment(self, token: str) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _PYTHON_VARIABLES}
        env.update(self.env)
        env[TOKEN_ENV] = token  # not on the command line: other local users can read that
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _launch(self) -> EngineInfo:
        token = secrets.token_urlsafe(32)
        flags = 0x08000000 if os.name == "nt" else 0  # CREATE_NO_WINDOW: no console pops up
        try:
            proc = subprocess.Popen(self._command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=self._environment(token),
                                    creationflags=flags, bufsize=0)
        except OSError as exc:
            raise EngineStartError(f"cannot run the engine's Python {self.python}: "
                                   f"{exc.strerror or exc}") from None
        self._proc = proc
        url_box: List[str] = []
        found = threading.Event()
        threading.Thread(target=self._pump, args=(proc.stdout, url_box, found), daemon=True,
                         name="usvlm-engine-stdout").start()
        threading.Thread(target=self._pump, args=(proc.stderr, None, None), daemon=True,
                         name="usvlm-engine-stderr").start()
        deadline = time.monotonic() + self.start_timeout
        while not found.wait(0.1):
            if proc.poll() is not None:
                time.sleep(0.2)  # let the readers take its last words
                raise EngineStartError(f"the engine exited with code {proc.returncode} while starting: "
                                       f"{self._last_error()}")
            if time.monotonic() > deadline:
                self._kill(proc)
                raise EngineStartError(f"the engine did not start within {self.start_timeout:.0f} s "
                                       f"(last output: {self._last_error()})")
        self._client = EngineClient(url_box[0], token, timeout=self.request_timeout)
        try:
            self._info = self._client.health(timeout=max(5.0, deadline - time.monotonic()))
        except EngineError as exc:
            self._kill(proc)
            raise EngineStartError(f"the engine started but does not answer: {exc}") from None
        self._event("started", f"engine started (pid {proc.pid}, model {self._info.model.name}, "
                               f"{self._info.device})")
        return self._info

    def _pump(self, stream: Any, url_box: Optional[List[str]], found: Optional[threading.Event]) -> None:
        """Keep reading a pipe of the engine (a full pipe would block it), remembering the lines."""
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self._log.append(line)
            if url_box is not None and found is not None and not found.is_set() and line.startswith(LISTENING):
                url_box.append(line[len(LISTENING):].strip())
                found.set()
        stream.close()

    def _last_error(self) -> str:
        lines = [ln for ln in self._log if ln.strip() and not ln.startswith(LISTENING)]
        return lines[-1][:300] if lines else "no output"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the engine: close its standard input (it exits by itself), then terminate, then kill."""
        with self._lock:
            self._stopping = True
            proc, self._proc, self._client, self._info = self._proc, None, None, None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill(proc)
        self._event("stopped", "engine stopped")

    def restart(self) -> EngineInfo:
        """A fresh engine (e.g. another model or device was chosen)."""
        self.stop()
        return self.start()

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            proc.kill()
            proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def _ensure(self) -> EngineClient:
        """The client of a running engine; a dead engine is restarted once (a crash loop is an error)."""
        with self._lock:
            if self._stopping:
                raise EngineError("the engine has been stopped")
            if self._proc is not None and self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc, self._client, self._info = None, None, None
                self._note_restart(code)
                self._launch()
                self._event("restarted", f"the engine had stopped (exit code {code}) and was restarted")
            elif self._proc is None:
                self._launch()
            assert self._client is not None
            return self._client

    def _note_restart(self, code: Optional[int]) -> None:
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) >= MAX_RESTARTS:
            raise EngineStartError(f"the engine stopped {MAX_RESTARTS + 1} times within "
                                   f"{RESTART_WINDOW_S / 60:.0f} minutes (last exit code {code}); "
                                   f"not restarting it: see its log")
        self._restarts.append(now)
        self._event("crashed", f"the engine stopped unexpectedly (exit code {code})")

    def _run(self, call: Callable[[EngineClient], T]) -> T:
        client = self._ensure()
        proc = self._proc
        try:
            return call(client)
        except EngineUnavailable as lost:
            if proc is None or self._stopping:
                raise
            if proc.pid in self._killed:
                raise EngineCancelled("cancelled; the engine did not stop in time and was stopped "
                                      "(it starts again on the next run)", "cancelled") from None
            try:
                proc.wait(2.0)  # a lost connection is most often the process going away
            except subprocess.TimeoutExpired:
                raise lost from None  # alive: a network problem, reported as it is
            code = proc.returncode
            try:
                self._ensure()
            except EngineError as exc:
                raise EngineCrashed(f"the engine stopped (exit code {code}) during the request and "
                                    f"could not be restarted: {exc}") from None
            raise EngineCrashed(f"the engine stopped (exit code {code}) during the request; it was "
                                f"restarted: run again", "crashed") from None

    # -- the engine's calls --------------------------------------------------------------------
    def health(self) -> EngineInfo:
        return self._run(lambda c: c.health())

    def segment(self, image: ImageData, prompts: Sequence[str], **kwargs: Any) -> SegmentReply:
        """See EngineClient.segment."""
        return self._run(lambda c: c.segment(image, prompts, **kwargs))

    def refine(self, result_id: str, options: PostOptions, **kwargs: Any) -> SegmentReply:
        return self._run(lambda c: c.refine(result_id, options, **kwargs))

    def classify(self, image: ImageData, **kwargs: Any) -> ClassifyReply:
        return self._run(lambda c: c.classify(image, **kwargs))

    def cohort_sample(self, image: ImageData, segments: Sequence[CohortSegment], **kwargs: Any) -> CohortSample:
        """See EngineClient.cohort_sample."""
        return self._run(lambda c: c.cohort_sample(image, segments, **kwargs))

    def prompt_choices(self, organ: Optional[str] = None) -> PromptChoices:
        return self._run(lambda c: c.prompt_choices(organ))

    def preview(self, text: str, organ: Optional[str] = None) -> List[PromptPreview]:
        return self._run(lambda c: c.preview(text, organ))

    def models(self) -> List[InstalledModel]:
        return self._run(lambda c: c.models())

    def calibration(self, dicom_header: bytes, name: Optional[str] = None) -> Calibration:
        return self._run(lambda c: c.calibration(dicom_header, name))

    def cancel(self, job: Optional[str] = None) -> bool:
        """Cancel the running job(s). True when the engine acknowledged and stopped them within
        `cancel_grace` seconds; otherwise the engine process is killed (the next call starts a
        new one) and False is returned."""
        with self._lock:
            client, proc = self._client, self._proc
        if client is None or proc is None or proc.poll() is not None:
            return True
        jobs = [job] if job else client.jobs_in_flight
        if not jobs:
            return True
        deadline = time.monotonic() + self.cancel_grace
        try:
            for j in jobs:
                client.cancel(j, timeout=max(0.5, deadline - time.monotonic()))
        except EngineError:
            return self._kill_unresponsive(proc, "did not acknowledge the cancel")
        while time.monotonic() < deadline:  # acknowledged: the waiting calls should end soon
            if not set(jobs) & set(client.jobs_in_flight):
                return True
            time.sleep(0.05)
        return self._kill_unresponsive(proc, f"did not stop within {self.cancel_grace:.0f} s of the cancel")

    def _kill_unresponsive(self, proc: subprocess.Popen, why: str) -> bool:
        self._killed.add(proc.pid)
        self._kill(proc)
        self._event("killed", f"the engine {why} and was stopped; it starts again on the next run")
        with self._lock:
            if self._proc is proc:  # restarted on the next call, without counting as a crash
                self._proc, self._client, self._info = None, None, None
        return False

    def __enter__(self) -> "LocalEngine":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def default_python() -> str:
    """This interpreter: for tests and for running the engine in the same environment."""
    return sys.executable

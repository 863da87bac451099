"""The engine's private Python environment: created from Slicer's Python, never installing into it.

Standard library only (Python 3.9 syntax), no slicer / qt: the module drives an `InstallJob` from a
QTimer (`poll()` never blocks), tests drive it with `run()`. Nothing here uses a thread: PythonQt
may starve Python threads while Qt's event loop runs, so every step is a subprocess whose output
goes to a log file that `poll()` reads on.

The environment (`folder`, e.g. `<Slicer user settings>/USVLM/engine-env`) is a venv made by
`base_python -m venv`; PyTorch goes in first (a `TorchSpec`: which build, from which index), then
the engine's requirements (Resources/engine-requirements.txt), then a `.pth` file points the
environment at `core_dir`, the folder that holds the `usvlm` package shipped with the extension
(no copy: the engine always runs the core of the installed extension). A stamp file written only
after every step (and the import check) succeeded records what was installed; `status()` compares
it with what this extension would install now.

Choosing torch (SlicerPyTorch, the PyTorch extension USVLM depends on, PyTorchUtils/PyTorchUtils.py):
it knows the NVIDIA driver and the matching CUDA build through light-the-torch (ltt), which it
installs *into Slicer's Python* on first use. What it exposes, all static on `PyTorchUtilsLogic`:
  - `getCompatibleComputationBackends(torchVersionRequirement=None)` -> sorted backends such as
    ["cpu", "cu118", "cu121"] (ltt's `LttOptions.from_pip_argv(...).computation_backends`);
  - `_getPipInstallArguments(backend, torchReq, torchvisionReq)` -> ["install", "torch<req>",
    "torchvision<req>", "--pytorch-computation-backend=<backend>"] for `ltt`;
  - `nvidiaDriverVersionInformation` ("installed version X" or "", via ltt's private
    `_cb._detect_nvidia_driver_version`);
  - `installTorch(...)` installs into Slicer's own Python: never call it for the engine.
ltt maps a backend to PyTorch's wheel index `https://download.pytorch.org/whl/<backend>`. So the
module should: when `slicer.util.getModule("PyTorchUtils")` exists *and* `light_the_torch` is already
importable (calling getCompatibleComputationBackends otherwise pip-installs ltt into Slicer's
Python), take the highest "cuXXX" backend (else "cpu") and build `TorchSpec.for_backend(backend)`;
otherwise use `TorchSpec.default()` (the CPU build), and let the user pick a backend in the panel.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

MISSING, INCOMPLETE, READY, OUTDATED = "missing", "incomplete", "ready", "outdated"
STAMP = "usvlm-engine.json"
PTH = "usvlm-core.pth"
TORCH_INDEX = "https://download.pytorch.org/whl/"
# The core's requires-python (pyproject.toml): Slicer 5.8's Python 3.9 cannot host the engine.
MIN_PYTHON = (3, 10)
# As engine_process: variables Slicer's launcher sets for its own Python. Inherited, PYTHONHOME
# turns off venv detection, so pip would install into Slicer's site-packages.
_PYTHON_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "PYTHONNOUSERSITE",
                     "PYTHONSAFEPATH")
# pip settings that would send the packages somewhere other than the environment.
_PIP_REDIRECTS = ("PIP_USER", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_REQUIRE_VIRTUALENV")
_PIP_PROGRESS = ("Collecting ", "Downloading ", "Processing ", "Installing collected packages", "Successfully installed",
                 "Building wheel", "Looking in indexes")
_MODULE_DIR = Path(__file__).resolve().parent.parent  # the folder of USVLMSegment.py


def default_requirements() -> Path:
    """Resources/engine-requirements.txt beside the module (source tree and installed extension)."""
    return _MODULE_DIR / "Resources" / "engine-requirements.txt"


def default_core_dir() -> Path:
    """The folder holding the `usvlm` package: qt-scripted-modules/ installed, USVLMCore/ in the repo."""
    for candidate in (_MODULE_DIR, _MODULE_DIR.parent / "USVLMCore"):
        if (candidate / "usvlm" / "__init__.py").is_file():
            return candidate
    return _MODULE_DIR


@dataclass(frozen=True)
class TorchSpec:
    """Which PyTorch build goes into the environment: pip requirements, and the index they come
    from (None: the default index, as pip is configured)."""

    packages: Tuple[str, ...] = ("torch>=2.1", "torchvision>=0.16")
    index_url: Optional[str] = None

    @classmethod
    def default(cls) -> "TorchSpec":
        """The CPU build. PyPI's Linux torch is the multi-GB CUDA build and its Windows one the
        CPU build; macOS wheels (CPU/MPS) exist on PyPI only."""
        return cls() if sys.platform == "darwin" else cls.for_backend("cpu")

    @classmethod
    def for_backend(cls, backend: str, torch: str = ">=2.1", torchvision: str = ">=0.16") -> "TorchSpec":
        """A build for one of SlicerPyTorch's / light-the-torch's backends ("cpu", "cu121", "rocm6.1")."""
        if not re.fullmatch(r"[a-z]+[0-9.]*", backend):
            raise ValueError(f"not a PyTorch computation backend: {backend!r}")
        return cls((f"torch{torch}", f"torchvision{torchvision}"), TORCH_INDEX + backend)

    def describe(self) -> str:
        return " ".join(self.packages) + (f" from {self.index_url}" if self.index_url else "")


@dataclass(frozen=True)
class EnvStatus:
    """state: missing / incomplete / ready / outdated; reason: one line for the panel."""

    state: str
    python: Path
    reason: str
    installed: Optional[Dict[str, str]] = None  # the stamp, when there is one


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    error: str = ""
    python: str = ""
    usvlm: str = ""
    torch: str = ""
    cuda: bool = False


@dataclass(frozen=True)
class InstallEvent:
    """kind: "step" (a step starts), "log" (an output line), "progress" (a pip milestone line),
    "done", "failed" (text: one line naming the step), "cancelled"."""

    kind: str
    step: int
    steps: int
    title: str
    text: str = ""

    @property
    def fraction(self) -> float:
        """For a progress bar: steps finished so far."""
        done = self.steps if self.kind == "done" else max(0, self.step - 1)
        return done / self.steps if self.steps else 0.0


@dataclass(frozen=True)
class InstallPlan:
    torch: TorchSpec = field(default_factory=TorchSpec.default)
    pip_args: Tuple[str, ...] = ()  # for every pip call (e.g. --proxy, --find-links, --no-compile)


class _StepError(Exception):
    pass


@dataclass
class _Step:
    title: str
    command: Callable[[], Optional[List[str]]]  # the subprocess to run; None: done in-process
    after: Optional[Callable[[str], None]] = None  # gets the step's output once it exited 0


def _clean_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PYTHON_VARIABLES + _PIP_REDIRECTS}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:") or "Error:" in ln]
    line = (errors or lines or ["no output"])[-1]
    return line[:limit]


class EngineEnvironment:
    """The engine's environment in `folder`, created by `base_python`, running the core in `core_dir`."""

    def __init__(self, folder: Union[str, Path], base_python: Union[str, Path],
                 core_dir: Union[str, Path, None] = None, requirements: Union[str, Path, None] = None,
                 min_python: Tuple[int, int] = MIN_PYTHON) -> None:
        self.folder = Path(folder)
        self.base_python = str(base_python)
        self.core_dir = Path(core_dir) if core_dir is not None else default_core_dir()
        self.requirements = Path(requirements) if requirements is not None else default_requirements()
        self.min_python = min_python
        self.log_path = self.folder.parent / (self.folder.name + "-install.log")
        self._base_version: Optional[str] = None

    # -- what is there ---------------------------------------------------------------------------
    @property
    def python(self) -> Path:
        if os.name == "nt":
            return self.folder / "Scripts" / "python.exe"
        return self.folder / "bin" / "python"

    @property
    def stamp_path(self) -> Path:
        return self.folder / STAMP

    def base_version(self) -> str:
        """The base interpreter's version ("3.12.10"), asked once."""
        if self._base_version is None:
            proc = subprocess.run([self.base_python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                                  capture_output=True, text=True, env=_clean_env(), timeout=120)
            if proc.returncode != 0:
                raise OSError(f"cannot run {self.base_python}: {_one_line(proc.stderr)}")
            self._base_version = proc.stdout.strip()
        return self._base_version

    def core_version(self) -> str:
        init = self.core_dir / "usvlm" / "__init__.py"
        try:
            found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", init.read_text("utf-8"), re.M)
        except OSError:
            return "missing"
        return found.group(1) if found else "unknown"

    def expected(self, torch: Optional[TorchSpec] = None) -> Dict[str, str]:
        """What the stamp of an up-to-date environment says (torch only when a spec is given)."""
        wanted = {"requirements": hashlib.sha256(self.requirements.read_bytes()).hexdigest(),
                  "core": self.core_version(), "core_dir": str(self.core_dir.resolve()),
                  "python": self.base_version()}
        if torch is not None:
            wanted["torch"] = torch.describe()
        return wanted

    def status(self, torch: Optional[TorchSpec] = None) -> EnvStatus:
        """Is the environment there and up to date? Give `torch` to also require that build."""
        if not self.folder.exists():
            return EnvStatus(MISSING, self.python, "the engine environment has not been created")
        try:
            stamp = json.loads(self.stamp_path.read_text("utf-8"))
        except (OSError, ValueError):
            return EnvStatus(INCOMPLETE, self.python, "the engine environment was not completely installed")
        if not self.python.exists():
            return EnvStatus(INCOMPLETE, self.python, f"the environment has no Python ({self.python})", stamp)
        wanted = self.expected(torch)
        changed = [key for key, value in wanted.items() if stamp.get(key) != value]
        if changed:
            return EnvStatus(OUTDATED, self.python, "installed for another " + ", ".join(
                {"requirements": "set of requirements", "core": "version of the core",
                 "core_dir": "extension folder", "python": "Slicer Python",
                 "torch": "PyTorch build"}[k] for k in changed), stamp)
        return EnvStatus(READY, self.python, f"ready (torch {stamp.get('torch_version', '?')}, "
                                             f"core {stamp.get('core')})", stamp)

    def verify(self, timeout: float = 120.0) -> VerifyResult:
        """Import the core and torch in the environment: versions, or one line saying what failed."""
        try:
            proc = subprocess.run([str(self.python), "-I", "-c", _VERIFY], capture_output=True, text=True,
                                  env=_clean_env(), timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return VerifyResult(False, f"cannot run the engine's Python {self.python}: {exc}")
        if proc.returncode != 0:
            return VerifyResult(False, _one_line(proc.stderr))
        try:
            info = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return VerifyResult(False, f"unexpected output: {_one_line(proc.stdout)}")
        return VerifyResult(True, "", info["python"], info["usvlm"], info["torch"], info["cuda"])

    # -- installing ------------------------------------------------------------------------------
    def install(self, plan: Optional[InstallPlan] = None) -> "InstallJob":
        """A job that (re)builds the environment; nothing runs until it is polled."""
        return InstallJob(self, plan or InstallPlan())


# Prints what the engine would run on, without starting it.
_VERIFY = """
import json, sys, importlib.util
import torch, usvlm
missing = [m for m in ("fastapi", "uvicorn", "open_clip") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit("the engine environment lacks " + ", ".join(missing))
print(json.dumps({"python": "%d.%d.%d" % sys.version_info[:3], "usvlm": usvlm.__version__,
                  "torch": torch.__version__, "cuda": bool(torch.cuda.is_available())}))
"""

_PATHS = "import json, sys, sysconfig; print(json.dumps([sys.prefix, sys.base_prefix, sysconfig.get_paths()['purelib']]))"
_TORCH_PINS = """
import importlib.metadata as m
for name in ("torch", "torchvision"):
    try:
        print(name + "==" + m.version(name))
    except m.PackageNotFoundError:
        pass
"""


class InstallJob:
    """The steps of one install. Call `poll()` often (a QTimer), or `run()` to block; `cancel()` kills
    the running step. The stamp is removed before the first step and written after the last."""

    def __init__(self, env: EngineEnvironment, plan: InstallPlan) -> None:
        self.env, self.plan = env, plan
        self.steps = self._plan_steps()
        self.step = 0  # 1-based index of the running step; 0 before the start
        self.state = "pending"  # pending, running, done, failed, cancelled
        self.error = ""
        self.pid: Optional[int] = None  # the running (or last) step's process
        self._proc: Optional[subprocess.Popen] = None
        self._log_file = None
        self._offset, self._partial = 0, b""
        self._step_lines: List[str] = []
        self._tail: List[str] = []
        self._events: List[InstallEvent] = []
        self._site = ""
        self._torch_version = ""

    # -- the plan --------------------------------------------------------------------------------
    def _pip(self, *args: str) -> List[str]:
        return [str(self.env.python), "-I", "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                "--progress-bar", "off", *self.plan.pip_args, *args]

    def _plan_steps(self) -> List[_Step]:
        torch = self.plan.torch
        steps = [_Step("Create the environment", self._create_command, self._check_prefix)]
        if torch.packages:
            index = ["--index-url", torch.index_url] if torch.index_url else []
            steps.append(_Step("Install PyTorch", lambda: self._pip(*torch.packages, *index)))
        steps += [_Step("Install the engine's packages", self._requirements_command),
                  _Step("Link the core", self._link_core),
                  _Step("Check the engine", lambda: [str(self.env.python), "-I", "-c", _VERIFY], self._stamp)]
        return steps

    def _create_command(self) -> List[str]:
        version = self.env.base_version()
        if tuple(int(p) for p in version.split(".")[:2]) < self.env.min_python:
            raise _StepError(f"Python {version} cannot run the engine (it needs "
                             f"{'.'.join(map(str, self.env.min_python))} or later): use a remote engine, "
                             "or start Slicer with USVLM_ENGINE_BASE_PYTHON set to a newer Python")
        cmd = [self.env.base_python, "-m", "venv"]
        cfg = self.env.folder / "pyvenv.cfg"
        # Another base interpreter (Slicer upgraded): start afresh, its packages would not load.
        if cfg.exists() and f"= {version}" not in cfg.read_text("utf-8", "replace"):
            cmd.append("--clear")
        return cmd + [str(self.env.folder)]

    def _check_prefix(self, _output: str) -> None:
        """pip must install into the environment, never into the base interpreter."""
        proc = subprocess.run([str(self.env.python), "-I", "-c", _PATHS], capture_output=True, text=True,
                              env=_clean_env(), timeout=120)
        if proc.returncode != 0:
            raise _StepError(f"the new environment's Python does not run: {_one_line(proc.stderr)}")
        prefix, base_prefix, site = json.loads(proc.stdout.strip().splitlines()[-1])
        folder = self.env.folder.resolve()
        if Path(prefix).resolve() != folder or Path(prefix).resolve() == Path(base_prefix).resolve():
            raise _StepError(f"the new environment's Python does not use its own folder (prefix {prefix})")
        if folder not in Path(site).resolve().parents:
            raise _StepError(f"the new environment's site-packages is outside it ({site})")
        self._site = site

    def _requirements_command(self) -> List[str]:
        # Pin the torch just installed: a requirement must not swap the chosen build (say the CPU
        # one) for another index's; a conflict fails this step instead, with pip's message.
        proc = subprocess.run([str(self.env.python), "-I", "-c", _TORCH_PINS], capture_output=True, text=True,
                              env=_clean_env(), timeout=120)
        pins = proc.stdout if proc.returncode == 0 else ""
        self._torch_version = next((ln.split("==", 1)[1] for ln in pins.splitlines() if ln.startswith("torch==")), "")
        constraints = self.env.folder / "usvlm-torch-constraints.txt"
        constraints.write_text(pins, "utf-8")
        return self._pip("-r", str(self.env.requirements), "-c", str(constraints))

    def _link_core(self) -> None:
        if not (self.env.core_dir / "usvlm" / "__init__.py").is_file():
            raise _StepError(f"the core is not in {self.env.core_dir}")
        # A .pth line is a folder added to sys.path: the engine imports the extension's own core.
        (Path(self._site) / PTH).write_text(str(self.env.core_dir.resolve()) + "\n", "utf-8")
        return None

    def _stamp(self, output: str) -> None:
        try:
            info = json.loads(output.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise _StepError(f"unexpected output: {_one_line(output)}") from None
        stamp = dict(self.env.expected(self.plan.torch), torch_version=info["torch"],
                     usvlm_version=info["usvlm"], installed=time.strftime("%Y-%m-%d %H:%M:%S"))
        tmp = self.env.stamp_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stamp, indent=1), "utf-8")
        os.replace(tmp, self.env.stamp_path)  # atomic: never half a stamp

    # -- driving ---------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def title(self) -> str:
        return self.steps[self.step - 1].title if self.step else ""

    def log_tail(self, lines: int = 40) -> List[str]:
        return self._tail[-lines:]

    def _emit(self, kind: str, text: str = "") -> None:
        self._events.append(InstallEvent(kind, self.step, len(self.steps), self.title, text))

    def poll(self) -> List[InstallEvent]:
        """Advance without blocking (but for the quick in-process steps); the events since the
        last call."""
        if self.state in ("pending", "running"):
            try:
                if self.state == "pending":
                    self._begin()
                self._advance()
            except _StepError as exc:
                self._fail(str(exc))
            except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                self._fail(f"{type(exc).__name__}: {exc}")
        events, self._events = self._events, []
        return events

    def run(self, on_event: Optional[Callable[[InstallEvent], None]] = None, interval: float = 0.1) -> str:
        """Block until the job ends (tests, command line); the final state."""
        while True:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            if self.finished:
                return self.state
            time.sleep(interval)

    def cancel(self) -> None:
        """Kill the running step; the environment stays unstamped (incomplete)."""
        if self.finished:
            return
        self._kill()
        self._close_log()
        self.state = "cancelled"
        self.error = f"{self.title or 'the install'} was cancelled"
        self._emit("cancelled", self.error)

    def _begin(self) -> None:
        self.state = "running"
        self.env.folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.env.stamp_path.unlink()
        except FileNotFoundError:
            pass
        self.env.log_path.write_bytes(b"")
        self._offset = 0

    def _advance(self) -> None:
        while self.state == "running":
            if self._proc is None:
                if self.step == len(self.steps):
                    self.state = "done"
                    self._emit("done", "the engine environment is ready")
                    return
                self.step += 1
                self._step_lines = []
                self._emit("step", self.title)
                command = self.steps[self.step - 1].command()
                if command is None:
                    continue  # done in-process
                self._start(command)
            self._read_log()
            code = self._proc.poll()
            if code is None:
                return  # still running: come back on the next poll
            self._read_log()
            self._proc = None
            self._close_log()
            if code != 0:
                detail = _one_line("\n".join(self._step_lines))
                raise _StepError(f"{detail} (exit code {code})")
            after = self.steps[self.step - 1].after
            if after is not None:
                after("\n".join(self._step_lines))

    def _start(self, command: List[str]) -> None:
        self._log_file = open(self.env.log_path, "ab")
        self._log_file.write(("$ " + " ".join(command) + "\n").encode("utf-8"))
        self._log_file.flush()
        kwargs: Dict[str, object] = {}
        if os.name == "nt":
            kwargs["creationflags"] = 0x08000000 | 0x00000200  # no console window; own process group
        else:
            kwargs["start_new_session"] = True  # one group: a cancel also ends pip's children
        self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                      stderr=subprocess.STDOUT, env=_clean_env(), **kwargs)
        self.pid = self._proc.pid

    def _read_log(self) -> None:
        try:
            with open(self.env.log_path, "rb") as log:
                log.seek(self._offset)
                data = log.read()
        except OSError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip()
            self._step_lines.append(line)
            self._tail = (self._tail + [line])[-400:]
            self._emit("log", line)
            if line.lstrip().startswith(_PIP_PROGRESS):
                self._emit("progress", line.strip()[:160])

    def _fail(self, why: str) -> None:
        self._kill()
        self._close_log()
        self.state = "failed"
        self.error = f"{self.title or 'Preparing'} failed: {why}"
        self._emit("failed", self.error)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            if os.name == "nt":
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, timeout=30)
            else:
                os.killpg(proc.pid, signal.SIGKILL)
        except (OSError, subprocess.SubprocessError):
            pass
        try:
            proc.kill()
            proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def engine_python(folder: Union[str, Path]) -> Path:
    """The environment's interpreter (what LocalEngine is given)."""
    return EngineEnvironment(folder, sys.executable).python


__all__ = ["EngineEnvironment", "EnvStatus", "InstallEvent", "InstallJob", "InstallPlan", "TorchSpec",
           "VerifyResult", "MISSING", "INCOMPLETE", "READY", "OUTDATED"]

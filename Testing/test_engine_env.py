"""The engine's private environment (USVLMSegmentLib/engine_env.py), built for real by pip.

One environment with the real engine requirements is built per module run (from this interpreter,
with this environment's torch build, which pip finds on the local disk) and reused: it goes from
missing to ready, imports the core through its .pth link, runs `usvlm serve` for LocalEngine, and
leaves the base interpreter's packages as they were. Cancel and failure use small installs.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "USVLMSegment"))

from USVLMSegmentLib.engine_env import (INCOMPLETE, MISSING, OUTDATED, PTH, READY,  # noqa: E402
                                        EngineEnvironment, InstallPlan, TorchSpec, default_core_dir,
                                        default_requirements)

CORE = ROOT / "USVLMCore"
# This environment's torch build: installed here by pip, so pip finds it again (no download).
TEST_TORCH = TorchSpec(tuple(f"{name}=={importlib.metadata.version(name)}" for name in ("torch", "torchvision")))
FAST = ("--no-compile",)  # the tests' only shortcut: no .pyc written at install time


def _base_packages() -> str:
    return subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                          capture_output=True, text=True, check=True, timeout=120).stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    env = EngineEnvironment(root / "engine-env", sys.executable, CORE)
    before_status, before_packages = env.status(), _base_packages()
    events = []
    state = env.install(InstallPlan(TEST_TORCH, FAST)).run(events.append)
    assert state == "done", [e.text for e in events if e.kind in ("failed", "log")][-20:]
    yield env, events, before_status, before_packages
    shutil.rmtree(root, ignore_errors=True)  # a few GB: do not leave it to pytest's rotation


def test_install_goes_from_missing_to_ready(built):
    env, events, before, _ = built
    assert before.state == MISSING
    status = env.status(TEST_TORCH)
    assert status.state == READY, status.reason
    assert status.python == env.python and env.python.is_file()
    steps = [e.text for e in events if e.kind == "step"]
    assert steps == ["Create the environment", "Install PyTorch", "Install the engine's packages",
                     "Link the core", "Check the engine"]
    assert [e.step for e in events if e.kind == "step"] == [1, 2, 3, 4, 5]
    progress = [e.text for e in events if e.kind == "progress"]
    # "Collecting torch..." from an index, "Processing .../torch-...whl" from a local file
    assert any(e.step == 2 and "torch" in e.text for e in events if e.kind == "progress"), progress[:20]
    assert any(t.startswith("Installing collected packages") for t in progress)
    assert events[-1].kind == "done" and events[-1].fraction == 1.0
    assert any(e.kind == "log" for e in events) and env.log_path.is_file()
    stamp = json.loads(env.stamp_path.read_text())
    assert stamp["python"] == "%d.%d.%d" % sys.version_info[:3] and stamp["core"] == "0.1.0"
    assert stamp["torch_version"].split("+")[0] == importlib.metadata.version("torch")  # "+cu130"


def test_core_is_linked_not_copied_and_verified(built):
    env = built[0]
    pth = list(env.folder.rglob(PTH))
    assert len(pth) == 1 and pth[0].read_text().strip() == str(CORE.resolve())
    assert not list(env.folder.rglob("usvlm/__init__.py")), "the core must not be copied"
    result = env.verify()
    assert result.ok, result.error
    assert (result.usvlm, result.torch.split("+")[0]) == ("0.1.0", importlib.metadata.version("torch"))


def test_base_interpreter_untouched(built):
    assert _base_packages() == built[3]
    site = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert not (Path(site) / PTH).exists()


def test_changed_requirements_make_it_outdated_then_ready_again(built, tmp_path):
    env = built[0]
    assert env.status(TorchSpec.for_backend("cu121")).state == OUTDATED  # another build was asked for
    changed = tmp_path / "engine-requirements.txt"
    changed.write_text(default_requirements().read_text() + "tqdm>=4.0\n")
    newer = EngineEnvironment(env.folder, sys.executable, CORE, changed)
    status = newer.status()
    assert status.state == OUTDATED and "requirements" in status.reason
    assert newer.install(InstallPlan(TEST_TORCH, FAST)).run() == "done"  # all there already: quick
    assert newer.status(TEST_TORCH).state == READY
    assert env.status().state == OUTDATED


def test_local_engine_serves_from_the_built_environment(built, tmp_path):
    """The engine runs in the new environment: the core came through the .pth link."""
    from models import save_tiny_model
    from USVLMSegmentLib.engine_client import ImageData
    from USVLMSegmentLib.engine_process import LocalEngine

    env = built[0]
    model = save_tiny_model(tmp_path / "tiny")
    with LocalEngine(env.python, model=str(model), device="cpu", start_timeout=180) as engine:
        assert engine.info.model.name == "tiny-mona"
        pixels = (np.random.default_rng(0).random((48, 64)) * 255).astype(np.uint8)
        reply = engine.segment(ImageData(pixels, (0.2, 0.2), calibrated=True), ["cyst"])
        assert reply.segments[0].mask.shape == (48, 64)


def test_cancel_mid_install_leaves_it_incomplete(tmp_path):
    env = EngineEnvironment(tmp_path / "engine-env", sys.executable, CORE)
    job = env.install(InstallPlan(TEST_TORCH, FAST))
    seen = []
    while not job.finished:
        seen += job.poll()
        if any(e.kind == "progress" and e.step == 2 for e in seen):  # pip is fetching torch
            break
        assert not any(e.kind == "failed" for e in seen), seen[-1].text
    pid = job.pid
    job.cancel()
    assert job.state == "cancelled" and "Install PyTorch" in job.error
    assert job.poll()[-1].kind == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # pip and any child of it are gone
    assert env.status().state == INCOMPLETE and not env.stamp_path.exists()


def test_failing_step_is_one_line_naming_it(tmp_path):
    requirements = tmp_path / "req.txt"
    requirements.write_text("usvlm-no-such-package-for-tests==1.0\n")
    env = EngineEnvironment(tmp_path / "engine-env", sys.executable, CORE, requirements)
    job = env.install(InstallPlan(TorchSpec(()), FAST))  # no torch step: only the failing one matters
    events = []
    assert job.run(events.append) == "failed"
    assert job.error.startswith("Install the engine's packages failed: ") and "\n" not in job.error
    assert "usvlm-no-such-package-for-tests" in job.error
    assert events[-1].kind == "failed" and events[-1].text == job.error
    assert any("usvlm-no-such-package-for-tests" in line for line in job.log_tail())
    assert env.status().state == INCOMPLETE and not env.stamp_path.exists()


def test_a_too_old_base_python_is_refused_before_anything(tmp_path):
    env = EngineEnvironment(tmp_path / "engine-env", sys.executable, CORE, min_python=(99, 0))
    job = env.install()
    assert job.run() == "failed"
    assert job.error.startswith("Create the environment failed: Python ") and "99.0" in job.error
    assert env.status().state == MISSING


def test_status_and_specs_without_installing(tmp_path):
    env = EngineEnvironment(tmp_path / "nothing", sys.executable, CORE)
    assert env.status().state == MISSING
    (tmp_path / "nothing").mkdir()
    assert env.status().state == INCOMPLETE
    assert default_core_dir() == CORE and default_requirements().is_file()
    assert "torch" not in {line.split(">")[0].split("=")[0].strip().lower()
                           for line in default_requirements().read_text().splitlines()}
    cuda = TorchSpec.for_backend("cu121")
    assert cuda.index_url == "https://download.pytorch.org/whl/cu121" and cuda.packages[0].startswith("torch")
    assert TorchSpec.default().describe().startswith("torch>=")
    with pytest.raises(ValueError):
        TorchSpec.for_backend("cu121 --extra-index-url x")

"""Static checks of the Slicer extension and tests of the module's Slicer-free parts.

Slicer cannot run here: the module files must compile, the .ui must parse and hold every widget
the Python names, the CMake lists must name exactly the files that exist, and importing the
module must not load torch. The worker thread, dependency checks and resource lookup are plain
Python and run for real (the worker with a tiny model built offline).
"""

from __future__ import annotations

import ast
import py_compile
import re
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from models import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "USVLMSegment"
LIB = MODULE / "USVLMSegmentLib"
CORE = ROOT / "USVLMCore" / "usvlm"

sys.path.insert(0, str(MODULE))  # as Slicer puts qt-scripted-modules on the path


def _cmake_list(text: str, variable: str) -> list[str]:
    body = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in body.splitlines() if line.split("#")[0].strip()]


# -- extension structure -------------------------------------------------------------------------

def test_cmake_lists_name_every_module_file():
    text = (MODULE / "CMakeLists.txt").read_text()
    name = "USVLMSegment"
    scripts = [s.replace("${MODULE_NAME}", name) for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [s.replace("${MODULE_NAME}", name) for s in _cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    for path in scripts + resources:
        assert (MODULE / path).is_file(), f"CMake lists {path}, which does not exist"
    on_disk = {f"{name}Lib/{p.name}" for p in LIB.glob("*.py")} | {f"{name}.py"}
    assert on_disk == set(scripts), "every .py of the module must be listed in CMake (and only those)"
    resource_files = {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*")
                      if p.is_file()}
    assert resource_files == set(resources)
    assert "slicerMacroBuildScriptedModule" in text and "slicer_add_python_unittest" in text
    assert "BUILD_TESTING" in text
    for folder in re.search(r"set\(USVLM_SHARED_RESOURCE_DIRS (.*?)\)", text).group(1).split():
        assert folder in ("prompts", "Models", "Samples")
    assert (ROOT / "Resources" / "prompts" / "bank.schema.json").is_file()


def test_top_level_and_core_cmake():
    top = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"?PyTorch"?\)', top)
    assert "add_subdirectory(USVLMCore)" in top and "add_subdirectory(USVLMSegment)" in top
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL"):
        assert key in top
    core = (ROOT / "USVLMCore" / "CMakeLists.txt").read_text()
    assert "install(DIRECTORY ${USVLMCore_PYTHON_PACKAGE}" in core and "GLOB_RECURSE" in core
    assert "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR" in core


def test_module_files_compile(tmp_path):
    for path in [MODULE / "USVLMSegment.py", *LIB.glob("*.py")]:
        py_compile.compile(str(path), cfile=str(tmp_path / (path.name + "c")), doraise=True)


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported when `path` is imported (module level, not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        nodes = [node]
        if isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            nodes = node.body + node.orelse
        if isinstance(node, ast.ClassDef):
            continue
        for n in nodes:
            if isinstance(n, ast.Import):
                names |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                names.add(n.module)
    return names


def _source(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] == "usvlm":
        base = CORE.joinpath(*parts[1:])
    elif parts[0] == "USVLMSegmentLib":
        base = LIB.joinpath(*parts[1:])
    else:
        return None
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_importing_the_module_loads_no_torch():
    """Slicer imports every module at start-up: no torch, transformers or open_clip then."""
    seen: set[str] = set()
    todo = ["__main__"]
    files = {"__main__": MODULE / "USVLMSegment.py"}
    heavy = {"torch", "transformers", "open_clip", "peft", "scipy", "skimage", "jsonschema", "slicerio"}
    while todo:
        name = todo.pop()
        path = files.get(name) or _source(name)
        if path is None:
            continue
        for imported in _top_level_imports(path):
            root = imported.split(".")[0]
            assert root not in heavy, f"{path.relative_to(ROOT)} imports {imported} at import time"
            # importing a.b.c runs a/__init__, a/b/__init__ too
            chain = [".".join(imported.split(".")[:i]) for i in range(1, imported.count(".") + 2)]
            for mod in chain:
                if mod not in seen:
                    seen.add(mod)
                    todo.append(mod)
    assert "usvlm.session" in seen and "USVLMSegmentLib.selftest" in seen


# -- the .ui file --------------------------------------------------------------------------------

def _ui_widgets() -> dict[str, ET.Element]:
    tree = ET.parse(MODULE / "Resources" / "UI" / "USVLMSegment.ui")
    return {w.get("name"): w for w in tree.iter("widget")}


def test_ui_names_every_widget_the_python_uses():
    widgets = _ui_widgets()
    used = set()
    for path in [MODULE / "USVLMSegment.py", *LIB.glob("*.py")]:
        used |= set(re.findall(r"self\.ui\.(\w+)", path.read_text()))
    missing = sorted(used - set(widgets))
    assert not missing, f"widgets used in Python but not in the .ui: {missing}"


def test_ui_parameter_names_match_the_parameter_node():
    source = (MODULE / "USVLMSegment.py").read_text()
    body = source.split("class USVLMSegmentParameterNode:")[1].split("\nclass ")[0]
    fields = set(re.findall(r"^\s{4}(\w+):", body, re.M))
    bound = {w.find("property[@name='SlicerParameterName']/string").text
             for w in _ui_widgets().values() if w.find("property[@name='SlicerParameterName']") is not None}
    assert bound <= fields, f"unknown parameter names in the .ui: {sorted(bound - fields)}"
    from usvlm.session import ModuleDefaults
    # Every parameter with a default takes it from usvlm.session.DEFAULTS.
    for name in re.findall(r"Default\(DEFAULTS\.(\w+)", body):
        assert name in ModuleDefaults.__dataclass_fields__


# -- dependencies and resources ------------------------------------------------------------------

def test_requirements_never_touch_slicer_packages():
    from USVLMSegmentLib.dependencies import (SLICER_BUNDLED, TORCH_PACKAGES, install_summary,
                                              missing_requirements, parse_requirements)

    reqs = parse_requirements()
    names = {r.name for r in reqs}
    assert "open-clip-torch" in names and not names & (SLICER_BUNDLED - {"pydicom"})
    assert not names & TORCH_PACKAGES  # torch comes from PyTorchUtils
    assert missing_requirements() == []  # this environment has everything
    assert "PyTorch extension" in install_summary(reqs[:1], True)


def test_missing_and_outdated_requirements(tmp_path):
    from USVLMSegmentLib.dependencies import missing_requirements

    req = tmp_path / "requirements.txt"
    req.write_text("# comment\nnumpy>=999\nSimpleITK\ntorch>=99\nsafetensors>=0.1\n"
                   "usvlm-no-such-package>=1.0\nslicerio>=999.0  # too old\n")
    lines = [r.line for r in missing_requirements(req)]
    # Slicer's own numpy / SimpleITK and torch are never reinstalled, even when "too old".
    assert lines == ["usvlm-no-such-package>=1.0", "slicerio>=999.0"]


def test_resources_are_found_in_the_source_tree(monkeypatch):
    from USVLMSegmentLib import resources

    assert resources.prompt_folder() == ROOT / "Resources" / "prompts"
    assert resources.sample_image() == ROOT / "Resources" / "Samples" / "phantom_breast_us.dcm"
    monkeypatch.delenv("USVLM_PROMPT_DIR", raising=False)
    resources.configure_environment()
    import os

    assert os.environ["USVLM_PROMPT_DIR"] == str(ROOT / "Resources" / "prompts")
    from usvlm.text.banks import load_banks

    assert len(load_banks(resources.prompt_folder())) >= 5


# -- the worker thread ---------------------------------------------------------------------------

_BACKLOG: dict[tuple[int, int], list] = {}  # events polled while waiting for another job


def _wait(worker, job, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in worker.poll():
            _BACKLOG.setdefault((id(worker), event.job), []).append(event)
        events = _BACKLOG.get((id(worker), job), [])
        if events and events[-1].kind != "progress":
            return _BACKLOG.pop((id(worker), job))
        time.sleep(0.01)
    raise AssertionError("worker did not finish")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("slicer-worker") / "model")


def test_worker_runs_segment_jobs_and_keeps_the_model(tiny_dir):
    import threading

    from usvlm.engine import Segmenter
    from usvlm.postprocess import PostprocessOptions
    from usvlm.io.volume_arrays import image_from_volume_array
    from USVLMSegmentLib.resources import prompt_folder
    from USVLMSegmentLib.worker import SegmentRequest, Worker, segment_job

    image = image_from_volume_array(np.random.default_rng(0).integers(0, 255, (3, 64, 80), dtype=np.uint8),
                                    np.diag([-0.2, -0.2, 1.0, 1.0]), is_vector=False)
    request = SegmentRequest(image, ["cyst", "breast mass"], tiny_dir, "cpu", "breast", [1],
                             PostprocessOptions(threshold=0.5), True, prompt_folder())
    worker = Worker()
    try:
        events = _wait(worker, worker.submit(segment_job(request)))
        assert [e.kind for e in events][-1] == "done", events[-1].payload
        stages = {e.payload[2] for e in events if e.kind == "progress"}
        assert {"loading model", "encoding image", "done"} <= stages
        response = events[-1].payload
        assert response.output.frames == [1] and response.output.results[0].mask.shape == (64, 80)
        assert len(response.summaries) == 2
        assert all("classification" in s for s in response.summaries if not s["empty"])
        # The same result as the core's own run on the same input, organ and bank.
        reference = Segmenter(tiny_dir, device="cpu", organ="breast").segment(
            image, ["cyst", "breast mass"], frames=[1], threshold=0.5)
        for got, want in zip(response.output.results, reference.results):
            assert got.prompt.name == want.prompt.name and got.prompt.matched_by != "none"
            np.testing.assert_array_equal(got.mask, want.mask)
        segmenter = worker._state["segmenter"]
        # A second job reuses the loaded model and the cached image features.
        events = _wait(worker, worker.submit(segment_job(request)))
        assert worker._state["segmenter"] is segmenter
        assert "loading model" not in {e.payload[2] for e in events if e.kind == "progress"}
        # Jobs run on the worker thread, never on the caller's.
        ran_on = _wait(worker, worker.submit(lambda ctx: threading.current_thread().name))[-1].payload
        assert ran_on == "USVLMWorker"
    finally:
        worker.shutdown()


def test_worker_reports_errors_and_cancel(tiny_dir):
    from usvlm.errors import USVLMError
    from USVLMSegmentLib.worker import SegmentRequest, Worker, segment_job

    worker = Worker()
    try:
        bad = SegmentRequest(None, ["cyst"], "/nonexistent/model")
        event = _wait(worker, worker.submit(segment_job(bad)))[-1]
        assert event.kind == "error" and isinstance(event.payload[0], USVLMError)
        assert "not found" in str(event.payload[0])

        started = __import__("threading").Event()

        def slow(ctx):
            started.set()
            for _ in range(500):
                ctx.cancel.check()
                time.sleep(0.01)
            return "finished"

        job = worker.submit(slow)
        queued = worker.submit(lambda ctx: "never")
        assert started.wait(10)
        worker.cancel()
        assert _wait(worker, job)[-1].kind == "cancelled"
        assert _wait(worker, queued)[-1].kind == "cancelled"
        assert not worker.busy
        assert _wait(worker, worker.submit(lambda ctx: 42))[-1].payload == 42  # still alive
    finally:
        worker.shutdown()


# Keys of Slicer's extension catalog entry schema (Schemas/slicer-extension-catalog-entry-schema-v1.0.1).
CATALOG_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                "build_subdirectory", "enabled", "tier"}


def test_extension_catalog_entry_agrees_with_cmake():
    import json

    entry = json.loads((ROOT / "USVLM.json").read_text())
    top = (ROOT / "CMakeLists.txt").read_text()
    assert {"$schema", "category", "scm_url"} <= set(entry) <= CATALOG_KEYS
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json")
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in top
    assert f'set(EXTENSION_HOMEPAGE "{entry["scm_url"]}")' in top
    assert f'set(EXTENSION_DEPENDS "{" ".join(entry["build_dependencies"])}")' in top
    assert 1 <= entry["tier"] <= 5


def test_urls_into_the_repository_name_files_that_exist():
    """The icon and screenshot URLs of the extension point at files of this repository."""
    top = (ROOT / "CMakeLists.txt").read_text()
    paths = re.findall(r"https://raw\.githubusercontent\.com/usvlm/SlicerUSVLM/main/([^\"\s]+)", top)
    assert len(paths) >= 2
    for path in paths:
        assert (ROOT / path).is_file(), f"CMakeLists.txt points at {path}, which does not exist"
    assert re.search(r'if\(Slicer_VERSION VERSION_LESS USVLM_MINIMUM_SLICER_VERSION\)', top)

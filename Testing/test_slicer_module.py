"""Static checks of the Slicer extension and tests of the module's Slicer-free parts.

Slicer cannot run here: the module files must compile, the .ui must parse and hold every widget
the Python names, the CMake lists must name exactly the files that exist, and importing the
module must not load torch or the core (the model runs in the engine process). Resource lookup
is plain Python and runs for real.
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
    heavy = {"torch", "transformers", "open_clip", "peft", "scipy", "skimage", "jsonschema", "slicerio",
             "pydicom", "SimpleITK", "highdicom", "fastapi", "uvicorn"}
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
    assert "USVLMSegmentLib.widget" in seen and "USVLMSegmentLib.selftest" in seen
    core = sorted(m for m in seen if m.split(".")[0] == "usvlm")
    assert not core, f"Slicer's Python must not import the core (it runs in the engine): {core}"


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
    source = (LIB / "parameters.py").read_text()
    body = source.split("class USVLMSegmentParameterNode:")[1].split("\nclass ")[0]
    fields = set(re.findall(r"^\s{4}(\w+):", body, re.M))
    bound = {w.find("property[@name='SlicerParameterName']/string").text
             for w in _ui_widgets().values() if w.find("property[@name='SlicerParameterName']") is not None}
    assert bound <= fields, f"unknown parameter names in the .ui: {sorted(bound - fields)}"
    from USVLMSegmentLib.module_defaults import ModuleDefaults
    # Every parameter with a default takes it from module_defaults.DEFAULTS.
    for name in re.findall(r"Default\(DEFAULTS\.(\w+)", body):
        assert name in ModuleDefaults.__dataclass_fields__


# -- resources ---------------------------------------------------------------------------------

def test_resources_are_found_in_the_source_tree():
    from USVLMSegmentLib import resources

    assert resources.prompt_folder() == ROOT / "Resources" / "prompts"
    assert resources.sample_image() == ROOT / "Resources" / "Samples" / "phantom_breast_us.dcm"
    from usvlm.text.banks import load_banks

    assert len(load_banks(resources.prompt_folder())) >= 5
    # Outside Slicer there is no PythonSlicer: the engine environment is made from this Python.
    assert resources.slicer_python() in (sys.executable, __import__("shutil").which("PythonSlicer"))


def test_the_module_never_installs_into_slicers_python():
    """No pip, ltt or slicer.util.pip_install call on the Slicer side: packages go into the
    engine's own environment only (engine_env.py runs pip with the environment's Python)."""
    bad = {"pip_install", "pip_ensure", "installTorch", "pydeps", "launchConsoleProcess"}
    for path in [MODULE / "USVLMSegment.py", *LIB.glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
            assert name not in bad, f"{path.name}:{node.lineno} uses {name}"
    assert not (MODULE / "Resources" / "requirements.txt").exists()


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

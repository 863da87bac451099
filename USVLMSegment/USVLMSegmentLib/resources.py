"""Where the bundled prompt banks, models and sample image are (no Slicer needed).

Installed extension: `qt-scripted-modules/Resources/{prompts,Models,Samples}` beside
USVLMSegment.py (CMake installs them there). Source tree: `<repo>/Resources/...`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parent.parent  # the folder of USVLMSegment.py


def _candidates(*parts: str) -> list[Path]:
    return [MODULE_DIR / "Resources" / Path(*parts), MODULE_DIR.parent / "Resources" / Path(*parts)]


def prompt_folder() -> Path | None:
    """The bundled prompt banks (the folder holding bank.schema.json)."""
    return next((p for p in _candidates("prompts") if (p / "bank.schema.json").is_file()), None)


def models_folder() -> Path | None:
    return next((p for p in _candidates("Models") if p.is_dir()), None)


def sample_image() -> Path | None:
    return next((p for p in _candidates("Samples", "phantom_breast_us.dcm") if p.is_file()), None)


def slicer_python() -> str:
    """Slicer's own Python launcher, from which the engine's environment is created. Inside
    Slicer `sys.executable` is PythonSlicer (qSlicerCoreApplication sets it); Slicer's own
    `_executePythonModule` looks it up on the PATH the same way."""
    if Path(sys.executable).stem.lower().startswith("pythonslicer"):
        return sys.executable
    return shutil.which("PythonSlicer") or sys.executable

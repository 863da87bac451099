"""Where the bundled prompt banks, models and sample image are (no Slicer needed).

Installed extension: `qt-scripted-modules/Resources/{prompts,Models,Samples}` beside
USVLMSegment.py (CMake installs them there). Source tree: `<repo>/Resources/...`.
"""

from __future__ import annotations

import os
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


def configure_environment() -> None:
    """Point the core at the bundled banks unless the user chose others ($USVLM_PROMPT_DIR), so
    the command line tools run from Slicer's Python see the same banks as the module."""
    folder = prompt_folder()
    if folder is not None:
        os.environ.setdefault("USVLM_PROMPT_DIR", str(folder))

"""Which of the module's Python requirements are missing from Slicer's Python.

Installation itself goes through `slicer.packaging.pip_ensure` (after the user confirms), so
packages that Slicer bundles (numpy, SimpleITK, ...) are never replaced.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"

# Distribution name -> import name where they differ.
_IMPORT_NAMES = {"open_clip_torch": "open_clip", "scikit-image": "skimage",
                 "pylibjpeg-libjpeg": "libjpeg", "pylibjpeg-openjpeg": "openjpeg"}


def requirements(path: Path = REQUIREMENTS) -> list[str]:
    lines = (ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln]


def missing_requirements(path: Path = REQUIREMENTS) -> list[str]:
    """Requirement lines whose package cannot be imported."""
    missing = []
    for line in requirements(path):
        name = re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0]
        module = _IMPORT_NAMES.get(name, name.replace("-", "_"))
        if importlib.util.find_spec(module) is None:
            missing.append(line)
    return missing

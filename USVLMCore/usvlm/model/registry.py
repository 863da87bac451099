"""Installed models: where USVLM looks for model directories, and which one is the default.

Search order: an explicit path; `$USVLM_MODEL_DIR`; `~/.cache/usvlm/models`; the models bundled
with the package (`Resources/Models` in the repository or the Slicer extension).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from usvlm.errors import USVLMError
from usvlm.model.manifest import MANIFEST_NAME

DEFAULT_MODEL_NAME = "usvlm-default"


def bundled_models_dir() -> Path:
    """`Resources/Models` beside the core package (repository and extension layouts)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "Resources" / "Models"
        if candidate.is_dir():
            return candidate
    return here.parents[3] / "Resources" / "Models"


def search_paths() -> list[Path]:
    paths = []
    if os.environ.get("USVLM_MODEL_DIR"):
        paths.append(Path(os.environ["USVLM_MODEL_DIR"]).expanduser())
    paths.append(Path.home() / ".cache" / "usvlm" / "models")
    paths.append(bundled_models_dir())
    return paths


def installed_models() -> list[tuple[Path, dict[str, Any]]]:
    """(directory, manifest) of every model directory in the search paths."""
    found = []
    for root in search_paths():
        if not root.is_dir():
            continue
        for manifest in sorted(root.glob(f"*/{MANIFEST_NAME}")):
            try:
                found.append((manifest.parent, json.loads(manifest.read_text(encoding="utf-8"))))
            except (OSError, ValueError):
                continue  # listed by `usvlm models` only when readable; loading reports details
    return found


def resolve_model(arg: str | os.PathLike[str] | None) -> Path:
    """A model directory from a path, an installed model's name, or (None) the default model."""
    if arg is not None and Path(arg).expanduser().exists():
        return Path(arg).expanduser()
    name = str(arg) if arg is not None else DEFAULT_MODEL_NAME
    for directory, manifest in installed_models():
        if directory.name == name or manifest.get("name") == name:
            return directory
    searched = ", ".join(str(p) for p in search_paths())
    if arg is None:
        raise USVLMError(f"no model given and the default model '{DEFAULT_MODEL_NAME}' is not "
                         f"installed (searched {searched}); pass --model DIR")
    raise USVLMError(f"model '{arg}' not found: not a directory, and no installed model of that "
                     f"name (searched {searched})")

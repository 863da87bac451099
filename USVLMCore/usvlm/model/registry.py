"""Installed models: where USVLM looks for model directories, and which one is the default.

Search order: an explicit path; `$USVLM_MODEL_DIR`; `~/.cache/usvlm/models`; the models bundled
with the package (`Resources/Models` in the repository or the Slicer extension).

A models root is scanned as untrusted data: FIFOs, devices, symlinks that lead out of the root and
manifests over the size bound are skipped (a FIFO named manifest.json would hang every command,
a link to /dev/zero would fill memory), and names are printed with non-printable characters
escaped (a folder or model name can hold terminal escape sequences).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from usvlm.oneline import printable as _printable
from usvlm.errors import USVLMError
from usvlm.model.errors import CheckpointError
from usvlm.model.manifest import MANIFEST_NAME, read_bounded_file

MAX_NAME_CHARS = 200


def printable(text: object, limit: int | None = MAX_NAME_CHARS) -> str:
    """`text` safe to print (see `usvlm.oneline.printable`), cut to a model name's length."""
    return _printable(text, limit)


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


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _read_listed_manifest(directory: Path, root: Path) -> dict[str, Any] | None:
    manifest = directory / MANIFEST_NAME
    if not _inside(directory, root) or not _inside(manifest, root):
        return None
    try:
        data = json.loads(read_bounded_file(manifest, "model manifest").decode("utf-8"))
    except (CheckpointError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def installed_models() -> list[tuple[Path, dict[str, Any]]]:
    """(directory, manifest) of every model directory in the search paths.

    Manifests are parsed, not validated (loading reports the details); only a regular file of
    bounded size inside the root is read, so a hostile root cannot hang or exhaust the listing.
    """
    found = []
    for root in search_paths():
        try:
            if not root.is_dir():
                continue
            real_root = root.resolve()
            names = sorted(entry.name for entry in os.scandir(root))
        except (OSError, RuntimeError):
            continue
        for name in names:
            directory = root / name
            try:
                if not directory.is_dir():
                    continue
            except OSError:
                continue
            manifest = _read_listed_manifest(directory, real_root)
            if manifest is not None:
                found.append((directory, manifest))
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
                         f"installed (searched {printable(searched, limit=None)}); pass --model DIR")
    raise USVLMError(f"model '{printable(arg)}' not found: not a directory, and no installed model "
                     f"of that name (searched {printable(searched, limit=None)})")

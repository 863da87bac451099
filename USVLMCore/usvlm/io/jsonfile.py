"""Reading user-supplied JSON files (manifests, prompt banks) with one-line errors naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from usvlm.errors import InputError


def read_json(path: str | os.PathLike[str], what: str, error: type[InputError] = InputError) -> Any:
    """The parsed content of `path`; `what` names the file's role in messages ("prompt bank")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(path, f"{what} file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(path, f"cannot read the {what}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(path, f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    except RecursionError:
        raise error(path, f"not a usable {what}: JSON nested too deeply") from None

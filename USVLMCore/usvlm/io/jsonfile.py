"""Reading user-supplied JSON files (manifests, prompt banks) with one-line errors naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from usvlm.errors import InputError
from usvlm.io.bounded_file import read_bounded_file

# A prompt bank is a few KB; a JSON file the project reads is never near this.
MAX_JSON_BYTES = 16 << 20


def read_json(path: str | os.PathLike[str], what: str, error: type[InputError] = InputError) -> Any:
    """The parsed content of `path`; `what` names the file's role in messages ("prompt bank")."""
    path = Path(path)
    data = read_bounded_file(path, what, MAX_JSON_BYTES, error)  # no FIFO, device or huge file
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(path, f"cannot read the {what}: not UTF-8 text ({exc.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(path, f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    except RecursionError:
        raise error(path, f"not a usable {what}: JSON nested too deeply") from None

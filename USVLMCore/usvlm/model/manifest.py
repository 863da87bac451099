"""The model manifest (`manifest.json`): its JSON schema, validation, reading and writing.

A model directory holds `model.safetensors` and this manifest, which says how to rebuild the
model (backbone, adapter and head configs, preprocessing, prompts), how to use it (class names,
thresholds, temperature), where it came from (provenance, metrics) and the sha256 of every file.

The manifest itself is covered by `manifest.sha256` (one `sha256sum` line), written whenever USVLM
writes a manifest: a manifest edited by hand or by a stranger is refused before anything in it is
used, and `sha256sum -c manifest.sha256` checks it outside USVLM. The manifest is read as a regular
file of bounded size (never a FIFO or device), and NaN / Infinity are not JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jsonschema

from usvlm.io.bounded_file import read_bounded_file as _read_bounded
from usvlm.io.atomic import AtomicGroup
from usvlm.model.errors import CheckpointError
from usvlm.model.safe_config import MODEL_CFG, model_cfg_problem

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DIGEST_NAME = "manifest.sha256"
WEIGHTS_NAME = "model.safetensors"
# A manifest is a few KB (an inline prompt bank a few hundred); anything far larger is not one.
MAX_MANIFEST_BYTES = 4 << 20

_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_OBJECT = {"type": "object"}
_NONEMPTY_STRING = {"type": "string", "minLength": 1}
_SIZE = {"type": "integer", "minimum": 1, "maximum": 4096}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "USVLM model manifest",
    "type": "object",
    "required": ["format_version", "name", "backbone", "adapter", "heads", "preprocessing",
                 "prompts", "thresholds", "files"],
    # Closed at the top so a misspelt field ("threshold") is an error, not silently ignored.
    "additionalProperties": False,
    "properties": {
        "format_version": {"type": "integer", "minimum": 1},
        "name": _NONEMPTY_STRING,
        "description": {"type": "string"},
        "backbone": {
            "type": "object",
            "required": ["id"],
            "properties": {
                # "ViT-B-16", "hf-hub:org/name", "local-dir:/path", ...
                "id": _NONEMPTY_STRING,
                "weights_sha256": {"anyOf": [_SHA256, {"type": "null"}]},
                # The allow-list of what may reach open_clip (see safe_config).
                "config": MODEL_CFG,
                # True when model.safetensors holds the backbone weights too.
                "bundled": {"type": "boolean"},
            },
        },
        "adapter": {
            "type": "object",
            "required": ["type"],
            "properties": {"type": _NONEMPTY_STRING},  # "mona", "hybrid", "lora", "none"
        },
        "heads": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {"segmentation": _OBJECT, "classification": _OBJECT},
        },
        "preprocessing": {
            "type": "object",
            "required": ["input_size", "mean", "std", "color"],
            "properties": {
                "input_size": {"anyOf": [_SIZE, {"type": "array", "items": _SIZE,
                                                 "minItems": 2, "maxItems": 2}]},
                "mean": {"type": "array", "items": {"type": "number"}, "minItems": 1,
                         "maxItems": 3},
                "std": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                        "minItems": 1, "maxItems": 3},
                "color": {"enum": ["grey", "rgb"]},
            },
        },
        "prompts": {
            "type": "object",
            "properties": {
                "default": {"type": "array", "items": _NONEMPTY_STRING},
                # A file name in the model directory, a bank id, or the bank inline.
                "bank": {"anyOf": [_NONEMPTY_STRING, _OBJECT]},
            },
        },
        "class_names": {"type": "array", "items": _NONEMPTY_STRING, "minItems": 2,
                        "uniqueItems": True},
        "thresholds": {
            "type": "object",
            "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
        },
        # Divides logits: a tiny one (1e-300) overflows them to inf and the softmax to NaN. A large
        # one only flattens the probabilities (a toy fit can give 1e6); NaN / Infinity are not JSON.
        "temperature": {"type": "number", "minimum": 1e-6},
        "provenance": {
            "type": "object",
            "properties": {
                "dataset": {"type": "string"},
                "split_sizes": {"type": "object",
                                "additionalProperties": {"type": "integer", "minimum": 0}},
                "seed": {"type": ["integer", "null"]},
                "git_revision": {"type": ["string", "null"]},
                "created": {"type": "string"},
                "software": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "metrics": _OBJECT,
        "files": {
            "type": "object",
            "required": [WEIGHTS_NAME],
            "propertyNames": {"pattern": r"^[^/\\]+$",
                              "not": {"enum": [MANIFEST_NAME, DIGEST_NAME, ".", ".."]}},
            "additionalProperties": {
                "type": "object",
                "required": ["sha256", "bytes"],
                "additionalProperties": False,
                "properties": {"sha256": _SHA256, "bytes": {"type": "integer", "minimum": 0}},
            },
        },
    },
    # A classifying model must say what its classes are.
    "if": {"properties": {"heads": {"required": ["classification"]}}, "required": ["heads"]},
    "then": {"required": ["class_names"]},
}

_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


def check_format_version(manifest: Any, source: str | os.PathLike[str]) -> None:
    """Refuse manifests from a newer USVLM before the schema check, whose message would mislead."""
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(source, f"made by a newer USVLM (format_version {version}; this "
                                      f"USVLM reads up to {FORMAT_VERSION}): upgrade USVLM")


def validate_manifest(manifest: Any, source: str | os.PathLike[str] = MANIFEST_NAME) -> None:
    """Raise `CheckpointError` naming `source` and the first problems if `manifest` is invalid."""
    check_format_version(manifest, source)
    errors = sorted(_VALIDATOR.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise CheckpointError(source, "; ".join(_describe(e) for e in errors[:3]) + more)
    config = manifest["backbone"].get("config")
    problem = model_cfg_problem(config) if config is not None else None
    if problem:  # what a schema cannot say: bounds that combine several keys
        raise CheckpointError(source, f"backbone.config.{problem}")


def read_bounded_file(path: str | os.PathLike[str], what: str, limit: int = MAX_MANIFEST_BYTES,
                      error: type[CheckpointError] = CheckpointError) -> bytes:
    """`usvlm.io.bounded_file.read_bounded_file` with a manifest's size bound and error type."""
    return _read_bounded(path, what, limit, error)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_manifest(data: bytes, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and validate manifest bytes (NaN and Infinity are refused: they are not JSON)."""
    try:
        manifest = json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise CheckpointError(path, "cannot read the model manifest: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"not valid JSON (line {exc.lineno}, column {exc.colno}): "
                                    f"{exc.msg}") from None
    except ValueError as exc:  # from _no_constants
        raise CheckpointError(path, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise CheckpointError(path, "not a usable model manifest: JSON nested too deeply") from None
    validate_manifest(manifest, path)
    return manifest


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a manifest file (its checksum is checked by `verify_manifest_digest`)."""
    return parse_manifest(read_bounded_file(path, "model manifest"), path)


def digest_line(data: bytes) -> str:
    """The `manifest.sha256` text for manifest bytes (the format `sha256sum -c` reads)."""
    return f"{hashlib.sha256(data).hexdigest()}  {MANIFEST_NAME}\n"


def verify_manifest_digest(manifest_path: str | os.PathLike[str], data: bytes) -> None:
    """Refuse manifest bytes that `manifest.sha256` beside them does not vouch for."""
    manifest_path = Path(manifest_path)
    digest_path = manifest_path.parent / DIGEST_NAME
    try:
        recorded = read_bounded_file(digest_path, "manifest checksum", limit=4096)
    except CheckpointError:
        if not os.path.lexists(digest_path):
            raise CheckpointError(digest_path, f"missing: the checksum of {MANIFEST_NAME}; this "
                                               "folder was not saved by this USVLM or was altered, "
                                               "so it is not loaded") from None
        raise
    fields = recorded.split(maxsplit=1)
    if not fields or fields[0].decode("ascii", "replace") != hashlib.sha256(data).hexdigest():
        raise CheckpointError(manifest_path, f"does not match {DIGEST_NAME}: the manifest was "
                                             "changed after the model was saved; refusing to load "
                                             "it (re-save the model with USVLM if the change is "
                                             "yours)")


def manifest_text(manifest: dict[str, Any], source: str | os.PathLike[str] = MANIFEST_NAME) -> str:
    """Validate, then format as the JSON text of a manifest file."""
    validate_manifest(manifest, source)
    return json.dumps(manifest, indent=2, allow_nan=False) + "\n"


def write_manifest(path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Validate, then replace a manifest file and its checksum atomically (to update thresholds or
    metrics in place; the files' sha256 entries stay as they are). This is how a change to a
    manifest is signed off: an edit made any other way is refused on load."""
    text = manifest_text(manifest, path).encode("utf-8")
    with AtomicGroup() as group:  # both or neither: a manifest without its checksum is refused
        group.path(path).write_bytes(text)
        group.path(Path(path).parent / DIGEST_NAME).write_text(digest_line(text), encoding="utf-8")

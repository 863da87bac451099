"""The model manifest (`manifest.json`): its JSON schema, validation, reading and writing.

A model directory holds `model.safetensors` and this manifest, which says how to rebuild the
model (backbone, adapter and head configs, preprocessing, prompts), how to use it (class names,
thresholds, temperature), where it came from (provenance, metrics) and the sha256 of every file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema

from usvlm.io.atomic import atomic_output
from usvlm.model.errors import CheckpointError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.safetensors"

_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_OBJECT = {"type": "object"}
_NONEMPTY_STRING = {"type": "string", "minLength": 1}
_SIZE = {"type": "integer", "minimum": 1}

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
                "config": _OBJECT,
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
        "temperature": {"type": "number", "exclusiveMinimum": 0},
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
            "propertyNames": {"pattern": r"^[^/\\]+$", "not": {"const": MANIFEST_NAME}},
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


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a manifest file."""
    from usvlm.io.jsonfile import read_json

    path = Path(path)
    manifest = read_json(path, "model manifest", CheckpointError)
    validate_manifest(manifest, path)
    return manifest


def manifest_text(manifest: dict[str, Any], source: str | os.PathLike[str] = MANIFEST_NAME) -> str:
    """Validate, then format as the JSON text of a manifest file."""
    validate_manifest(manifest, source)
    return json.dumps(manifest, indent=2) + "\n"


def write_manifest(path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Validate, then replace a manifest file atomically (to update thresholds or metrics in place;
    the files' sha256 entries stay as they are)."""
    text = manifest_text(manifest, path)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")

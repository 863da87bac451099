"""usvlm models: the installed models and what their manifests say.

Manifests here are listed, not validated (loading checks them), so every field is read as untrusted
data: wrong types are shown as '?', and text is printed with non-printable characters escaped.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from usvlm.errors import InputError


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list installed models",
                       description="List the installed models, or (--trust DIR) sign off the manifest "
                                   "of a model folder you trust: one saved before manifests had "
                                   "checksums, or one whose manifest you edited by hand.")
    p.add_argument("--json", action="store_true")
    p.add_argument("--trust", metavar="DIR",
                   help="write DIR/manifest.sha256 for its current manifest, after checking the "
                        "manifest (schema, allowed keys, bounds) and the weights' checksums")
    return p


def trust(directory: Path) -> Path:
    """Record the checksum of `directory`'s manifest once it passes every check a load makes;
    a folder that fails keeps its previous checksum file (or none)."""
    from usvlm.io.atomic import atomic_output
    from usvlm.model.checkpoint import load_checkpoint
    from usvlm.model.manifest import (DIGEST_NAME, MANIFEST_NAME, digest_line, parse_manifest,
                                      read_bounded_file)

    manifest_path = directory / MANIFEST_NAME
    data = read_bounded_file(manifest_path, "model manifest")
    parse_manifest(data, manifest_path)  # schema, allow-listed keys, bounds: before anything is written
    digest = directory / DIGEST_NAME
    previous = read_bounded_file(digest, "manifest checksum", limit=4096) \
        if os.path.lexists(digest) else None
    with atomic_output(digest) as tmp:
        tmp.write_text(digest_line(data), encoding="utf-8")
    try:
        load_checkpoint(directory)  # the weights' sha256 and shapes, as a load checks them
    except BaseException:
        if previous is None:
            digest.unlink(missing_ok=True)
        else:
            with atomic_output(digest) as tmp:
                tmp.write_bytes(previous)
        raise
    return digest


def _field(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None


def _describe(directory: Any, m: dict[str, Any]) -> str:
    from usvlm.model.registry import printable

    metrics = _field(m, "metrics")
    dice = _field(metrics, "val_dice")
    dice = _field(metrics, "dice") if dice is None else dice
    name = m.get("name") if isinstance(m.get("name"), str) else directory.name
    backbone = _field(_field(m, "backbone"), "id") or "?"
    adapter = _field(_field(m, "adapter"), "type") or "?"
    classes = m.get("class_names") if isinstance(m.get("class_names"), list) else []
    line = (f"{printable(name)}  {printable(directory, limit=None)}\n  backbone {printable(backbone)}, "
            f"adapter {printable(adapter)}, classes [{', '.join(printable(c) for c in classes[:20])}]")
    if isinstance(dice, (int, float)) and not isinstance(dice, bool) and dice == dice:
        line += f", validation Dice {dice:.3f}"
    if isinstance(m.get("description"), str) and m["description"]:
        line += f"\n  {printable(m['description'], limit=500)}"
    return line


def run(args: argparse.Namespace) -> int:
    from usvlm.model.registry import installed_models, printable, search_paths

    if args.trust:
        directory = Path(args.trust)
        if not directory.is_dir():
            raise InputError(directory, "not a model folder")
        print(f"trusted {printable(trust(directory), limit=None)}")
        return 0

    models = installed_models()
    if args.json:
        # json.dumps escapes control characters itself (ESC -> \u001b).
        print(json.dumps([{"path": str(d), **m} for d, m in models], indent=2))
        return 0
    if not models:
        print("no models installed; searched "
              + ", ".join(printable(p, limit=None) for p in search_paths()))
        return 0
    for directory, m in models:
        print(_describe(directory, m))
    return 0

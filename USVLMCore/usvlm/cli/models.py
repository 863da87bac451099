"""usvlm models: the installed models and what their manifests say.

Manifests here are listed, not validated (loading checks them), so every field is read as untrusted
data: wrong types are shown as '?', and text is printed with non-printable characters escaped.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list installed models")
    p.add_argument("--json", action="store_true")
    return p


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

"""usvlm models: the installed models and what their manifests say."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list installed models")
    p.add_argument("--json", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from usvlm.model.registry import installed_models, search_paths

    models = installed_models()
    if args.json:
        print(json.dumps([{"path": str(d), **m} for d, m in models], indent=2))
        return 0
    if not models:
        print("no models installed; searched " + ", ".join(str(p) for p in search_paths()))
        return 0
    for directory, m in models:
        metrics = m.get("metrics", {})
        dice = metrics.get("val_dice", metrics.get("dice"))
        backbone = m.get("backbone", {}).get("id", "?")
        adapter = m.get("adapter", {}).get("type", "?")
        print(f"{m.get('name', directory.name)}  {directory}\n  backbone {backbone}, adapter {adapter}, "
              f"classes {m.get('class_names', [])}" + (f", validation Dice {dice:.3f}" if dice else "")
              + (f"\n  {m['description']}" if m.get("description") else ""))
    return 0

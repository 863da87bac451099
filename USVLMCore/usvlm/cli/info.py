"""usvlm info (placeholder: being written)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser("info", help="(not yet available)")


def run(args: argparse.Namespace) -> int:
    raise SystemExit("usvlm info is not implemented yet")

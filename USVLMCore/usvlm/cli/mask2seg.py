"""usvlm mask2seg (placeholder: being written)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser("mask2seg", help="(not yet available)")


def run(args: argparse.Namespace) -> int:
    raise SystemExit("usvlm mask2seg is not implemented yet")

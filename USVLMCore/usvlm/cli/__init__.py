"""The `usvlm` command: one sub-command per module in this package.

Every error the user can cause is a `USVLMError`: printed as one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Sequence

from usvlm import __version__
from usvlm.errors import USVLMError

# Sub-command modules; each defines `register(subparsers)` and a `run(args) -> int`.
COMMANDS = ("info", "segment", "classify", "models", "mask2seg", "phantom", "bench", "refine")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="usvlm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"usvlm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"usvlm.cli.{name}")
        command = module.register(sub)
        command.set_defaults(handler=module.run)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        warnings.showwarning = _show_warning
    try:
        return int(args.handler(args) or 0)
    except USVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `usvlm` command: one sub-command per module in this package.

Every error the user can cause is a `USVLMError`: printed as one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence

from usvlm import __version__
from usvlm.cli._common import report_error
from usvlm.errors import USVLMError
from usvlm.interrupts import Terminated, defer, interruption

# Sub-command modules; each defines `register(subparsers)` and a `run(args) -> int`.
COMMANDS = ("info", "segment", "classify", "models", "mask2seg", "phantom", "bench", "refine", "serve")


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


def _on_signal(signum, frame):  # noqa: ANN001, ANN202
    """SIGINT and SIGTERM raise KeyboardInterrupt (Terminated). An exception raised inside a
    finalizer (`__del__`, run by the garbage collector anywhere) is swallowed by Python, so there the
    signal is delivered again a moment later instead."""
    if defer(signum):  # a set of outputs is being put in place: raise once it is whole
        return
    f = frame
    while f is not None:
        if f.f_code.co_name == "__del__":
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        f = f.f_back
    raise interruption(signum)


def main(argv: Sequence[str] | None = None) -> int:
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main_thread:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
                previous[sig] = signal.signal(sig, _on_signal)
    hook = sys.unraisablehook
    sys.unraisablehook = _quiet_unraisable
    try:
        return _main(argv)
    finally:
        sys.unraisablehook = hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _quiet_unraisable(unraisable) -> None:  # noqa: ANN001
    """An error inside a finalizer (`__del__`) is not the user's: a library object half built when
    Ctrl-C / SIGTERM arrived fails to close itself, and Python would print its traceback after
    our one-line message. It goes to the debug log (-v) instead."""
    logging.getLogger("usvlm.cli").debug("ignored in %r: %s", unraisable.object, unraisable.exc_value,
                                         exc_info=(unraisable.exc_type, unraisable.exc_value,
                                                   unraisable.exc_traceback))


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        warnings.showwarning = _show_warning
    try:
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except USVLMError as exc:
        report_error(exc)
        return 2
    except BrokenPipeError:
        # `usvlm ... | head`: the reader left. Stop without a traceback, as command-line tools do,
        # and keep Python from failing again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + int(signal.SIGPIPE)
    except RecursionError as exc:  # deeply nested input that a library parses recursively
        report_error(USVLMError(f"input nested too deeply to read ({exc})"))
        return 2
    except KeyboardInterrupt as exc:
        print("error: interrupted; no partial output was left behind", file=sys.stderr)
        return 128 + int(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    except Exception as exc:  # noqa: BLE001 - a defect: one line here, the traceback with -v
        report_error(exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Argument helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from usvlm.errors import InputError, USVLMError
from usvlm.oneline import printable
from usvlm.io.raster_reader import RASTER_SUFFIXES
from usvlm.io.itk_reader import ITK_SUFFIXES

IMAGE_SUFFIXES = (".dcm", ".dicom", *ITK_SUFFIXES, *RASTER_SUFFIXES)

# What `usvlm segment` writes beside OUT.seg.nrrd: the names never equal an image's own name
# (`scan.dcm` -> `scan.seg.dcm`), and a folder of inputs skips them when it is read again.
SIDECARS = {"dicom_seg": ".seg.dcm", "overlay": ".overlay.png", "json": ".seg.json"}
OUTPUT_SUFFIXES = (".seg.nrrd", *SIDECARS.values())

log = logging.getLogger("usvlm.cli")


# Option values are checked when the command line is parsed (argparse prints one usage line and
# exits with 2), before any model is loaded or any file is read.

def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text[:40]!r}")
    return value


def spacing_arg(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError("expected two numbers, e.g. 0.1,0.1")
    x, y = (_number(v) for v in parts)
    if x <= 0 or y <= 0:
        raise argparse.ArgumentTypeError(f"pixel spacing must be positive, got {text[:40]!r}")
    return x, y


def probability_arg(text: str) -> float:
    """A number in [0, 1] (a probability threshold)."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text[:40]!r}")
    return value


def non_negative_arg(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text[:40]!r}")
    return value


def positive_arg(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text[:40]!r}")
    return value


def count_arg(minimum: int):  # noqa: ANN201 - an argparse type
    """An integer >= `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,3})?)$")


def device_arg(text: str) -> str:
    """auto, cpu, cuda, cuda:N or mps (whether it exists here is checked when the model loads)."""
    value = text.strip().lower()
    if not _DEVICE.match(value):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text[:40]!r}")
    return value


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model directory or installed model name "
                                        "(default: the bundled default model)")
    parser.add_argument("--device", default="auto", type=device_arg,
                        help="auto (default), cpu, cuda, cuda:1, mps")


def add_force_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="replace output files that already exist (inputs are never replaced)")


def expand_inputs(paths: list[str]) -> list[Path]:
    """Files as given; folders expanded to the image files they hold (sorted, not recursive)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                              and (f.name.lower().endswith(IMAGE_SUFFIXES) or "." not in f.name)
                              and not f.name.lower().endswith(OUTPUT_SUFFIXES)))
        else:
            out.append(p)
    return out


def output_names(inputs: Sequence[Path]) -> list[str]:
    """`<stem>.seg.nrrd` per input; two inputs with one stem would overwrite each other."""
    stems = [p.name.split(".")[0] or p.name for p in inputs]
    clashing = [str(p) for p, s in zip(inputs, stems) if stems.count(s) > 1]
    if clashing:
        raise InputError(clashing[0], f"inputs share an output name ({', '.join(clashing[:4])}); "
                                      "write them into different output folders")
    return [f"{s}.seg.nrrd" for s in stems]


def report_error(exc: BaseException, source: object = None) -> None:
    """Print one `error:` line on stderr. An exception that is not a USVLMError is a defect of
    USVLM, not of the input: say so (the traceback goes to the debug log, -v)."""
    if isinstance(exc, USVLMError):
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return
    log.debug("unexpected error", exc_info=exc)
    where = f"{source}: " if source is not None else ""
    print(printable(f"error: {where}unexpected {type(exc).__name__}: {str(exc)[:200]} (a defect of "
                    "USVLM; rerun with -v for the traceback and please report it)"), file=sys.stderr)


def for_each(items: Iterable[Path], work: Callable[[Path], None]) -> int:
    """Run `work` on every item; an error is reported in one line and the batch goes on.
    Returns the number of items that failed."""
    failed = 0
    for item in items:
        try:
            work(item)
        except BrokenPipeError:  # the reader of our output went away (`| head`): stop quietly
            raise
        except Exception as exc:  # noqa: BLE001 - reported, and the next input still runs
            failed += 1
            report_error(exc, item)
    return failed

"""Argument helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from usvlm.errors import InputError
from usvlm.io.raster_reader import RASTER_SUFFIXES
from usvlm.io.itk_reader import ITK_SUFFIXES

IMAGE_SUFFIXES = (".dcm", ".dicom", *ITK_SUFFIXES, *RASTER_SUFFIXES)


def spacing_arg(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError("expected two numbers, e.g. 0.1,0.1") from exc
    return x, y


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model directory or installed model name "
                                        "(default: the bundled default model)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")


def expand_inputs(paths: list[str]) -> list[Path]:
    """Files as given; folders expanded to the image files they hold (sorted, not recursive)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                              and (f.name.lower().endswith(IMAGE_SUFFIXES) or "." not in f.name)
                              and not f.name.lower().endswith(".seg.nrrd")))
        else:
            out.append(p)
    return out


def output_names(inputs: Sequence[Path]) -> list[str]:
    """`<stem>.seg.nrrd` per input; two inputs with one stem would overwrite each other."""
    stems = [p.name.split(".")[0] or p.name for p in inputs]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise InputError(None, f"inputs share the output name(s) {duplicates}; "
                               "write them into different output folders")
    return [f"{s}.seg.nrrd" for s in stems]

"""usvlm segment: contour what the prompts name, write Slicer segmentations (and DICOM SEG)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from usvlm.cli._common import add_model_args, expand_inputs, output_names, spacing_arg
from usvlm.errors import InputError, OutputError, USVLMError


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("segment", help="contour structures named by text prompts",
                       description="Contour each prompt in each input image with a USVLM model. "
                                   "One input: OUT is the .seg.nrrd file. Several inputs or a "
                                   "folder: OUT is a folder, results are OUT/<stem>.seg.nrrd.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                   help="what to contour (repeat for several segments, in this order)")
    add_model_args(p)
    p.add_argument("--threshold", type=float, help="probability threshold (default: the model's)")
    p.add_argument("--frames", default="all", help="'all' (default) or one 0-based frame number")
    p.add_argument("--min-area", type=float, default=0.0, metavar="MM2",
                   help="drop components smaller than this (mm^2)")
    p.add_argument("--all-components", action="store_true",
                   help="keep every component (default: the largest)")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.add_argument("--dicom-seg", action="store_true", help="also write DICOM SEG (DICOM inputs)")
    p.add_argument("--deidentify", action="store_true",
                   help="DICOM SEG without patient and study attributes (UID references kept)")
    p.add_argument("--overlay", action="store_true", help="also write a PNG overlay")
    p.add_argument("--json", action="store_true",
                   help="also write measurements and classification as JSON beside each result")
    p.add_argument("--spacing", type=spacing_arg, metavar="X,Y", help="pixel spacing in mm to use")
    p.add_argument("--no-progress", action="store_true")
    return p


def _frames(text: str) -> str | int:
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise InputError(None, f"--frames must be 'all' or a frame number, got {text!r}") from None


def _targets(inputs: list[Path], output: Path) -> list[Path]:
    """The .seg.nrrd path of each input."""
    if len(inputs) == 1 and not output.is_dir():
        if not output.name.endswith(".seg.nrrd"):
            raise OutputError(output, "the output of one input must end with .seg.nrrd")
        return [output]
    if output.exists() and not output.is_dir():
        raise OutputError(output, "several inputs need an output folder")
    names = output_names(inputs)  # before creating anything
    output.mkdir(parents=True, exist_ok=True)
    return [output / name for name in names]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from usvlm.engine import Segmenter
    from usvlm.io import read_image, write_dicom_seg, write_overlay_png, write_seg_nrrd
    from usvlm.io.atomic import AtomicGroup
    from usvlm.model.registry import resolve_model
    from usvlm.postprocess import PostprocessOptions
    from usvlm.report import summarize, to_segments
    from usvlm.text.prompt import validate_prompt

    prompts = [validate_prompt(p) for p in args.prompt]
    frames = _frames(args.frames)
    inputs = expand_inputs(args.inputs)
    if not inputs:
        raise InputError(args.inputs[0], "no image files found")
    targets = _targets(inputs, Path(args.output))
    segmenter = Segmenter(resolve_model(args.model), device=args.device)
    options = PostprocessOptions(threshold=segmenter.model.threshold if args.threshold is None
                                 else args.threshold, keep_largest=not args.all_components,
                                 min_area_mm2=args.min_area)
    failed = 0
    bar = tqdm(list(zip(inputs, targets)), unit="image", disable=args.no_progress or len(inputs) == 1,
               file=sys.stderr)
    for path, target in bar:
        try:
            image = read_image(path, spacing_mm=args.spacing)
            if args.dicom_seg and image.info.dicom_header is None:
                raise InputError(path, "--dicom-seg needs a DICOM input")
            output = segmenter.segment(image, prompts, frames=frames, options=options)
            segments = to_segments(output)
            stem = target.name[: -len(".seg.nrrd")]
            with AtomicGroup() as group:
                write_seg_nrrd(group.path(target), segments, image.geometry)
                if args.dicom_seg:
                    write_dicom_seg(group.path(target.with_name(stem + ".dcm")), segments, image,
                                    deidentify=args.deidentify)
                if args.overlay:
                    write_overlay_png(group.path(target.with_name(stem + ".png")), image, segments)
                if args.json:
                    group.path(target.with_name(stem + ".json")).write_text(
                        json.dumps(summarize(output, segmenter), indent=2) + "\n", encoding="utf-8")
            names = ", ".join(f"{s.name} ({r.score:.2f})" for s, r in zip(segments, output.results))
            print(f"{path}: {target} [{names}]")
        except USVLMError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
    if failed:
        print(f"error: {failed} of {len(inputs)} input(s) failed", file=sys.stderr)
        return 2
    return 0

"""usvlm segment: contour what the prompts name, write Slicer segmentations (and DICOM SEG)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from usvlm.cli._common import (SIDECARS, add_force_arg, add_model_args, count_arg, expand_inputs,
                               for_each, non_negative_arg, output_names, probability_arg, spacing_arg)
from usvlm.errors import InputError, OutputError
from usvlm.io.output_plan import OutputPlan


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("segment", help="contour structures named by text prompts",
                       description="Contour each prompt in each input image with a USVLM model. "
                                   "One input: OUT is the .seg.nrrd file. Several inputs or a "
                                   "folder: OUT is a folder, results are OUT/<stem>.seg.nrrd. "
                                   "Beside each: <stem>.seg.dcm (--dicom-seg), <stem>.overlay.png "
                                   "(--overlay), <stem>.seg.json (--json).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                   help="what to contour (repeat for several segments, in this order)")
    add_model_args(p)
    p.add_argument("--threshold", type=probability_arg,
                   help="probability threshold, 0-1 (default: the model's)")
    p.add_argument("--frames", default="all", type=_frames,
                   help="'all' (default) or one 0-based frame number")
    p.add_argument("--min-area", type=non_negative_arg, default=0.0, metavar="MM2",
                   help="drop components smaller than this (mm^2)")
    p.add_argument("--all-components", action="store_true",
                   help="keep every component (default: the largest)")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    add_force_arg(p)
    p.add_argument("--dicom-seg", action="store_true", help="also write DICOM SEG (DICOM inputs)")
    p.add_argument("--deidentify", action="store_true",
                   help="DICOM SEG de-identified by the DICOM PS3.15 Basic Application Level "
                        "Confidentiality Profile (UIDs kept to reference the source)")
    p.add_argument("--overlay", action="store_true", help="also write a PNG overlay")
    p.add_argument("--json", action="store_true",
                   help="also write measurements and classification as JSON beside each result")
    p.add_argument("--spacing", type=spacing_arg, metavar="X,Y", help="pixel spacing in mm to use")
    p.add_argument("--no-progress", action="store_true")
    return p


def _frames(text: str) -> str | int:
    if text == "all":
        return "all"
    return count_arg(0)(text)


def _targets(inputs: list[Path], output: Path) -> list[Path]:
    """The .seg.nrrd path of each input (nothing is created yet)."""
    if len(inputs) == 1 and not output.is_dir():
        if not output.name.endswith(".seg.nrrd"):
            raise OutputError(output, "the output of one input must end with .seg.nrrd")
        return [output]
    if output.exists() and not output.is_dir():
        raise OutputError(output, "several inputs need an output folder")
    return [output / name for name in output_names(inputs)]


def _outputs(target: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Every file written for one input: "seg" and the sidecars asked for."""
    stem = target.name[: -len(".seg.nrrd")]
    outputs = {"seg": target}
    for kind, suffix in SIDECARS.items():
        if getattr(args, kind):
            outputs[kind] = target.with_name(stem + suffix)
    return outputs


def plan_outputs(inputs: list[Path], output: Path, args: argparse.Namespace) -> list[dict[str, Path]]:
    """Every output of the run, claimed before any work: none is an input, none is claimed twice,
    none exists unless --force."""
    plan = OutputPlan(inputs, force=args.force)
    planned = [_outputs(target, args) for target in _targets(inputs, output)]
    for outputs in planned:
        for path in outputs.values():
            plan.claim(path)
    return planned


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
    frames = args.frames
    inputs = expand_inputs(args.inputs)
    if not inputs:
        raise InputError(args.inputs[0], "no image files found")
    output = Path(args.output)
    planned = plan_outputs(inputs, output, args)
    segmenter = Segmenter(resolve_model(args.model), device=args.device)
    options = PostprocessOptions(threshold=segmenter.model.threshold if args.threshold is None
                                 else args.threshold, keep_largest=not args.all_components,
                                 min_area_mm2=args.min_area)
    if len(planned) > 1 or output.is_dir():
        output.mkdir(parents=True, exist_ok=True)  # only now that every output is known to be free
    outputs_of = dict(zip(inputs, planned))

    def segment_one(path: Path) -> None:
        outputs = outputs_of[path]
        image = read_image(path, spacing_mm=args.spacing)
        if args.dicom_seg and image.info.dicom_header is None:
            raise InputError(path, "--dicom-seg needs a DICOM input")
        result = segmenter.segment(image, prompts, frames=frames, options=options)
        segments = to_segments(result)
        with AtomicGroup() as group:  # all of this input's files, or none
            write_seg_nrrd(group.path(outputs["seg"]), segments, image.geometry)
            if "dicom_seg" in outputs:
                write_dicom_seg(group.path(outputs["dicom_seg"]), segments, image,
                                deidentify=args.deidentify)
            if "overlay" in outputs:
                write_overlay_png(group.path(outputs["overlay"]), image, segments)
            if "json" in outputs:
                group.path(outputs["json"]).write_text(
                    json.dumps(summarize(result, segmenter), indent=2) + "\n", encoding="utf-8")
        names = ", ".join(f"{s.name} ({r.score:.2f})" for s, r in zip(segments, result.results))
        print(f"{path}: {outputs['seg']} [{names}]")

    bar = tqdm(inputs, unit="image", disable=args.no_progress or len(inputs) == 1, file=sys.stderr)
    failed = for_each(bar, segment_one)
    if failed:
        print(f"error: {failed} of {len(inputs)} input(s) failed", file=sys.stderr)
        return 2
    return 0

"""usvlm classify: benign / malignant probabilities of each input (inside a mask when given)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from usvlm.cli._common import add_force_arg, add_model_args, count_arg, expand_inputs, for_each
from usvlm.errors import InputError
from usvlm.io.output_plan import OutputPlan


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("classify", help="benign / malignant probabilities",
                       description="Classify the finding in each input with the model's trained head "
                                   "(pooled inside --mask when given) or zero-shot against class "
                                   "prompt ensembles.")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--mask", help="binary mask image or .seg.nrrd of the finding (one input only)")
    p.add_argument("--zero-shot", action="store_true", help="use the class prompts, not the trained head")
    p.add_argument("--frame", type=count_arg(0), default=0, help="frame of a cine to classify (default 0)")
    p.add_argument("--json", metavar="OUT.json", help="write {input: {class: probability}} here")
    add_force_arg(p)
    add_model_args(p)
    return p


def _read_mask(path: str):  # noqa: ANN202
    from usvlm.io import read_image, read_seg_nrrd

    if path.lower().endswith(".seg.nrrd"):
        segments = read_seg_nrrd(path).segments
        if not segments:
            raise InputError(path, "segmentation holds no segment")
        mask = segments[0].mask
    else:
        mask = read_image(path).grey().pixels > 0
    if not mask.any():
        raise InputError(path, "mask is empty (no pixel of the finding to classify)")
    return mask


def run(args: argparse.Namespace) -> int:
    from usvlm.engine import Segmenter
    from usvlm.io import read_image
    from usvlm.io.atomic import atomic_output
    from usvlm.model.registry import resolve_model

    inputs = expand_inputs(args.inputs)
    if not inputs:
        raise InputError(args.inputs[0], "no image files found")
    if args.mask and len(inputs) != 1:
        raise InputError(args.mask, "--mask goes with exactly one input")
    if args.json:  # checked before any work: never an input, never an existing file without --force
        OutputPlan([*inputs, *([args.mask] if args.mask else [])], force=args.force).claim(args.json)
    mask = _read_mask(args.mask) if args.mask else None
    segmenter = Segmenter(resolve_model(args.model), device=args.device)
    results = {}

    def classify_one(path: Path) -> None:
        probs = segmenter.classify(read_image(path), mask, zero_shot=args.zero_shot, frame=args.frame)
        results[str(path)] = probs
        print(f"{path}: " + ", ".join(f"{k} {v:.3f}" for k, v in probs.items()))

    failed = for_each(inputs, classify_one)
    if args.json and results:  # nothing classified: no (empty) output file
        with atomic_output(Path(args.json)) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 2 if failed else 0

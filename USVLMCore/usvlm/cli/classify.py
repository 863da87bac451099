"""usvlm classify: benign / malignant probabilities of each input (inside a mask when given)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from usvlm.cli._common import add_model_args, expand_inputs
from usvlm.errors import InputError, USVLMError


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("classify", help="benign / malignant probabilities",
                       description="Classify the finding in each input with the model's trained head "
                                   "(pooled inside --mask when given) or zero-shot against class "
                                   "prompt ensembles.")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--mask", help="binary mask image or .seg.nrrd of the finding (one input only)")
    p.add_argument("--zero-shot", action="store_true", help="use the class prompts, not the trained head")
    p.add_argument("--frame", type=int, default=0, help="frame of a cine to classify (default 0)")
    p.add_argument("--json", metavar="OUT.json", help="write {input: {class: probability}} here")
    add_model_args(p)
    return p


def _read_mask(path: str):  # noqa: ANN202
    from usvlm.io import read_image, read_seg_nrrd

    if path.lower().endswith(".seg.nrrd"):
        segments = read_seg_nrrd(path).segments
        if not segments:
            raise InputError(path, "segmentation holds no segment")
        return segments[0].mask
    image = read_image(path).grey()
    return image.pixels > 0


def run(args: argparse.Namespace) -> int:
    from usvlm.engine import Segmenter
    from usvlm.io import read_image
    from usvlm.io.atomic import atomic_output
    from usvlm.model.registry import resolve_model

    inputs = expand_inputs(args.inputs)
    if args.mask and len(inputs) != 1:
        raise InputError(args.mask, "--mask goes with exactly one input")
    mask = _read_mask(args.mask) if args.mask else None
    segmenter = Segmenter(resolve_model(args.model), device=args.device)
    results, failed = {}, 0
    for path in inputs:
        try:
            probs = segmenter.classify(read_image(path), mask, zero_shot=args.zero_shot, frame=args.frame)
        except USVLMError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        results[str(path)] = probs
        print(f"{path}: " + ", ".join(f"{k} {v:.3f}" for k, v in probs.items()))
    if args.json and results:  # nothing classified: no (empty) output file
        with atomic_output(Path(args.json)) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 2 if failed else 0

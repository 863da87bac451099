"""usvlm phantom: write a synthetic labelled B-mode data set (USVLM-Phantom v1)."""

from __future__ import annotations

import argparse

from usvlm.cli._common import count_arg
from usvlm.errors import USVLMError


def _size(text: str) -> int | None:
    if text.lower() == "random":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels or 'random', got {text!r}")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "phantom", help="write a synthetic labelled ultrasound data set",
        description="Generate USVLM-Phantom v1 images (PNG), one mask per lesion, samples.jsonl "
                    "with classes and descriptions, train/val/test splits and dataset.json.")
    parser.add_argument("--out", required=True, help="output folder (must be new or empty)")
    parser.add_argument("--count", type=count_arg(1), required=True, help="number of images")
    parser.add_argument("--seed", type=count_arg(0), default=0, help="series seed (default 0)")
    parser.add_argument("--size", type=_size, default=256,
                        help="square image side in px, or 'random' for 256-640 px sides (default 256)")
    parser.add_argument("--organ", choices=("breast", "thyroid", "neck"), action="append",
                        help="only this organ; repeat for several, taken in turn (default: all)")
    parser.add_argument("--probe", choices=("linear", "convex"), help="only this probe")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier phantom data set in OUT (never any other folder)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        from usvlm_training.phantom import write_dataset
    except ImportError as exc:
        raise USVLMError(f"usvlm phantom needs the training package usvlm_training ({exc}); "
                         "install the repository with `pip install -e .`") from None
    summary = write_dataset(args.out, args.count, args.seed, size=args.size,
                            progress=not args.no_progress, overwrite=args.overwrite,
                            organ=args.organ[0] if args.organ and len(args.organ) == 1 else args.organ,
                            probe=args.probe)
    print(f"wrote {summary['count']} images ({summary['structures']} structures) to "
          f"{summary['out_dir']} in {summary['seconds']:.1f} s: "
          f"{summary['images_per_s']:.1f} images/s")
    return 0

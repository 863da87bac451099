"""usvlm bench: interactive-speed figures of the engine (cached vs naive paths) on this machine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from usvlm.cli._common import add_force_arg, count_arg, device_arg


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="benchmark the engine (random-weight model)",
                       description="Time first prompt, new prompt on a cached image, threshold change, "
                                   "naive full recompute, cine batching and model loading.")
    p.add_argument("--backbone", default="ViT-B-16", help="open_clip model name (default ViT-B-16)")
    p.add_argument("--adapter", default="mona", choices=("none", "mona", "hybrid", "lora"))
    p.add_argument("--model", help="benchmark this model directory or installed model instead")
    p.add_argument("--size", default=(640, 480), type=_size, help="image size WxH (default 640x480)")
    p.add_argument("--frames", type=count_arg(1), default=30, help="cine length (default 30)")
    p.add_argument("--repeats", type=count_arg(1), default=3)
    p.add_argument("--device", default="auto", type=device_arg)
    p.add_argument("--json", metavar="OUT.json", help="also write the figures as JSON")
    add_force_arg(p)
    return p


def _size(text: str) -> tuple[int, int]:
    """WxH -> (columns, rows), each side within the readers' frame limits."""
    from usvlm.io.limits import check_frame_size

    try:
        columns, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 640x480, got {text[:40]!r}") from None
    problem = check_frame_size(rows, columns)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return columns, rows


def run(args: argparse.Namespace) -> int:
    from usvlm.bench import format_table, run_benchmark
    from usvlm.io.atomic import atomic_output
    from usvlm.io.output_plan import OutputPlan
    from usvlm.model.registry import resolve_model

    columns, rows = args.size
    if args.json:
        OutputPlan(force=args.force).claim(args.json)

    model_dir = resolve_model(args.model) if args.model else None
    result = run_benchmark(args.backbone, rows=rows, columns=columns, cine_frames=args.frames,
                           repeats=args.repeats, adapter=args.adapter, device=args.device,
                           model_dir=model_dir,
                           log=lambda m: print(m, file=sys.stderr))
    print(format_table(result))
    if args.json:
        with atomic_output(Path(args.json)) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0

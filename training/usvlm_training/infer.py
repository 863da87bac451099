"""Cohort inference: contour the same prompts in every image of a cohort, alone or under torchrun.

    python -m usvlm_training.infer --model DIR --prompt "thyroid nodule" scans/ -o out/
    torchrun --nproc_per_node 4 -m usvlm_training.infer --model DIR --prompt cyst scans/ -o out/

Every rank takes its shard of the inputs and writes `OUT/<stem>.seg.nrrd` for each (atomically);
rank 0 merges what every rank did into `OUT/summary.json` (per-file status, segments and sizes).
A bad input is recorded there with its error and skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from usvlm.cli._common import (add_force_arg, device_arg, expand_inputs, output_names, probability_arg,
                               spacing_arg)
from usvlm.engine import Segmenter
from usvlm.errors import InputError, OutputError, USVLMError
from usvlm.io.atomic import atomic_output
from usvlm.io.output_plan import OutputPlan

from .distributed import DistInfo, distributed_context, gather_to_rank0, shard_items

SUMMARY_NAME = "summary.json"


def rank_segmenter(model: str | os.PathLike[str], device: str, info: DistInfo, **kwargs: Any) -> Segmenter:
    """The engine for this rank: its own device, and a fair share of the CPU cores (several
    ranks on one machine would otherwise each start one thread per core)."""
    if not info.enabled:
        return Segmenter(model, device=device, **kwargs)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    threads = max(1, (os.cpu_count() or 1) // max(1, local_world))
    return Segmenter(model, device=info.device, threads=threads, **kwargs)


def json_safe(value: Any) -> Any:
    """JSON without NaN / Infinity (not JSON): non-finite numbers become null; numpy scalars, paths
    and tuples become plain values."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: Any) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _segment_one(segmenter: Segmenter, path: Path, target: Path, prompts: Sequence[str],
                 options: Any, spacing: tuple[float, float] | None) -> dict[str, Any]:
    from usvlm.io import read_image, write_seg_nrrd
    from usvlm.report import summarize, to_segments

    image = read_image(path, spacing_mm=spacing)
    output = segmenter.segment(image, list(prompts), options=options)
    write_seg_nrrd(target, to_segments(output), image.geometry)
    summary = summarize(output)
    summary.pop("file", None)  # the record names its input already
    summary.pop("timings_ms", None)  # differs run to run; the summary should not
    return {"status": "ok", "output": target.name, **summary}


def infer(model_dir: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]],
          prompts: Sequence[str], out_dir: str | os.PathLike[str], *, threshold: float | None = None,
          keep_largest: bool = True, spacing_mm: tuple[float, float] | None = None,
          device: str = "auto", progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Segment `prompts` in every image of `inputs` (files, or folders of images) into `out_dir`.

    Every output is checked before any work: never an input, never an existing file unless `force`.

    spacing_mm: (x, y) pixel spacing for images that carry none. Returns the merged summary on
    rank 0 (also written as OUT/summary.json) and this rank's part elsewhere.
    """
    from tqdm import tqdm

    from usvlm.model.registry import resolve_model
    from usvlm.postprocess import PostprocessOptions
    from usvlm.text.prompt import validate_prompt

    prompts = [validate_prompt(p) for p in prompts]
    if not prompts:
        raise InputError(None, "no prompt given: say what to contour")
    files = expand_inputs([str(p) for p in inputs])
    if not files:
        raise InputError(", ".join(map(str, inputs)), "no image files found")
    names = output_names(files)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(out, "exists and is not a folder")
    plan = OutputPlan(files, force=force)
    for target in [*(out / name for name in names), out / SUMMARY_NAME]:
        plan.claim(target)
    model_path = resolve_model(model_dir)
    with distributed_context(device) as info:
        out.mkdir(parents=True, exist_ok=True)  # every rank: on several machines each has its own
        segmenter = rank_segmenter(model_path, device, info)
        options = PostprocessOptions(threshold=segmenter.model.threshold if threshold is None
                                     else threshold, keep_largest=keep_largest)
        mine = shard_items(list(enumerate(zip(files, names))), info)
        records = []
        for index, (path, name) in tqdm(mine, desc=f"rank {info.rank}/{info.world_size}", unit="image",
                                        disable=not progress or not info.is_main, file=sys.stderr):
            try:
                record = _segment_one(segmenter, path, out / name, prompts, options, spacing_mm)
            except USVLMError as exc:
                record = {"status": "error", "error": str(exc)}
            except Exception as exc:  # noqa: BLE001 - one odd file must not stop a cohort run
                record = {"status": "error", "error": f"{path}: {type(exc).__name__}: {exc}"}
            records.append({"index": index, "input": str(path), **record})
        gathered = gather_to_rank0(records, info)
        summary: dict[str, Any] = {"rank": info.rank, "files": records}
        if gathered is not None:
            files_done = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
            for r in files_done:
                del r["index"]
            failed = sum(r["status"] != "ok" for r in files_done)
            summary = {
                "model": segmenter.model.name, "model_path": str(model_path), "prompts": prompts,
                "options": options.to_dict(), "device": str(segmenter.device),
                "world_size": info.world_size,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "inputs": len(files_done), "ok": len(files_done) - failed, "failed": failed,
                "files": files_done,
            }
            write_json(out / SUMMARY_NAME, summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m usvlm_training.infer",
        description="Contour each prompt in every image of a cohort: OUT/<stem>.seg.nrrd per image "
                    "and OUT/summary.json. Runs alone or under torchrun (inputs sharded over ranks).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("--model", help="model directory or installed model name (default: the bundled one)")
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                   help="what to contour (repeat for several segments, in this order)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    p.add_argument("--threshold", type=probability_arg,
                   help="probability threshold, 0-1 (default: the model's)")
    p.add_argument("--all-components", action="store_true",
                   help="keep every component (default: the largest)")
    p.add_argument("--spacing", type=spacing_arg, metavar="X,Y",
                   help="pixel spacing in mm for images without one")
    p.add_argument("--device", default="auto", type=device_arg, help="auto (default), cpu, cuda")
    p.add_argument("--no-progress", action="store_true")
    add_force_arg(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = infer(args.model, args.inputs, args.prompt, args.output, threshold=args.threshold,
                        keep_largest=not args.all_components, spacing_mm=args.spacing,
                        device=args.device, progress=not args.no_progress, force=args.force)
    except USVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "failed" not in summary:  # not rank 0: rank 0 reports for everyone
        return 0
    for record in summary["files"]:
        if record["status"] != "ok":
            print(f"error: {record['error']}", file=sys.stderr)
    print(f"{summary['ok']} of {summary['inputs']} image(s) segmented into {args.output}",
          file=sys.stderr)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the benchmarks and write docs/benchmarks.md (the figures quoted in the README and notes).

    python training/benchmarks/write_benchmarks_md.py [--models usvlm-default ViT-B-16] [--repeats 5]

Each entry of --models is an installed model (name or directory: its real weights) or an
open_clip backbone name (random weights: speed does not depend on what the weights learned).
Run it on an otherwise idle machine: other processes competing for the cores distort CPU times.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from usvlm.bench import ROWS, run_benchmark
from usvlm.errors import USVLMError
from usvlm.io.atomic import atomic_output

REPO = Path(__file__).resolve().parents[2]


def _bench(entry: str, repeats: int) -> dict:
    from usvlm.model.registry import resolve_model

    try:
        model_dir = resolve_model(entry)
    except USVLMError:
        model_dir = None  # not an installed model: an open_clip backbone with random weights
    return run_benchmark(entry, model_dir=model_dir, repeats=repeats,
                         log=lambda m: print(m, file=sys.stderr))


def _phantom_rate() -> str:
    out = subprocess.run([sys.executable, str(REPO / "training" / "benchmarks" / "bench_phantom.py"),
                          "--count", "200"], capture_output=True, text=True, timeout=600)
    return out.stdout.strip()


def _gpu_line() -> str:
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)} (figures above on `{'cuda'}`)."
    return ("GPU: none on this machine. GPU figures (fp32 vs bf16 on a BiomedCLIP-size model) are "
            "produced by the same script on a GPU machine; none was available for this run.")


def render(results: list[dict], phantom: str) -> str:
    names = [r["backbone"] for r in results]
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `python training/benchmarks/write_benchmarks_md.py` on "
        f"{datetime.date.today().isoformat()}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {results[0]['threads']} threads. "
        f"Image {results[0]['image']} (synthetic speckle), cine of {results[0]['cine_frames']} frames, "
        f"medians of {results[0]['repeats']} runs. Times in ms unless stated.",
        "",
        "| figure | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---:" for _ in names) + " |",
    ]
    for key, label in ROWS:
        lines.append(f"| {label.strip()} | " + " | ".join(str(r[key]) for r in results) + " |")
    lines += [
        "| parameters (total / trainable) | " + " | ".join(
            f"{r['parameters']['total'] / 1e6:.1f} M / {r['parameters']['trainable'] / 1e6:.2f} M"
            for r in results) + " |",
        "",
        "- *new prompt on the cached image*: the image encoder's features (and the segmentation "
        "head's prompt-independent reduction) are cached per image content; only the text encoder "
        "(on the prompt's tokens only) and the head's decoder run.",
        "- *naive full recompute*: what a pipeline without caches pays for every new prompt: read, "
        "preprocess, encode image and text, decode, post-process.",
        "- *pipeline overhead*: everything but the two encoders within the first-prompt call "
        "(I/O, field of view and overlay suppression, letterbox, head, inverse transform, "
        "post-processing), as a fraction of the image encoder time.",
        "- On CPU, batching cine frames brings little: the encoder is compute-bound; batching pays "
        "on a GPU.",
        "",
        f"Phantom generator (one core): {phantom}",
        "",
        _gpu_line(),
        "",
        "Raw figures:",
        "",
        "```json",
        json.dumps(results, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["usvlm-default", "ViT-B-16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    results = [_bench(m, args.repeats) for m in args.models]
    text = render(results, _phantom_rate())
    with atomic_output(args.out) as tmp:
        tmp.write_text(text)
    # The engine-process section comes from its own measurement (docs/results/engine_overhead.json).
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_engine_overhead as engine

    engine_json = REPO / "docs" / "results" / "engine_overhead.json"
    if engine_json.exists():
        engine.write_section(engine.render(json.loads(engine_json.read_text())), args.out)
    print(args.out.read_text())


if __name__ == "__main__":
    main()

"""Interactive-speed benchmark of the engine against the naive full-recompute path, in one run.

The model is built with random weights (speed does not depend on what the weights learned), saved
as a model directory and loaded back the way a user's model is. Times are medians over repeats.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usvlm.engine import Segmenter
from usvlm.io import read_image
from usvlm.model.adapters import AdapterConfig
from usvlm.model.vlm import build_model, load_model
from usvlm.postprocess import PostprocessOptions


def _median_ms(fn: Callable[[int], Any], repeats: int) -> float:
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def synthetic_image(rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """A speckled B-mode-like uint8 image with a dark oval finding (content does not affect speed)."""
    rng = np.random.default_rng(seed)
    speckle = np.abs(rng.normal(size=(rows, columns)) + 1j * rng.normal(size=(rows, columns)))
    yy, xx = np.mgrid[0:rows, 0:columns]
    echo = np.where(((xx - columns / 2) / (columns / 6)) ** 2 + ((yy - rows / 2) / (rows / 8)) ** 2 < 1,
                    0.3, 1.0)
    return np.clip(speckle * echo * 70, 0, 255).astype(np.uint8)


def run_benchmark(backbone: str | dict = "ViT-B-16", *, rows: int = 480, columns: int = 640,
                  cine_frames: int = 30, repeats: int = 3, adapter: str = "mona",
                  device: str = "auto", model_dir: str | Path | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Figures for `model_dir` (an installed model) or for a random-weight model on `backbone`."""
    import skimage.io

    with tempfile.TemporaryDirectory(prefix="usvlm-bench-") as tmp:
        root = Path(tmp)
        if model_dir is None:
            log(f"building {backbone} (random weights) with {adapter} adapters")
            model = build_model(backbone, adapter=AdapterConfig(kind=adapter))
            model.save(root / "model", description="benchmark model (random weights)")
            del model
            model_dir = root / "model"
        t = time.perf_counter()
        model = load_model(model_dir)
        model_load_ms = (time.perf_counter() - t) * 1e3
        adapter = model.backbone.adapter_config.kind if model.backbone.adapter_config else "none"
        backbone = model.name if model_dir != root / "model" else backbone
        image_path = root / "image.png"
        skimage.io.imsave(image_path, synthetic_image(rows, columns), check_contrast=False)
        seg = Segmenter(model, device=device)
        log(f"device {seg.device}, {torch.get_num_threads()} threads; warming up")
        seg.segment(read_image(image_path), "warm-up prompt")  # one-off allocations, lazy inits

        overheads = []

        def first_prompt(i: int) -> None:
            seg.clear_cache()
            t = time.perf_counter()
            timings = seg.segment(read_image(image_path), f"first prompt {i}").timings_ms
            total = (time.perf_counter() - t) * 1e3
            # Within the same call: everything but the two encoders is pipeline overhead.
            encoders = timings["encoder_ms"] + timings["text_ms"]
            overheads.append(((total - encoders), (total - encoders) / timings["encoder_ms"]))

        first_prompt_ms = _median_ms(first_prompt, repeats)
        overhead_ms = statistics.median(o[0] for o in overheads)
        overhead_fraction = statistics.median(o[1] for o in overheads)

        # Encoders alone, on the prepared input: the floor any pipeline pays.
        image = read_image(image_path)
        cached = seg.encode_image(image)
        batch = model.normalize(torch.from_numpy(cached.prepared.pixels).to(seg.device))
        with torch.inference_mode():
            encoder_ms = _median_ms(lambda i: model.encode_image(batch), repeats)
            text_ms = _median_ms(lambda i: model.encode_text([f"text encoder prompt {i}"]), repeats)

        def new_prompt(i: int) -> None:
            seg.segment(image, f"new prompt {i}")

        new_prompt_cached_ms = _median_ms(new_prompt, repeats)
        output = seg.segment(image, "threshold prompt")
        threshold_change_ms = _median_ms(
            lambda i: Segmenter.refine(output.results[0], output,
                                       PostprocessOptions(threshold=0.3 + 0.1 * (i % 5))), repeats)

        def full_recompute(i: int) -> None:
            # The naive path: every change re-reads, re-encodes and re-decodes everything.
            seg.clear_cache()
            seg.segment(read_image(image_path), f"recompute prompt {i}")

        full_recompute_ms = _median_ms(full_recompute, repeats)

        cine_image = read_image(image_path)
        from dataclasses import replace
        cine = replace(cine_image, pixels=np.stack([synthetic_image(rows, columns, s)
                                                    for s in range(cine_frames)]), is_cine=True)
        per_frame = {}
        for label, batch_size in (("batched", 16), ("sequential", 1)):
            seg.clear_cache()
            seg.batch_size = batch_size
            t = time.perf_counter()
            seg.segment(cine, "cine prompt")
            per_frame[label] = (time.perf_counter() - t) * 1e3 / cine_frames
        seg.batch_size = 8

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "backbone": backbone if isinstance(backbone, str) else "config",
        "adapter": adapter,
        "device": str(seg.device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "image": f"{columns}x{rows}",
        "repeats": repeats,
        "parameters": model.parameter_report(),
        "model_load_ms": round(model_load_ms, 1),
        "first_prompt_ms": round(first_prompt_ms, 1),
        "image_encoder_ms": round(encoder_ms, 1),
        "text_encoder_ms": round(text_ms, 1),
        "new_prompt_cached_ms": round(new_prompt_cached_ms, 1),
        "threshold_change_ms": round(threshold_change_ms, 2),
        "full_recompute_ms": round(full_recompute_ms, 1),
        "reprompt_speedup": round(full_recompute_ms / new_prompt_cached_ms, 1),
        "overhead_ms": round(overhead_ms, 1),
        "overhead_fraction": round(overhead_fraction, 3),
        "cine_frames": cine_frames,
        "cine_batched_ms_per_frame": round(per_frame["batched"], 1),
        "cine_sequential_ms_per_frame": round(per_frame["sequential"], 1),
        "peak_rss_mb": round(peak_rss_mb, 0),
    }


ROWS = [
    ("model_load_ms", "model load (directory -> ready)"),
    ("first_prompt_ms", "first prompt on a new image (read, prepare, encode, decode, post-process)"),
    ("image_encoder_ms", "  image encoder alone"),
    ("text_encoder_ms", "  text encoder alone"),
    ("overhead_ms", "  pipeline overhead (I/O, preprocessing, head, inverse, post-processing)"),
    ("new_prompt_cached_ms", "new prompt on the cached image"),
    ("threshold_change_ms", "threshold change (post-processing only)"),
    ("full_recompute_ms", "naive full recompute for a new prompt"),
    ("reprompt_speedup", "speed-up of a new prompt: naive / cached (x)"),
    ("overhead_fraction", "pipeline overhead / image encoder time"),
    ("cine_batched_ms_per_frame", "cine, batched, per frame"),
    ("cine_sequential_ms_per_frame", "cine, one frame at a time, per frame"),
    ("peak_rss_mb", "peak resident memory (MB)"),
]


def format_table(result: dict[str, Any]) -> str:
    head = (f"USVLM benchmark: {result['backbone']} + {result['adapter']} adapters, "
            f"{result['image']} image, {result['device']}, {result['threads']} threads, "
            f"median of {result['repeats']}")
    width = max(len(label) for _, label in ROWS)
    lines = [head, "-" * len(head)]
    lines += [f"{label:<{width}}  {result[key]:>10}" for key, label in ROWS]
    return "\n".join(lines)

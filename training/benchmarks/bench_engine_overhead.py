"""What the engine process costs: a new prompt on a cached 640x480 image, in process and through
`usvlm serve` (Slicer-side client -> HTTP on 127.0.0.1 -> engine -> back), over several repeats.

    python training/benchmarks/bench_engine_overhead.py [--model usvlm-default] [--repeats 20]

Both sides do the same work per call: resolve and embed a prompt never seen before, run the
segmentation head on the cached image features, post-process, and summarise the result
(measurements, as the Slicer module shows them; no classification). The overhead of a request is
its round trip minus the engine's own time for the job (`job_ms`, measured inside the engine), so
other load on the machine affects both equally. Also measured: the same call when the pixels are
sent again (a client that does not know the engine holds the image), and a threshold change
(refine from the cached probability maps).

Writes docs/results/engine_overhead.json and the "Engine process overhead" section at the end of
docs/benchmarks.md (rendered from that JSON).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from usvlm.io.atomic import atomic_output
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "USVLMSegment"))

RESULT = REPO / "docs" / "results" / "engine_overhead.json"
BENCHMARKS_MD = REPO / "docs" / "benchmarks.md"
START, END = "<!-- engine-overhead:start -->", "<!-- engine-overhead:end -->"
TARGET_MS = 15.0


def synthetic_frame(rows: int = 480, columns: int = 640) -> np.ndarray:
    """Speckle with a dark round finding: the post-processing has a real component to measure."""
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 40.0, size=(rows, columns)).clip(0, 255)
    yy, xx = np.mgrid[:rows, :columns]
    img[(yy - rows / 2) ** 2 + (xx - columns / 2) ** 2 < (rows / 5) ** 2] *= 0.2
    return img.astype(np.uint8)


def stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "USVLMCore", "USVLMSegment"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        return rev + ("+local-changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class InProcess:
    """The same calls in this process, as the Slicer module made them before the engine."""

    def __init__(self, model_dir: Path, pixels: np.ndarray, threads: int) -> None:
        from usvlm.engine import Segmenter
        from usvlm.io.geometry import Geometry
        from usvlm.io.image import USImage

        self.segmenter = Segmenter(model_dir, device="cpu", threads=threads)
        self.image = USImage(pixels, Geometry.for_pixels(0.1, 0.1))
        self.segmenter.segment(self.image, "warm-up finding")  # the image's features are now cached
        self.worker = concurrent.futures.ThreadPoolExecutor(1)

    def run(self, i: int, out: dict[str, list[float]]) -> None:
        from usvlm.engine import Segmenter
        from usvlm.postprocess import PostprocessOptions
        from usvlm.report import summarize_result

        t0 = time.perf_counter()
        output = self.segmenter.segment(self.image, f"in-process finding {i}")
        out.setdefault("prompt", []).append((time.perf_counter() - t0) * 1e3)

        # The same on a worker thread, as the Slicer module ran the model before the engine.
        t0 = time.perf_counter()
        self.worker.submit(self.segmenter.segment, self.image, f"in-process worker finding {i}").result()
        out.setdefault("prompt_worker", []).append((time.perf_counter() - t0) * 1e3)

        t0 = time.perf_counter()
        Segmenter.refine(output.results[0], output, PostprocessOptions(threshold=0.4 + 0.01 * (i % 10)))
        out.setdefault("refine", []).append((time.perf_counter() - t0) * 1e3)

        t0 = time.perf_counter()
        output = self.segmenter.segment(self.image, f"in-process measured finding {i}")
        [summarize_result(r, output) for r in output.results]
        out.setdefault("prompt_measured", []).append((time.perf_counter() - t0) * 1e3)


def through_engine(engine, pixels: np.ndarray, i: int, out: dict[str, list[float]]) -> None:  # noqa: ANN001
    from USVLMSegmentLib.engine_client import ImageData, PostOptions

    def timed(key: str, call):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        reply = call()
        out.setdefault(key, []).append((time.perf_counter() - t0) * 1e3)
        out.setdefault(key + "_job", []).append(reply.timings_ms["job_ms"])
        return reply

    image = engine.bench_image
    reply = timed("prompt", lambda: engine.segment(image, [f"engine finding {i}"], measure=False))
    timed("refine", lambda: engine.refine(reply.result_id, PostOptions(threshold=0.4 + 0.01 * (i % 10)),
                                          index=0, measure=False))
    timed("prompt_measured", lambda: engine.segment(image, [f"engine measured finding {i}"]))
    engine._ensure()._known_images.clear()  # as a client that re-sends the pixels every time
    fresh = ImageData(pixels, (0.1, 0.1), True)
    timed("prompt_pixels", lambda: engine.segment(fresh, [f"engine finding with pixels {i}"], measure=False))


def measure(model: str | None, repeats: int, threads: int) -> dict:
    import torch

    from usvlm.model.registry import resolve_model

    from USVLMSegmentLib.engine_client import ImageData
    from USVLMSegmentLib.engine_process import LocalEngine

    model_dir = resolve_model(model)
    pixels = synthetic_frame()
    local: dict[str, list[float]] = {}
    engine: dict[str, list[float]] = {}
    # Alternating, so that other load on the machine falls on both alike.
    with LocalEngine(sys.executable, model=str(model_dir), device="cpu",
                     extra_args=["--threads", str(threads)], start_timeout=300) as served:
        served.bench_image = ImageData(pixels, (0.1, 0.1), True)
        served.segment(served.bench_image, ["warm-up finding"])
        here = InProcess(model_dir, pixels, threads)
        for i in range(repeats):
            here.run(i, local)
            through_engine(served, pixels, i, engine)

    def paired(total: str, job: str) -> list[float]:
        return [t - j for t, j in zip(engine[total], engine[job])]

    overhead = stats(paired("prompt", "prompt_job"))
    manifest = json.loads((model_dir / "manifest.json").read_text())
    return {
        "benchmark": "engine process overhead: new prompt on a cached image",
        "git_revision": git_revision(),
        "date": datetime.date.today().isoformat(),
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "model": manifest.get("name", model_dir.name), "device": "cpu", "threads": threads,
        "image": "640x480 grey uint8 (synthetic speckle)", "repeats": repeats,
        "in_process_ms": stats(local["prompt"]),
        "in_process_worker_thread_ms": stats(local["prompt_worker"]),
        "engine_round_trip_ms": stats(engine["prompt"]),
        "engine_job_ms": stats(engine["prompt_job"]),
        "overhead_ms": overhead,
        "overhead_vs_in_process_median_ms": round(statistics.median(engine["prompt"])
                                                  - statistics.median(local["prompt"]), 2),
        "overhead_vs_worker_thread_median_ms": round(statistics.median(engine["prompt"])
                                                     - statistics.median(local["prompt_worker"]), 2) + 0.0,
        "with_pixels_round_trip_ms": stats(engine["prompt_pixels"]),
        "with_pixels_overhead_ms": stats(paired("prompt_pixels", "prompt_pixels_job")),
        "measured_in_process_ms": stats(local["prompt_measured"]),
        "measured_round_trip_ms": stats(engine["prompt_measured"]),
        "measured_overhead_ms": stats(paired("prompt_measured", "prompt_measured_job")),
        "refine_in_process_ms": stats(local["refine"]),
        "refine_round_trip_ms": stats(engine["refine"]),
        "refine_overhead_ms": stats(paired("refine", "refine_job")),
        "samples_ms": {"in_process": [round(v, 2) for v in local["prompt"]],
                       "in_process_worker_thread": [round(v, 2) for v in local["prompt_worker"]],
                       "engine_round_trip": [round(v, 2) for v in engine["prompt"]],
                       "engine_job": [round(v, 2) for v in engine["prompt_job"]]},
        "target_overhead_ms": TARGET_MS,
        "meets_target": overhead["median"] < TARGET_MS,
    }


def render(r: dict) -> str:
    def row(label: str, key: str) -> str:
        s = r[key]
        return f"| {label} | {s['median']} | {s['min']} | {s['max']} |"

    verdict = ("meets" if r["meets_target"] else "misses") + f" the target of under {r['target_overhead_ms']:.0f} ms"
    return "\n".join([
        START,
        "## Engine process overhead",
        "",
        f"Produced by `python training/benchmarks/bench_engine_overhead.py` on {r['date']} "
        f"(revision `{r['git_revision'][:12]}`): {r['machine']['processor']}, "
        f"{r['machine']['cpu_count']} CPU cores, torch {r['machine']['torch']}, {r['threads']} threads, "
        f"model `{r['model']}` on {r['device']}. Image {r['image']}; {r['repeats']} repeats. "
        f"Figures in docs/results/engine_overhead.json.",
        "",
        "A new prompt on a cached image (prompt embedding, segmentation head, post-processing), "
        "in the calling process and through `usvlm serve` (the Slicer-side client on 127.0.0.1; "
        "the image goes by content id once the engine holds it; the mask comes back bit-packed). "
        "The overhead of a request is its round trip minus the engine's own time for the job, "
        "measured inside the engine. Times in ms.",
        "",
        "| call | median | min | max |",
        "| --- | ---: | ---: | ---: |",
        row("new prompt, in process (main thread)", "in_process_ms"),
        row("new prompt, in process (worker thread, as the module ran it)", "in_process_worker_thread_ms"),
        row("new prompt, through the engine (round trip)", "engine_round_trip_ms"),
        row("... of which the engine's work", "engine_job_ms"),
        row("**engine overhead per request**", "overhead_ms"),
        row("new prompt, pixels sent again (640x480, 300 kB): round trip", "with_pixels_round_trip_ms"),
        row("... overhead", "with_pixels_overhead_ms"),
        row("new prompt with measurements, in process", "measured_in_process_ms"),
        row("new prompt with measurements, through the engine", "measured_round_trip_ms"),
        row("... overhead", "measured_overhead_ms"),
        row("threshold change, in process", "refine_in_process_ms"),
        row("threshold change, through the engine", "refine_round_trip_ms"),
        row("... overhead", "refine_overhead_ms"),
        "",
        "Measurements (`usvlm.measure`: contour, axes, echogenicity ring) take about 0.3 s on a "
        "640x480 mask, in process or not; requests can skip them (`measure: false`) while a "
        "slider moves.",
        "",
        f"Median overhead {r['overhead_ms']['median']} ms: {verdict}. Difference of the medians "
        f"(engine round trip - in process on the main thread, measured alternately): "
        f"{r['overhead_vs_in_process_median_ms']} ms; against the worker thread: "
        f"{r['overhead_vs_worker_thread_median_ms']} ms. The engine runs the model on one worker "
        "thread (the HTTP side stays free to take a cancel), as the module's worker thread did; "
        "torch's CPU kernels ran a few ms slower on a worker thread than on the main thread here "
        "(compare the minima). CPU timings on this shared 2-core machine vary with other load "
        "(all samples in the JSON).",
        END,
    ])


def write_section(text: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the section between the markers, or append it at the end."""
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if START in current and END in current:
        before, rest = current.split(START, 1)
        after = rest.split(END, 1)[1]
        updated = before + text + after
    else:
        updated = current.rstrip("\n") + "\n\n" + text + "\n"
    with atomic_output(path) as tmp:
        tmp.write_text(updated, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="installed model name or folder (default: the bundled model)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--render-only", action="store_true",
                        help="only re-render the docs/benchmarks.md section from the JSON")
    args = parser.parse_args()
    if args.render_only:
        result = json.loads(RESULT.read_text())
    else:
        result = measure(args.model, args.repeats, args.threads)
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_section(render(result))
    print(json.dumps({k: result[k] for k in ("in_process_ms", "engine_round_trip_ms", "overhead_ms",
                                             "with_pixels_overhead_ms", "measured_overhead_ms",
                                             "refine_overhead_ms", "meets_target")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

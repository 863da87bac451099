"""The benchmark runs end to end and reports every figure the engine issue names."""

from __future__ import annotations

from usvlm.bench import format_table, run_benchmark
from usvlm.model.backbones import tiny_vit_config

KEYS = {"first_prompt_ms", "new_prompt_cached_ms", "threshold_change_ms", "full_recompute_ms",
        "reprompt_speedup", "overhead_fraction", "cine_batched_ms_per_frame",
        "cine_sequential_ms_per_frame", "model_load_ms", "peak_rss_mb"}


def test_benchmark_reports_all_figures():
    result = run_benchmark(tiny_vit_config(width=64, layers=4, image_size=64), rows=120, columns=160,
                           cine_frames=3, repeats=1, log=lambda m: None)
    assert KEYS <= set(result)
    assert all(result[k] > 0 for k in KEYS)
    assert "speed-up" in format_table(result)

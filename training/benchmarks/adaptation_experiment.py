"""Domain adaptation in the paper's spirit: adapt a restricted-domain stage-1 model to a new domain.

    python training/benchmarks/adaptation_experiment.py [--work work/adaptation] [--md docs/adaptation.md]

1. Phantoms of a source domain (linear probe; breast and neck) and of the excluded target domain
   (convex probe; thyroid), each with its own train / val / test split.
2. Stage 1 (`pretrain`): CLIP-style pretraining of the small ViT on the source domain only.
3. Stage 2 (`finetune`) on the target domain from that stage-1 model, once per adaptation
   variant (heads only, Mona, hybrid, LoRA) and share of the target training data (5, 20, 100 %),
   each run the same number of optimiser steps, so a small share is seen more often, not less.
4. `evaluate` on the target test split; the table (Dice, trainable parameters) goes to --md and
   the numbers to WORK/results.json.

Every step is skipped when its output exists: an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from usvlm_training.evaluate import evaluate
from usvlm_training.phantom import write_dataset
from usvlm_training.train.common import OptimConfig
from usvlm_training.train.finetune import FinetuneConfig, finetune
from usvlm_training.train.pretrain import PretrainConfig, pretrain

SOURCE = {"organ": ["breast", "neck"], "probe": "linear"}
TARGET = {"organ": "thyroid", "probe": "convex"}
ANALYSIS = "## What it shows"
ADAPTERS = {"none": "heads only", "mona": "Mona", "hybrid": "hybrid (noise + frequency)", "lora": "LoRA"}


def _phantoms(out: Path, count: int, seed: int, domain: dict[str, Any]) -> None:
    if not (out / "dataset.json").is_file():
        write_dataset(out, count, seed, size=256, progress=False, overwrite=True, **domain)


def _stage1(work: Path, args: argparse.Namespace) -> Path:
    out = work / "stage1"
    if not (out / "model" / "manifest.json").is_file():
        pretrain(PretrainConfig(data=str(work / "source"), out=str(out), name="usvlm-source-stage1",
                                overwrite=True, optim=OptimConfig(epochs=args.pre_epochs, batch_size=32, lr=5e-4,
                                                                  patience=args.pre_epochs, seed=args.seed)))
    return out / "model"


def _adapt(work: Path, stage1: Path, adapter: str, ratio: float, args: argparse.Namespace) -> dict[str, Any]:
    run = work / "runs" / f"{adapter}_{round(ratio * 100)}"
    done = run / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    start = time.perf_counter()
    summary = finetune(FinetuneConfig(
        data=str(work / "target"), out=str(run), model=str(stage1), adapter=adapter,
        bottleneck=args.bottleneck, lora_rank=args.lora_rank, seg_stride=4,
        few_shot_ratio=None if ratio >= 1 else ratio, name=f"adapt-{adapter}-{round(ratio * 100)}",
        overwrite=True, optim=OptimConfig(epochs=10_000, max_steps=args.steps, batch_size=args.batch_size,
                                          lr=args.lr, patience=10_000, warmup_epochs=0.0,
                                          seed=args.seed)))
    train_seconds = time.perf_counter() - start
    metrics = evaluate(run / "model", work / "target", split="test", out_dir=run / "evaluation",
                       progress=False, save_predictions=False, gallery=2, paraphrases="none")
    seg = metrics["segmentation"]["overall"]
    result = {"adapter": adapter, "ratio": ratio, "train_images": _train_images(run),
              "dice": seg["dice"]["mean"], "dice_std": seg["dice"]["std"], "pairs": seg["n"],
              "hd95": seg["hd95"]["mean"], "val_dice": summary["val_dice"],
              "trainable": summary["parameters"]["adapters"] + summary["parameters"]["heads"],
              "adapter_parameters": summary["parameters"]["adapters"],
              "head_parameters": summary["parameters"]["heads"], "steps": args.steps,
              "train_seconds": round(train_seconds, 1)}
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _train_images(run: Path) -> int:
    manifest = json.loads((run / "model" / "manifest.json").read_text())
    return int(manifest["provenance"]["training"]["data"]["train_used"])


def write_markdown(path: Path, results: list[dict[str, Any]], args: argparse.Namespace,
                   sizes: dict[str, dict[str, int]]) -> None:
    ratios = sorted({r["ratio"] for r in results})
    by = {(r["adapter"], r["ratio"]): r for r in results}
    lines = ["# Adaptation to an unseen domain", "",
             "Reproduce: `python training/benchmarks/adaptation_experiment.py` (phantoms, stage 1, "
             f"{len(results)} adaptation runs and their evaluation; about "
             f"{round(sum(r['train_seconds'] for r in results) / 60)} min of training here, 2 CPU cores).", "",
             f"- Source domain (stage 1 only): linear probe, breast and neck; {sizes['source']['train']} "
             f"training images, CLIP-style pretraining of the small ViT with the frozen MiniLM text "
             f"encoder, {args.pre_epochs} epochs.",
             f"- Target domain (never seen in stage 1): convex probe, thyroid; {sizes['target']['train']} "
             f"training images, test split of {sizes['target']['test']} images.",
             f"- Adaptation: stage 2 from the stage-1 model, backbone frozen, fresh heads; the same "
             f"{args.steps} steps of {args.batch_size} images (3 prompts each: the image's classes, then "
             f"absent classes as negatives) for every run, lr {args.lr}, cosine; best epoch by "
             f"validation Dice. Mona and hybrid bottleneck {args.bottleneck}, LoRA rank {args.lora_rank}.",
             "- Dice: mean over the target test (image, class) pairs, prompted with the class name.", "",
             "| variant | trainable parameters | " + " | ".join(
                 f"Dice, {round(r * 100)} % ({by[next(iter(ADAPTERS)), r]['train_images']} images)"
                 if (next(iter(ADAPTERS)), r) in by else f"Dice, {round(r * 100)} %" for r in ratios) + " |",
             "|---|---|" + "---|" * len(ratios)]
    for adapter, name in ADAPTERS.items():
        row = [by.get((adapter, r)) for r in ratios]
        if not any(row):
            continue
        first = next(x for x in row if x)
        params = f"{first['trainable']:,} ({first['adapter_parameters']:,} adapter + {first['head_parameters']:,} heads)"
        cells = [f"{x['dice']:.3f} ± {x['dice_std']:.3f}" if x else "" for x in row]
        lines.append(f"| {name} | {params} | " + " | ".join(cells) + " |")
    lines += ["", "Per run (HD95 in mm over pairs with both masks non-empty; training wall time):", "",
              "| variant | share | images | Dice | HD95 | validation Dice | training s |",
              "|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (list(ADAPTERS).index(r["adapter"]), r["ratio"])):
        lines.append(f"| {ADAPTERS[r['adapter']]} | {round(r['ratio'] * 100)} % | {r['train_images']} | "
                     f"{r['dice']:.3f} | {r['hd95']:.2f} | {r['val_dice']:.3f} | {r['train_seconds']:.0f} |")
    # The reading of the numbers is written by hand below ANALYSIS and kept across reruns.
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    analysis = old[old.index(ANALYSIS):] if ANALYSIS in old else f"{ANALYSIS}\n\n(to be written)\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n\n" + analysis, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="work/adaptation")
    p.add_argument("--md", default="docs/adaptation.md")
    p.add_argument("--source-count", type=int, default=800)
    p.add_argument("--target-count", type=int, default=500)
    p.add_argument("--pre-epochs", type=int, default=8)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--bottleneck", type=int, default=32)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.2, 1.0])
    p.add_argument("--adapters", nargs="+", default=list(ADAPTERS), choices=list(ADAPTERS))
    p.add_argument("--seed", type=int, default=2026)
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    _phantoms(work / "source", args.source_count, 7, SOURCE)
    _phantoms(work / "target", args.target_count, 8, TARGET)
    stage1 = _stage1(work, args)
    results = []
    for ratio in args.ratios:
        for adapter in args.adapters:
            results.append(_adapt(work, stage1, adapter, ratio, args))
            print(json.dumps(results[-1]), flush=True)
    sizes = {name: {s: len((work / name / f"{s}.txt").read_text().split()) for s in ("train", "val", "test")}
             for name in ("source", "target")}
    (work / "results.json").write_text(json.dumps({"results": results, "sizes": sizes,
                                                   "settings": vars(args)}, indent=2) + "\n")
    write_markdown(Path(args.md), results, args, sizes)
    print(f"table written to {args.md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

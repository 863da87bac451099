"""Evaluate a model on a data set split: segmentation and classification metrics, and a report.

    python -m usvlm_training.evaluate --model DIR --data DIR [--split test] -o OUT_DIR
    torchrun --nproc_per_node 4 -m usvlm_training.evaluate --model DIR --data DIR -o OUT_DIR

Each (image, class) pair is segmented with the class's canonical prompt (the bare class name);
the target is the union of the masks of that class in the image. Dice, IoU, HD95 and ASD (mm, from
the data set's pixel spacing) come from `usvlm_training.metrics`; empty predictions and empty
ground truths are counted, never dropped. Classification: the trained head pooled inside each
structure's ground-truth mask, and zero-shot on the whole image against the image's label.

Under torchrun every rank takes its shard of the samples and writes the predicted segmentations
of its samples (`OUT/predictions/<id>.seg.nrrd`, so a saved prediction can be re-scored); rank 0
gathers the rows and alone writes `metrics.json`, `per_image.csv`, `roc.png`, `gallery/` (best and
worst cases by Dice) and `report.md`, all atomically.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usvlm.cli._common import count_arg, device_arg, probability_arg
from usvlm.engine import Segmenter
from usvlm.errors import InputError, OutputError, USVLMError
from usvlm.io import Segment, write_overlay_png, write_seg_nrrd
from usvlm.io.atomic import AtomicGroup

from .data import PromptSampler, Sample, SampleSet, open_dataset
from .data.prompts import target_indices
from .distributed import DistInfo, distributed_context, gather_to_rank0, shard_items
from .infer import json_safe, rank_segmenter
from .metrics import aggregate, classification_scores, score
from .prompt_checks import (paraphrase_rows, paraphrase_source, selectivity_rows, summarize_paraphrases,
                            summarize_selectivity)

GT_COLOR = (0.0, 1.0, 0.0)  # green: ground truth
PRED_COLOR = (1.0, 0.0, 1.0)  # magenta: prediction
POSITIVE = "malignant"
CSV_COLUMNS = ("id", "class", "prompt", "dice", "iou", "hd95", "asd", "distance_unit", "empty_pred",
               "empty_gt", "pred_pixels", "gt_pixels", "structures", "score", "spacing_row_mm",
               "spacing_col_mm", "organ", "probe")


def safe_name(text: str) -> str:
    """A file-name-safe form of a sample id or class name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def sample_spacing(sample: Sample, image: Any) -> tuple[tuple[float, float], bool]:
    """(row, column) spacing in mm and whether it is calibrated: the data set's, else the image
    file's; uncalibrated images are measured in pixels (and flagged)."""
    if sample.spacing_mm is not None:
        return (float(sample.spacing_mm[0]), float(sample.spacing_mm[1])), True
    geometry = image.geometry
    if geometry.calibrated:
        return (float(geometry.spacing_y), float(geometry.spacing_x)), True
    return (1.0, 1.0), False


# -- per rank: segment, score, classify -----------------------------------------------------------

def _evaluate_sample(segmenter: Segmenter, sample: Sample, options: Any, predictions: Path | None,
                     head: bool, paraphrases: dict[str, list[str]]
                     ) -> tuple[list[dict], list[dict], dict | None, dict[str, np.ndarray], dict[str, list]]:
    """Rows of one image: (segmentation rows, trained-head rows per structure, zero-shot row,
    predicted mask per class, prompt-check rows {"selectivity": [...], "paraphrase": [...]})."""
    image = sample.load_image()
    masks = sample.load_masks()
    spacing, calibrated = sample_spacing(sample, image)
    # one canonical prompt per distinct class; the first structure of the class stands for it
    prompts = [PromptSampler.canonical(next(s for s in sample.structures if s.class_name == c))
               for c in sample.classes]
    output = segmenter.segment(image, [p.text for p in prompts], options=options)
    rows, predicted, segments, targets = [], {}, [], {}
    for prompt, result in zip(prompts, output.results):
        members = target_indices(prompt, sample.structures)
        gt = np.logical_or.reduce([masks[i] for i in members])
        targets[prompt.class_name] = gt
        s = score(result.mask, gt, spacing)
        rows.append({"id": sample.id, "class": prompt.class_name, "prompt": prompt.text, **s.to_dict(),
                     "distance_unit": "mm" if calibrated else "px",
                     "pred_pixels": int(result.mask.sum()), "gt_pixels": int(gt.sum()),
                     "structures": len(members), "score": result.score,
                     "spacing_row_mm": spacing[0] if calibrated else None,
                     "spacing_col_mm": spacing[1] if calibrated else None,
                     "organ": sample.organ, "probe": sample.probe})
        predicted[prompt.class_name] = result.mask
        segments.append(Segment(prompt.class_name, result.mask, result.prompt.color,
                                result.prompt.terminology))
    if predictions is not None:
        write_seg_nrrd(predictions / f"{safe_name(sample.id)}.seg.nrrd", segments, image.geometry)
    checks = {"selectivity": selectivity_rows(sample.id, targets, predicted), "paraphrase": []}
    for row in rows:  # the image's features are cached: each paraphrase costs one decode
        texts = paraphrases.get(row["class"], [])
        if texts:
            results = segmenter.segment(image, texts, options=options).results
            checks["paraphrase"] += paraphrase_rows(sample.id, row["class"], row["dice"],
                                                    [(t, r.mask) for t, r in zip(texts, results)],
                                                    targets[row["class"]])
    head_rows = []
    if head:
        for i, (structure, mask) in enumerate(zip(sample.structures, masks)):
            probs = segmenter.classify(image, mask)
            head_rows.append({"id": sample.id, "structure": i, "class": structure.class_name,
                              "label": structure.label, "p_malignant": probs[POSITIVE],
                              "mask_empty": not mask.any()})
    zero_shot = None
    if POSITIVE in segmenter.model.class_names:
        probs = segmenter.classify(image, zero_shot=True)
        zero_shot = {"id": sample.id, "label": sample.label, "p_malignant": probs[POSITIVE]}
    return rows, head_rows, zero_shot, predicted, checks


def _gallery_keys(rows: Sequence[dict], k: int) -> tuple[list[tuple], list[tuple]]:
    """(best, worst) k (id, class) pairs by Dice; ties broken by id and class so the choice is
    the same however the rows are sharded (the global k are among the union of each rank's k)."""
    ordered = sorted(rows, key=lambda r: (r["dice"], r["id"], r["class"]))
    worst = [(r["id"], r["class"]) for r in ordered[:k]]
    best = [(r["id"], r["class"]) for r in sorted(rows, key=lambda r: (-r["dice"], r["id"], r["class"]))[:k]]
    return best, worst


def _run_shard(segmenter: Segmenter, samples: Sequence[Sample], options: Any, out: Path,
               info: DistInfo, gallery: int, progress: bool, save_predictions: bool,
               paraphrases: dict[str, list[str]]) -> dict[str, Any]:
    from tqdm import tqdm

    predictions = out / "predictions" if save_predictions else None
    if predictions is not None:
        predictions.mkdir(parents=True, exist_ok=True)
    head = segmenter.model.cls_head is not None and POSITIVE in segmenter.model.class_names
    part: dict[str, Any] = {"rows": [], "head": [], "zero_shot": [], "failures": [], "masks": {},
                            "selectivity": [], "paraphrase": []}
    masks: dict[tuple[str, str], np.ndarray] = {}
    for sample in tqdm(samples, desc=f"evaluate (rank {info.rank}/{info.world_size})", unit="image",
                       disable=not progress or not info.is_main, file=sys.stderr):
        try:
            rows, head_rows, zero_shot, predicted, checks = _evaluate_sample(
                segmenter, sample, options, predictions, head, paraphrases)
        except USVLMError as exc:  # an unreadable image: recorded, the others go on
            part["failures"].append({"id": sample.id, "error": str(exc)})
            continue
        except Exception as exc:  # noqa: BLE001 - a rank that died here would hang the others
            part["failures"].append({"id": sample.id, "error": f"{type(exc).__name__}: {exc}"})
            continue
        part["rows"] += rows
        part["head"] += head_rows
        part["zero_shot"] += [zero_shot] if zero_shot else []
        part["selectivity"] += checks["selectivity"]
        part["paraphrase"] += checks["paraphrase"]
        masks.update({(sample.id, c): m for c, m in predicted.items()})
        if len(masks) > 2 * gallery + 32:  # keep only possible gallery cases: a cohort's masks are big
            keep = {key for keys in _gallery_keys(part["rows"], gallery) for key in keys}
            masks = {key: m for key, m in masks.items() if key in keep}
    # Only the masks that may make the gallery travel to rank 0 (packed bits, not every mask).
    best, worst = _gallery_keys(part["rows"], gallery)
    part["masks"] = {key: (masks[key].shape, np.packbits(masks[key])) for key in {*best, *worst}}
    return part


# -- rank 0: merge and summarise ------------------------------------------------------------------

def _classification(rows: Sequence[dict], unit: str, unavailable: str | None) -> dict[str, Any]:
    """Scores of one classifier; the reason instead when they cannot be computed."""
    if unavailable:
        return {"available": False, "reason": unavailable, "unit": unit}
    labels = [r["label"] for r in rows]
    try:
        scores = classification_scores([r["p_malignant"] for r in rows], labels)
    except ValueError as exc:
        return {"available": False, "reason": str(exc), "unit": unit, "n_unknown": labels.count(-1)}
    return {"available": True, "unit": unit, **scores.to_dict()}


def _distance_unit(rows: Sequence[dict]) -> str:
    units = {r["distance_unit"] for r in rows}
    return units.pop() if len(units) == 1 else ("mixed" if units else "mm")


def summarize(rows: Sequence[dict]) -> dict[str, Any]:
    """Overall and per-class mean +/- std with empty counts (`usvlm_training.metrics.aggregate`)."""
    from .metrics import SegmentationScores

    fields = ("dice", "iou", "hd95", "asd", "empty_pred", "empty_gt")

    def agg(subset: Sequence[dict]) -> dict[str, Any]:
        scores = [SegmentationScores(**{f: r[f] for f in fields}) for r in subset]
        return {**aggregate(scores).to_dict(), "images": len({r["id"] for r in subset}),
                "distance_unit": _distance_unit(subset)}

    classes = sorted({r["class"] for r in rows})
    return {"overall": agg(rows), "per_class": {c: agg([r for r in rows if r["class"] == c])
                                                for c in classes}}


def _manifest(model_dir: Path) -> dict[str, Any]:
    from usvlm.model.manifest import MANIFEST_NAME, read_manifest

    return read_manifest(model_dir / MANIFEST_NAME if model_dir.is_dir() else model_dir)


def model_summary(model_dir: Path, model: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest fields a reader of the report needs (what model, trained on what)."""
    provenance = manifest.get("provenance", {})
    return {"path": str(model_dir), "name": manifest.get("name"),
            "description": manifest.get("description", ""),
            "backbone": manifest["backbone"].get("id"), "adapter": manifest["adapter"].get("type"),
            "heads": sorted(manifest.get("heads", {})), "class_names": manifest.get("class_names"),
            "threshold": manifest.get("thresholds", {}).get("segmentation"),
            "input_size": manifest.get("preprocessing", {}).get("input_size"),
            "created": provenance.get("created"),
            "provenance": {k: v for k, v in provenance.items() if k not in ("created", "software")},
            "trainable_parameters": model.parameter_report() if hasattr(model, "parameter_report") else None}


def software() -> dict[str, str]:
    import scipy
    import skimage
    import sklearn

    from usvlm.model.vlm import software_versions

    return {**software_versions(), "numpy": np.__version__, "scipy": scipy.__version__,
            "scikit-image": skimage.__version__, "scikit-learn": sklearn.__version__}


# -- rank 0: files --------------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.1f}"
    return str(value)


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """One line per (image, class); undefined values (HD95 / ASD with an empty mask) are blank."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None or (isinstance(v, float) and not math.isfinite(v))
                             else repr(v) if isinstance(v, float) else v for k, v in row.items()})


def plot_roc(path: Path, curves: dict[str, dict[str, Any]]) -> None:
    """ROC curves of the classifiers that have one, with the chance diagonal."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    drawn = 0
    for name, result in curves.items():
        roc = result.get("roc") or {}
        if result.get("available") and roc.get("fpr"):
            ax.plot(roc["fpr"], roc["tpr"], linewidth=2, marker=".",
                    label=f"{name.replace('_', ' ')} (AUC {result['auc']:.3f}, n={result['n']})")
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.3, "no ROC curve: the labels hold one class only\nor no classifier applies",
                ha="center", va="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (sensitivity)", title="ROC: malignant vs benign")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _write_gallery(out: Path, data: SampleSet, rows: Sequence[dict], masks: dict, k: int
                   ) -> dict[str, list[dict]]:
    """Overlays (ground truth green, prediction magenta) of the k best and k worst pairs, each
    written atomically on its own (write_overlay_png picks the format from the file name, which an
    AtomicGroup temporary name would hide)."""
    folder = out / "gallery"
    folder.mkdir(exist_ok=True)
    by_key = {(r["id"], r["class"]): r for r in rows}
    best, worst = _gallery_keys(rows, k)
    shown: dict[str, list[dict]] = {"best": [], "worst": []}
    for kind, keys in (("best", best), ("worst", worst)):
        for rank, key in enumerate(keys, start=1):
            sample, row = data[key[0]], by_key[key]
            shape, bits = masks[key]
            pred = np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)
            gt_masks = sample.load_masks()
            prompt = PromptSampler.canonical(next(s for s in sample.structures if s.class_name == key[1]))
            gt = np.logical_or.reduce([gt_masks[i] for i in target_indices(prompt, sample.structures)])
            name = f"gallery/{kind}_{rank:02d}_{safe_name(key[0])}_{safe_name(key[1])}.png"
            overlay = [Segment("ground truth", gt, GT_COLOR), Segment("prediction", pred, PRED_COLOR)]
            write_overlay_png(out / name, sample.load_image(), overlay, thickness=2)
            shown[kind].append({"file": name, "id": key[0], "class": key[1], "dice": row["dice"]})
    return shown


def _table(header: Sequence[str], lines: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(v) if not isinstance(v, str) else v for v in line) + " |"
            for line in lines]
    return out


def _stat(stat: dict[str, Any]) -> str:
    if not stat["n"]:
        return "n/a (n=0)"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def _prompt_check_sections(metrics: dict[str, Any]) -> list[str]:
    sel, para = metrics["selectivity"], metrics["paraphrase"]
    t = sel["targets"]
    lines = ["## Prompt selectivity", "",
             "Images holding structures of two or more classes; each class prompted by its name. "
             f"*Covered*: share of the other classes' structure pixels inside the prediction "
             f"(targets: Dice >= {t['dice']:.2f}, covered <= {t['other_covered']:.2f}).", ""]
    if sel["overall"]["n"]:
        table = [[name, g["n"], _stat(g["dice"]), _stat(g["other_covered"]),
                  f"{g['other_covered']['max']:.4f}", g["pairs_over_limit"]]
                 for name, g in [*sel["per_class"].items(), ("**all**", sel["overall"])]]
        lines += _table(["class", "pairs", "Dice with the target", "others covered", "max covered",
                         f"pairs > {t['other_covered']:.2f}"], table)
    else:
        lines.append("No image of this split holds two classes.")
    lines += ["", "## Paraphrase robustness", "",
              f"Paraphrases: {para['source']}. Each (image, class) pair prompted with every "
              f"paraphrase of its class; Dice against the canonical prompt's on the same pairs "
              f"(tolerance {para['tolerance']:.2f}).", ""]
    if para["overall"]["n"]:
        table = [[name, g["pairs"], g["n"], f"{g['canonical_dice']:.4f}", f"{g['paraphrase_dice']:.4f}",
                  f"{g['gap']:+.4f}"]
                 for name, g in [*para["per_class"].items(), ("**all**", para["overall"])]]
        lines += _table(["class", "pairs", "prompts x pairs", "canonical Dice", "paraphrase Dice", "gap"],
                        table)
        lines += ["", "| paraphrase | pairs | Dice | gap |", "|---|---|---|---|"]
        lines += [f"| {text} | {g['pairs']} | {g['paraphrase_dice']:.4f} | {g['gap']:+.4f} |"
                  for text, g in para["per_paraphrase"].items()]
    else:
        lines.append("Not run (no paraphrases for the classes of this data set).")
    return lines + [""]


def render_report(metrics: dict[str, Any]) -> str:
    """The markdown report: settings, segmentation table, classification table, ROC, gallery."""
    s = metrics["settings"]
    seg = metrics["segmentation"]
    unit = seg["overall"]["distance_unit"]
    lines = [f"# USVLM evaluation: {s['model']['name']} on {s['data']['name']} / {s['split']}", "",
             f"{s['images']} image(s), {seg['overall']['n']} (image, class) pair(s), "
             f"{len(metrics['failures'])} failed; {s['date']}.", ""]
    lines += [f"## Segmentation: {s['data']['name']} / {s['split']}", "",
              f"Canonical prompt (the class name) per class in each image; target: the union of that "
              f"class's masks. Mean ± std; HD95 and ASD in {unit} over the pairs where both masks are "
              f"non-empty (the others are counted in *excluded*).", ""]
    table = []
    for name, g in [*seg["per_class"].items(), ("**all**", seg["overall"])]:
        table.append([name, g["n"], _stat(g["dice"]), _stat(g["iou"]), _stat(g["hd95"]),
                      _stat(g["asd"]), g["empty_pred"], g["empty_gt"], g["distance_excluded"]])
    lines += _table(["class", "pairs", "Dice", "IoU", f"HD95 ({unit})", f"ASD ({unit})",
                     "empty pred", "empty GT", "excluded"], table)
    lines += ["", "## Classification (benign / malignant)", ""]
    table = []
    for key, c in metrics["classification"].items():
        name = key.replace("_", " ")
        if c.get("available"):
            table.append([name, c["unit"], c["n"], c["n_unknown"], c["accuracy"], c["precision"],
                          c["recall"], c["f1"], c["auc"]])
        else:
            table.append([name, c["unit"], "", c.get("n_unknown", ""), f"n/a: {c['reason']}",
                          "", "", "", ""])
    lines += _table(["classifier", "unit", "n", "unknown label", "accuracy", "precision", "recall",
                     "F1", "AUC"], table)
    lines += ["", "Threshold 0.5 on the malignant probability; AUC blank when the labels hold one "
                  "class only.", "", "![ROC curve](roc.png)", ""]
    lines += _prompt_check_sections(metrics)
    lines += ["## Gallery", "", "Ground truth in green, prediction in magenta.", ""]
    for kind in ("best", "worst"):
        lines.append(f"**{kind.capitalize()} by Dice**")
        lines.append("")
        for g in metrics["gallery"][kind]:
            lines.append(f"- {g['id']} / {g['class']}: Dice {g['dice']:.4f}  ")
            lines.append(f"  ![{kind} {g['id']} {g['class']}]({g['file']})")
        lines.append("")
    if metrics["failures"]:
        lines += ["## Failed images", ""] + [f"- {f['id']}: {f['error']}" for f in metrics["failures"]] + [""]
    m, d = s["model"], s["data"]
    lines += ["## Settings", ""]
    lines += _table(["setting", "value"], [
        ["model", f"{m['name']} ({m['path']})"],
        ["model manifest", f"backbone {m['backbone']}, adapter {m['adapter']}, heads "
                           f"{', '.join(m['heads'])}, classes {', '.join(m['class_names'] or [])}, "
                           f"input {m['input_size']} px, created {m['created']}"],
        ["model description", m["description"] or ""],
        ["data set", f"{d['path']} ({d['layout']}, {d['samples']} samples, splits "
                     f"{', '.join(f'{k} {v}' for k, v in d['splits'].items())}, {d['skipped']} skipped)"],
        ["split", s["split"]],
        ["images evaluated", str(s["images"])],
        ["threshold", f"{s['threshold']} ({s['threshold_source']})"],
        ["keep largest component", str(s["keep_largest"])],
        ["device", s["device"]],
        ["world size", str(s["world_size"])],
        ["software", ", ".join(f"{k} {v}" for k, v in s["software"].items())],
        ["date", s["date"]],
    ])
    return "\n".join(lines) + "\n"


def _write_outputs(out: Path, data: SampleSet, metrics: dict[str, Any], rows: Sequence[dict],
                   masks: dict, gallery: int) -> None:
    """The gallery, then the report files, which appear together or (on error) not at all."""
    import json

    metrics["gallery"] = _write_gallery(out, data, rows, masks, gallery)
    with AtomicGroup() as group:
        plot_roc(group.path(out / "roc.png"), metrics["classification"])
        write_csv(group.path(out / "per_image.csv"), rows)
        group.path(out / "metrics.json").write_text(
            json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        group.path(out / "report.md").write_text(render_report(metrics), encoding="utf-8")
    kept = {g["file"] for kind in metrics["gallery"].values() for g in kind}
    for old in (out / "gallery").glob("*.png"):  # a previous run's cases would mislead
        if f"gallery/{old.name}" not in kept and re.match(r"(best|worst)_\d+_", old.name):
            old.unlink()


# -- entry points ---------------------------------------------------------------------------------

def evaluate(model_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str], *, split: str = "test",
             out_dir: str | os.PathLike[str], threshold: float | None = None, device: str = "auto",
             limit: int | None = None, progress: bool = True, keep_largest: bool = False,
             gallery: int = 4, save_predictions: bool = True, on_error: str = "raise",
             paraphrases: str | None = "auto") -> dict[str, Any]:
    """Evaluate a model on a split of a data set; write the report files into `out_dir`.

    threshold: the segmentation threshold (default: the model's); keep_largest: keep only the
    largest component of each prediction (off by default: a class target may hold several
    structures); gallery: cases of each kind (best, worst) drawn; limit: the first N samples of the
    split only; on_error: "raise" or "skip" broken samples when the data set is opened;
    paraphrases: "auto" (the held-out prompts recorded in the model's manifest), "none", or a JSON
    file {"class": ["paraphrase", ...]} for the paraphrase check.
    Returns the metrics (as in metrics.json) on rank 0, an empty dict on other ranks.
    """
    from usvlm.model.registry import resolve_model
    from usvlm.postprocess import PostprocessOptions

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(out, "exists and is not a folder")
    if limit is not None and limit < 1:
        raise InputError(None, f"limit must be a positive number of images, got {limit}")
    model_path = resolve_model(model_dir)
    data = open_dataset(data_dir, on_error=on_error)  # type: ignore[arg-type]
    samples = data.split(split)[:limit]
    manifest = _manifest(model_path)
    para_texts, para_source = paraphrase_source(paraphrases, manifest)
    para_texts = {c: t for c, t in para_texts.items() if c in data.classes}
    with distributed_context(device) as info:
        out.mkdir(parents=True, exist_ok=True)
        segmenter = rank_segmenter(model_path, device, info)
        options = PostprocessOptions(threshold=segmenter.model.threshold if threshold is None
                                     else threshold, keep_largest=keep_largest)
        # Every class of the data set embedded in one fixed batch: all ranks (and a run alone)
        # then use bit-identical text embeddings, whatever images their shard holds.
        segmenter.encode_prompts(list(data.classes))
        part = _run_shard(segmenter, shard_items(samples, info), options, out, info, gallery,
                          progress, save_predictions, para_texts)
        parts = gather_to_rank0(part, info)
        if parts is None:
            return {}
        rows = sorted((r for p in parts for r in p["rows"]), key=lambda r: (r["id"], r["class"]))
        head_rows = sorted((r for p in parts for r in p["head"]), key=lambda r: (r["id"], r["structure"]))
        zero_rows = sorted((r for p in parts for r in p["zero_shot"]), key=lambda r: r["id"])
        failures = sorted((f for p in parts for f in p["failures"]), key=lambda f: f["id"])
        masks = {k: v for p in parts for k, v in p["masks"].items()}
        selectivity = sorted((r for p in parts for r in p["selectivity"]), key=lambda r: (r["id"], r["class"]))
        paraphrase = sorted((r for p in parts for r in p["paraphrase"]),
                            key=lambda r: (r["id"], r["class"], r["paraphrase"]))
        model = segmenter.model
        no_classes = None if POSITIVE in model.class_names else \
            f"the model's classes ({', '.join(model.class_names)}) have no '{POSITIVE}'"
        summary = data.summary()
        metrics: dict[str, Any] = {
            "settings": {
                "model": model_summary(model_path, model, manifest),
                "data": {"name": Path(data.root).name, "path": str(data.root), "layout": data.layout,
                         "samples": summary["samples"], "splits": summary["splits"],
                         "skipped": summary["skipped"], "classes": summary["classes"]},
                "split": split, "images": len(samples), "limit": limit,
                "threshold": options.threshold, "threshold_source": "model" if threshold is None else "given",
                "keep_largest": keep_largest, "device": str(segmenter.device), "world_size": info.world_size,
                "software": software(),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            },
            "segmentation": summarize(rows),
            "classification": {
                "trained_head": _classification(head_rows, "structure", no_classes or (
                    None if model.cls_head is not None else "the model has no classification head")),
                "zero_shot": _classification(zero_rows, "image", no_classes),
            },
            "selectivity": summarize_selectivity(selectivity),
            "paraphrase": {**summarize_paraphrases(paraphrase, para_texts), "source": para_source},
            "failures": failures,
            "per_image": rows,
            "prompt_check_cases": {"selectivity": selectivity, "paraphrase": paraphrase},
            "classification_cases": {"trained_head": head_rows, "zero_shot": zero_rows},
        }
        _write_outputs(out, data, metrics, rows, masks, gallery)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m usvlm_training.evaluate",
        description="Evaluate a USVLM model on a data set split: metrics.json, per_image.csv, roc.png, "
                    "gallery/ and report.md in OUT_DIR. Runs alone or under torchrun.")
    p.add_argument("--model", help="model directory or installed model name (default: the bundled one)")
    p.add_argument("--data", required=True, metavar="DIR", help="data set folder (any supported layout)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    p.add_argument("--threshold", type=probability_arg,
                   help="segmentation threshold, 0-1 (default: the model's)")
    p.add_argument("--keep-largest", action="store_true",
                   help="keep only the largest component of each prediction")
    p.add_argument("--limit", type=count_arg(1), help="evaluate the first N images of the split only")
    p.add_argument("--gallery", type=count_arg(0), default=4, metavar="K", help="best and worst cases drawn (4)")
    p.add_argument("--no-predictions", action="store_true", help="do not save predicted segmentations")
    p.add_argument("--skip-bad", action="store_true", help="skip broken samples (default: stop)")
    p.add_argument("--paraphrases", default="auto", metavar="auto|none|FILE",
                   help="paraphrase check: the held-out prompts in the model's manifest (auto), "
                        "none, or a JSON file {class: [texts]}")
    p.add_argument("--device", default="auto", type=device_arg, help="auto (default), cpu, cuda")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = evaluate(args.model, args.data, split=args.split, out_dir=args.output,
                           threshold=args.threshold, device=args.device, limit=args.limit,
                           progress=not args.no_progress, keep_largest=args.keep_largest,
                           gallery=args.gallery, save_predictions=not args.no_predictions,
                           on_error="skip" if args.skip_bad else "raise", paraphrases=args.paraphrases)
    except USVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if metrics:
        overall = metrics["segmentation"]["overall"]
        print(f"Dice {_stat(overall['dice'])} over {overall['n']} pair(s); "
              f"report: {Path(args.output) / 'report.md'}", file=sys.stderr)
        sel, para = metrics["selectivity"]["overall"], metrics["paraphrase"]["overall"]
        if sel["n"]:
            print(f"selectivity: Dice {sel['dice']['mean']:.4f}, other classes covered "
                  f"{sel['other_covered']['mean']:.4f} over {sel['n']} pair(s)", file=sys.stderr)
        if para["n"]:
            print(f"paraphrases: Dice {para['paraphrase_dice']:.4f} vs canonical "
                  f"{para['canonical_dice']:.4f} (gap {para['gap']:+.4f})", file=sys.stderr)
        if metrics["failures"]:
            print(f"error: {len(metrics['failures'])} image(s) failed (see the report)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

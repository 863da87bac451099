"""Measure a model on REAL ultrasound validation data against the targets of the real-data issue.

    python -m usvlm_training.evaluate_real [--model DIR|NAME] --data /work/shared/real \
        [--split val] [--limit N] -o OUT_DIR

The data folder holds re-packed public data sets (`manifest.csv`, `images/<stem>.png`,
`masks/<stem>_mask.png`), or is a folder of such folders (`busi/`, `hc18/`). Rows are sorted by
label into three kinds: BUSI lesions (benign, malignant), BUSI normals (empty mask) and HC18
fetal heads. Every image is segmented ONCE with all of its prompts in one `Segmenter.segment`
call (the image is encoded once; each prompt costs one decode), with the model's own
post-processing defaults, as `usvlm segment` runs it:

- BUSI: "breast mass", its paraphrases, and the cross-organ prompts "thyroid nodule" and
  "fetal head";
- HC18: "fetal head", and the cross-organ prompts "thyroid nodule" and "breast mass".

What is measured (the targets, `TARGETS`):
- BUSI lesions, "breast mass": mean Dice >= 0.80; each paraphrase's mean Dice on the same lesions
  within 0.05 of it;
- BUSI normals, "breast mass": the share with an empty contour >= 0.90 (false-positive rate = the
  share with a non-empty one);
- benign / malignant AUC >= 0.90 from the model's OWN contour: the malignant probability the
  product reports for the "breast mass" result (`usvlm.report.summarize_result`, the trained head
  pooled inside the predicted mask; no true mask given). A lesion whose contour is empty gets no
  probability from the product; it counts as 0.5 (no answer) in the AUC, and is counted;
- HC18, "fetal head": mean Dice >= 0.92, and the head circumference from the contour within 3 mm
  median absolute error of the truth mask's. Both circumferences by one method (`head_ellipse`):
  the outer boundary (sub-pixel, `skimage.measure.find_contours`) of the largest filled component
  in mm (the manifest's pixel spacing), a least-squares ellipse fit (`skimage.measure.EllipseModel`)
  and Ramanujan's perimeter approximation. An image with no predicted head counts as an infinite
  error in the median (never dropped);
- cross-organ false positives: the share of images with a non-empty contour for a prompt of
  another organ (reported; the issue sets no target).

Split: the real layout's own (`layout_splits`: `open_dataset(folder, layout="real")`, whole
groups of near-duplicate images in train or val), so that training and this evaluation agree.

Writes `real_eval.json` (per-image numbers, summaries, targets, model name and manifest digest,
data manifest digests, code revision, date, machine, timings), `real_eval.md` (the table of
targets and the details) and `gallery/*.png` (best and worst BUSI lesions and HC18 heads by Dice:
truth green, prediction magenta). An image that fails is recorded in `failures`, never fatal.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from usvlm.errors import InputError, OutputError, USVLMError

from .data.samples import REAL_SPLIT_SEED as SPLIT_SEED

REPO = Path(__file__).resolve().parents[2]
SCHEMA = "usvlm.real_eval/1"

# -- prompts and targets --------------------------------------------------------------------------

BREAST = "breast mass"
PARAPHRASES = ("breast lesion", "breast tumor", "mass in the breast", "lump")
HEAD = "fetal head"
THYROID = "thyroid nodule"
BUSI_PROMPTS = (BREAST, *PARAPHRASES, THYROID, HEAD)
HC18_PROMPTS = (HEAD, THYROID, BREAST)
POSITIVE = "malignant"
NO_ANSWER = 0.5  # malignant probability counted for a lesion whose contour is empty (no answer)

LESION_LABELS = {"benign": 0, "malignant": 1}
NORMAL_LABELS = {"normal"}
HEAD_LABELS = {"fetal head"}

TARGETS = {"busi_lesion_dice": 0.80, "paraphrase_gap": 0.05, "busi_normal_empty": 0.90,
           "busi_auc": 0.90, "hc18_dice": 0.92, "hc18_hc_median_abs_error_mm": 3.0}

# -- split: the one place that decides train / val (see val_groups) ------------------------------

VAL_FRACTION = 0.2


def split_rule(seed: int) -> str:
    """The split in words, for the report."""
    return (f"the real layout's group-aware split (usvlm_training.data.layouts.group_splits through "
            f"open_dataset(layout='real')): groups of near-duplicates stratified by organ and labels, "
            f"ordered by sha256 of (seed, group), the first round({VAL_FRACTION} x n) of each stratum "
            f"to val; seed {seed}")


def layout_splits(folder: Path, seed: int) -> tuple[dict[str, str], dict[str, str]]:
    """THE split decision of this module, the training's own: {id: 'train' | 'val'} from the real
    layout (`open_dataset(folder, layout='real')`, whole groups only), and {id: why} for the rows
    that layout skips (those belong to no split)."""
    import warnings

    from .data import open_dataset

    with warnings.catch_warnings():  # the skipped rows are returned, not warned about
        warnings.simplefilter("ignore")
        data = open_dataset(folder, layout="real", on_error="skip", val_fraction=VAL_FRACTION,
                            split_seed=seed)
    assignment = {i: name for name, ids in data.splits.items() for i in ids}
    skipped: dict[str, str] = {}
    for message in data.problems:
        where, _, why = message.partition(": ")
        skipped.setdefault(where, why)
    return assignment, skipped


# -- the data -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One image of a real data set with its truth mask."""

    id: str  # the manifest's stem
    dataset: str  # the folder's name (busi, hc18)
    kind: str  # lesion | normal | head
    label: str
    group: str
    image_path: Path
    mask_path: Path
    spacing_mm: float | None  # isotropic pixel spacing of the PNG; None: uncalibrated


def data_folders(root: str | os.PathLike[str]) -> list[Path]:
    """The folder itself when it holds a manifest.csv, else its sub-folders that do (sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "data folder not found" if not root.exists() else "not a folder")
    if (root / "manifest.csv").is_file():
        return [root]
    found = sorted(p for p in root.iterdir() if p.is_dir() and (p / "manifest.csv").is_file())
    if not found:
        raise InputError(root, "no manifest.csv here nor in a sub-folder: not a real data folder")
    return found


def _kind(label: str) -> str | None:
    if label in LESION_LABELS:
        return "lesion"
    if label in NORMAL_LABELS:
        return "normal"
    if label in HEAD_LABELS:
        return "head"
    return None


def read_folder(folder: Path) -> tuple[list[Item], list[dict[str, str]]]:
    """The manifest's rows as items, and the rows that cannot be used (named, with why)."""
    items, problems = [], []
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"stem", "label", "group", "pixel_spacing_mm"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(folder / "manifest.csv", f"missing column(s): {', '.join(sorted(missing))}")
        for row in reader:
            stem, label = (row.get("stem") or "").strip(), (row.get("label") or "").strip()
            kind = _kind(label)
            if not stem or kind is None:
                problems.append({"id": stem or "?", "dataset": folder.name,
                                 "error": f"unknown label {label!r}" if stem else "row without a stem"})
                continue
            spacing = (row.get("pixel_spacing_mm") or "").strip()
            try:
                value = float(spacing) if spacing else None
                if value is not None and not (math.isfinite(value) and value > 0):
                    raise ValueError
            except ValueError:
                problems.append({"id": stem, "dataset": folder.name,
                                 "error": f"bad pixel_spacing_mm {spacing!r}"})
                continue
            items.append(Item(stem, folder.name, kind, label, (row.get("group") or stem).strip(),
                              folder / "images" / f"{stem}.png", folder / "masks" / f"{stem}_mask.png",
                              value))
    return sorted(items, key=lambda i: i.id), problems


def choose(items: Sequence[Item], split: str, assignment: dict[str, str], limit: int | None) -> list[Item]:
    """The items of `split` (train, val or all) by `assignment` (id -> split; an id it lacks is in
    no split, only in "all"); with `limit`, at most that many, spread evenly over the sorted list
    so that every label keeps its share."""
    chosen = [i for i in items if split == "all" or assignment.get(i.id) == split]
    if limit is not None and len(chosen) > limit:
        picks = np.linspace(0, len(chosen) - 1, limit).round().astype(int)
        chosen = [chosen[k] for k in sorted(set(picks.tolist()))]
    return chosen


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A 0/255 mask PNG as bool, checked against the image's (rows, columns)."""
    from skimage import io as skio

    if not path.is_file():
        raise InputError(path, "mask file not found")
    arr = np.asarray(skio.imread(path))
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.shape != tuple(shape):
        raise InputError(path, f"mask of shape {arr.shape} does not match the image's {tuple(shape)}")
    return arr > 127


# -- geometry: the head's ellipse and circumference -----------------------------------------------

def ramanujan_perimeter(a: float, b: float) -> float:
    """Ramanujan's (first) approximation of an ellipse's perimeter from its semi-axes a, b."""
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


def fit_ellipse(points: np.ndarray) -> dict[str, float] | None:
    """Least-squares ellipse through (N, 2) points (x, y): centre, semi-axes (a >= b), angle;
    None when no ellipse fits (too few or collinear points)."""
    from skimage.measure import EllipseModel

    points = np.asarray(points, dtype=float)
    if len(points) < 5:
        return None
    if hasattr(EllipseModel, "from_estimate"):  # scikit-image >= 0.26
        model = EllipseModel.from_estimate(points)
        if not model:
            return None
        (xc, yc), (r1, r2), theta = model.center, model.axis_lengths, model.theta
    else:  # pragma: no cover - older scikit-image
        model = EllipseModel()
        if not model.estimate(points):
            return None
        xc, yc, r1, r2, theta = model.params
    values = [float(v) for v in (xc, yc, r1, r2, theta)]
    if not all(math.isfinite(v) for v in values) or min(values[2:4]) <= 0:
        return None
    xc, yc, r1, r2, theta = values
    a, b = max(r1, r2), min(r1, r2)
    if r2 > r1:
        theta += math.pi / 2
    return {"center_x": xc, "center_y": yc, "a": a, "b": b, "theta": theta % math.pi}


def outer_boundary(mask: np.ndarray) -> np.ndarray | None:
    """(N, 2) sub-pixel points (row, column) of the outer boundary of the largest connected
    component of `mask`, holes filled; None for an empty mask."""
    from scipy import ndimage
    from skimage.measure import find_contours

    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    component = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    contours = find_contours(np.pad(component, 1).astype(np.float32), 0.5)
    if not contours:
        return None
    return max(contours, key=len) - 1.0  # undo the padding


def head_ellipse(mask: np.ndarray, spacing_mm: float | tuple[float, float] | None
                 ) -> dict[str, Any] | None:
    """The ellipse fitted to a head mask's outer boundary and its circumference by Ramanujan,
    in mm (`spacing_mm`: isotropic, or (row, column)), in pixels when it is None; None when
    the mask is empty or no ellipse fits. The same method for the prediction and the truth."""
    boundary = outer_boundary(np.asarray(mask, dtype=bool))
    if boundary is None:
        return None
    sy, sx = (1.0, 1.0) if spacing_mm is None else (
        (float(spacing_mm), float(spacing_mm)) if np.isscalar(spacing_mm) else tuple(map(float, spacing_mm)))
    ellipse = fit_ellipse(np.column_stack([boundary[:, 1] * sx, boundary[:, 0] * sy]))
    if ellipse is None:
        return None
    return {**ellipse, "circumference": ramanujan_perimeter(ellipse["a"], ellipse["b"]),
            "unit": "px" if spacing_mm is None else "mm", "boundary_points": int(len(boundary))}


# -- one image ------------------------------------------------------------------------------------

def _prompt_row(result: Any, gt: np.ndarray | None) -> dict[str, Any]:
    from .metrics import dice

    row = {"name": result.prompt.name, "matched_by": result.prompt.matched_by,
           "pred_pixels": int(result.mask.sum()), "empty": not bool(result.mask.any()),
           "score": float(result.score)}
    presence = getattr(result, "presence", None)  # models with a presence output: P(structure here)
    if presence is not None:
        row["presence"] = float(presence)
    if gt is not None:
        row["dice"] = dice(result.mask, gt)
    return row


def evaluate_item(segmenter: Any, item: Item, options: Any, classify: bool
                  ) -> tuple[dict[str, Any], np.ndarray]:
    """One image's record and its primary predicted mask ("breast mass" on BUSI, "fetal head" on
    HC18). All prompts in one segment call: the image is encoded once."""
    from usvlm.io import read_image
    from usvlm.report import summarize_result

    from .metrics import score

    t0 = time.perf_counter()
    spacing = None if item.spacing_mm is None else (item.spacing_mm, item.spacing_mm)
    image = read_image(item.image_path, spacing_mm=spacing)
    if image.is_cine:
        raise InputError(item.image_path, "a cine; the real data sets hold single frames")
    gt = read_mask(item.mask_path, image.frame_shape)
    prompts = HC18_PROMPTS if item.kind == "head" else BUSI_PROMPTS
    output = segmenter.segment(image, list(prompts), options=options)
    results = dict(zip(prompts, output.results))
    primary = HEAD if item.kind == "head" else BREAST
    compare = {primary} | (set(PARAPHRASES) if item.kind == "lesion" else set())
    record: dict[str, Any] = {
        "id": item.id, "dataset": item.dataset, "kind": item.kind, "label": item.label,
        "group": item.group, "rows": image.frame_shape[0], "columns": image.frame_shape[1],
        "spacing_mm": item.spacing_mm, "gt_pixels": int(gt.sum()),
        "prompts": {p: _prompt_row(r, gt if p in compare else None) for p, r in results.items()},
    }
    mask = results[primary].mask
    if item.kind != "normal":
        s = score(mask, gt, (item.spacing_mm or 1.0))
        record.update({"dice": s.dice, "iou": s.iou, "hd95": s.hd95, "asd": s.asd,
                       "distance_unit": "mm" if item.spacing_mm else "px"})
    if item.kind == "lesion" and classify:
        # The product's own answer for the "breast mass" result: no true mask given.
        summary = summarize_result(results[BREAST], output, segmenter, measure=False)
        probs = summary.get("classification")
        record["p_malignant"] = None if probs is None else float(probs[POSITIVE])
        # Diagnostic only: the head pooled inside the TRUE mask (contour quality taken out).
        record["p_malignant_truth_mask"] = float(segmenter.classify(image, gt)[POSITIVE])
    if item.kind == "head":
        truth, pred = head_ellipse(gt, item.spacing_mm), head_ellipse(mask, item.spacing_mm)
        record["ellipse_truth"], record["ellipse_pred"] = truth, pred
        record["hc_truth_mm"] = None if truth is None else truth["circumference"]
        record["hc_pred_mm"] = None if pred is None else pred["circumference"]
        record["hc_abs_error_mm"] = (None if truth is None or pred is None
                                     else abs(pred["circumference"] - truth["circumference"]))
    record["timings_ms"] = {k: round(v, 2) for k, v in output.timings_ms.items()}
    record["seconds"] = round(time.perf_counter() - t0, 4)
    return record, mask


# -- summaries ------------------------------------------------------------------------------------

def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _describe(values: Sequence[float]) -> dict[str, Any]:
    values = [float(v) for v in values]
    if not values:
        return {"n": 0, "mean": math.nan, "median": math.nan, "std": math.nan, "min": math.nan,
                "max": math.nan}
    return {"n": len(values), "mean": float(np.mean(values)), "median": float(np.median(values)),
            "std": float(np.std(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def _finite(values: Any) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _nonempty_share(records: Sequence[dict], prompt: str) -> dict[str, Any]:
    flags = [not r["prompts"][prompt]["empty"] for r in records if prompt in r["prompts"]]
    return {"n": len(flags), "nonempty": int(sum(flags)), "share": sum(flags) / len(flags) if flags else math.nan}


def _auc(probabilities: Sequence[float], labels: Sequence[int]) -> dict[str, Any]:
    from .metrics import classification_scores

    try:
        s = classification_scores(list(probabilities), list(labels))
    except ValueError as exc:
        return {"available": False, "reason": str(exc), "n": len(labels)}
    if not math.isfinite(s.auc):
        return {"available": False, "reason": "the labels hold one class only", "n": s.n}
    return {"available": True, "auc": s.auc, "n": s.n, "n_positive": s.n_positive,
            "accuracy": s.accuracy, "sensitivity": s.recall, "specificity": s.specificity,
            "confusion": s.confusion, "threshold": s.threshold}


def summarize(records: Sequence[dict], classify: bool = True, no_classifier: str | None = None
              ) -> dict[str, Any]:
    """Summaries of the per-image records (pure: no model, no files)."""
    lesions = [r for r in records if r["kind"] == "lesion"]
    normals = [r for r in records if r["kind"] == "normal"]
    heads = [r for r in records if r["kind"] == "head"]
    busi = lesions + normals
    out: dict[str, Any] = {"counts": {"lesion": len(lesions), "normal": len(normals), "head": len(heads),
                                      "benign": sum(r["label"] == "benign" for r in lesions),
                                      "malignant": sum(r["label"] == "malignant" for r in lesions)}}
    canonical = [r["prompts"][BREAST]["dice"] for r in lesions]
    out["busi_lesion"] = {
        "dice": _describe(canonical),
        "per_label": {lab: _describe([r["prompts"][BREAST]["dice"] for r in lesions if r["label"] == lab])
                      for lab in LESION_LABELS},
        "empty_pred": sum(r["prompts"][BREAST]["empty"] for r in lesions),
        "hd95_px": _describe(_finite(r.get("hd95") for r in lesions)),
    }
    para = {}
    for text in PARAPHRASES:
        values = [r["prompts"][text]["dice"] for r in lesions]
        matched = sorted({f"{r['prompts'][text]['matched_by']}:{r['prompts'][text]['name']}" for r in lesions})
        para[text] = {"dice": _describe(values), "gap": _mean(values) - _mean(canonical),
                      "resolved_as": matched, "empty_pred": sum(r["prompts"][text]["empty"] for r in lesions)}
    out["paraphrases"] = para
    normal = _nonempty_share(normals, BREAST)
    out["busi_normal"] = {"n": normal["n"], "empty": normal["n"] - normal["nonempty"],
                          "empty_share": 1 - normal["share"] if normal["n"] else math.nan,
                          "false_positive_rate": normal["share"]}
    if not classify:
        out["classification"] = {"available": False, "reason": no_classifier or "not run"}
    else:
        labels = [LESION_LABELS[r["label"]] for r in lesions]
        own = [NO_ANSWER if r.get("p_malignant") is None else r["p_malignant"] for r in lesions]
        answered = [(r["p_malignant"], LESION_LABELS[r["label"]]) for r in lesions if r.get("p_malignant") is not None]
        out["classification"] = {
            "available": True, "source": "usvlm.report.summarize_result on the 'breast mass' result "
                                         "(trained head pooled inside the predicted mask)",
            "empty_contour_rule": f"a lesion with an empty contour counts as p = {NO_ANSWER}",
            "empty_contours": sum(r.get("p_malignant") is None for r in lesions),
            "own_contour": _auc(own, labels),
            "own_contour_answered_only": _auc([p for p, _ in answered], [y for _, y in answered]),
            "truth_mask_diagnostic": _auc([r["p_malignant_truth_mask"] for r in lesions], labels),
        }
    errors = [math.inf if r.get("hc_abs_error_mm") is None else r["hc_abs_error_mm"] for r in heads]
    measured = [e for e in errors if math.isfinite(e)]
    out["hc18"] = {
        "dice": _describe([r["dice"] for r in heads]),
        "hd95_mm": _describe(_finite(r.get("hd95") for r in heads)),
        "empty_pred": sum(r["prompts"][HEAD]["empty"] for r in heads),
        "hc_median_abs_error_mm": float(np.median(errors)) if errors else math.nan,
        "hc_abs_error_mm_measured": _describe(measured),
        "hc_unmeasured": len(errors) - len(measured),
        "hc_truth_mm": _describe([r["hc_truth_mm"] for r in heads if r.get("hc_truth_mm") is not None]),
        "hc_signed_error_mm": _describe([r["hc_pred_mm"] - r["hc_truth_mm"] for r in heads
                                         if r.get("hc_abs_error_mm") is not None]),
        "within_3mm": sum(e <= 3.0 for e in errors),
    }
    out["cross_organ"] = {
        "thyroid nodule on BUSI": _nonempty_share(busi, THYROID),
        "fetal head on BUSI": _nonempty_share(busi, HEAD),
        "thyroid nodule on HC18": _nonempty_share(heads, THYROID),
        "breast mass on HC18": _nonempty_share(heads, BREAST),
    }
    out["targets"] = targets(out)
    return out


def _target(key: str, what: str, value: float, target: str, met: bool | None, n: int) -> dict[str, Any]:
    if isinstance(value, float) and not math.isfinite(value) and met is not None:
        met = False  # nothing measured (or an infinite error) never passes
    return {"key": key, "what": what, "value": value, "target": target, "met": met, "n": n}


def targets(s: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue with its value and whether it is met (None: no target set)."""
    rows = []
    dice_value = s["busi_lesion"]["dice"]["mean"]
    n_lesion = s["busi_lesion"]["dice"]["n"]
    rows.append(_target("busi_lesion_dice", f"BUSI lesions, '{BREAST}': mean Dice", dice_value,
                        f">= {TARGETS['busi_lesion_dice']:.2f}",
                        n_lesion > 0 and dice_value >= TARGETS["busi_lesion_dice"], n_lesion))
    for text, p in s["paraphrases"].items():
        rows.append(_target(f"paraphrase:{text}", f"BUSI lesions, '{text}': mean Dice minus '{BREAST}'",
                            p["gap"], f"abs(gap) <= {TARGETS['paraphrase_gap']:.2f}",
                            n_lesion > 0 and abs(p["gap"]) <= TARGETS["paraphrase_gap"], n_lesion))
    normal = s["busi_normal"]
    rows.append(_target("busi_normal_empty", f"BUSI normals, '{BREAST}': share empty", normal["empty_share"],
                        f">= {TARGETS['busi_normal_empty']:.2f}",
                        normal["n"] > 0 and normal["empty_share"] >= TARGETS["busi_normal_empty"], normal["n"]))
    c = s["classification"]
    own = c.get("own_contour", {}) if c.get("available") else {}
    auc = own.get("auc", math.nan) if own.get("available") else math.nan
    rows.append(_target("busi_auc", "BUSI benign / malignant AUC from the model's own contour", auc,
                        f">= {TARGETS['busi_auc']:.2f}", bool(own.get("available")) and auc >= TARGETS["busi_auc"],
                        own.get("n", 0)))
    h = s["hc18"]
    rows.append(_target("hc18_dice", f"HC18, '{HEAD}': mean Dice", h["dice"]["mean"],
                        f">= {TARGETS['hc18_dice']:.2f}",
                        h["dice"]["n"] > 0 and h["dice"]["mean"] >= TARGETS["hc18_dice"], h["dice"]["n"]))
    rows.append(_target("hc18_hc_median_abs_error_mm", "HC18 head circumference: median absolute error (mm)",
                        h["hc_median_abs_error_mm"], f"<= {TARGETS['hc18_hc_median_abs_error_mm']:.1f} mm",
                        h["dice"]["n"] > 0 and h["hc_median_abs_error_mm"] <= TARGETS["hc18_hc_median_abs_error_mm"],
                        h["dice"]["n"]))
    for name, share in s["cross_organ"].items():
        rows.append(_target(f"cross_organ:{name}", f"'{name}': share with a non-empty contour",
                            share["share"], "none set (lower is better)", None, share["n"]))
    return rows


# -- provenance -----------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_revision() -> str:
    """HEAD of this checkout, '+local-changes' when the core or training code differs from it."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "USVLMCore", "training"],
                               cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        return rev + ("+local-changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(segmenter: Any) -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(segmenter.device), "threads": torch.get_num_threads()}
    if segmenter.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(segmenter.device)
    return info


def model_info(model_dir: Path, model: Any) -> dict[str, Any]:
    from usvlm.model.manifest import MANIFEST_NAME, read_manifest

    manifest_path = model_dir / MANIFEST_NAME
    manifest = read_manifest(manifest_path)
    weights = sorted(model_dir.glob("*.safetensors"))
    return {"name": manifest.get("name"), "path": str(model_dir), "description": manifest.get("description", ""),
            "manifest_sha256": sha256_file(manifest_path),
            "weights_sha256": {w.name: sha256_file(w) for w in weights},
            "created": manifest.get("provenance", {}).get("created"),
            "class_names": list(model.class_names), "threshold": model.threshold,
            "classification_head": model.cls_head is not None}


# -- outputs --------------------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def _met(met: bool | None) -> str:
    return "—" if met is None else ("**yes**" if met else "no")


def _stat_cell(d: dict[str, Any]) -> str:
    return "n/a (n=0)" if not d["n"] else f"{d['mean']:.4f} ± {d['std']:.4f} (median {d['median']:.4f})"


def render_md(report: dict[str, Any]) -> str:
    s, m, d = report["summary"], report["model"], report["data"]
    lines = [f"# Real-data evaluation: {m['name']} on {', '.join(f['name'] for f in d['folders'])} / {d['split']}",
             "",
             f"{report['images']['evaluated']} image(s) evaluated, {len(report['failures'])} failed; "
             f"{report['date']}; code {report['code_revision']}; "
             f"{report['machine']['processor']}, {report['machine']['cpu_count']} CPU(s), "
             f"device {report['machine']['device']}; {report['timing']['total_s']:.1f} s in all "
             f"({report['timing']['per_image_median_s']:.3f} s per image, median).", ""]
    if d["limit"] is not None:
        lines += [f"**Partial run**: at most {d['limit']} image(s) per data set (--limit).", ""]
    lines += ["## Targets", "", "| target | value | goal | met | n |", "|---|---:|---|---|---:|"]
    for t in s["targets"]:
        lines.append(f"| {t['what']} | {_fmt(t['value'])} | {t['target']} | {_met(t['met'])} | {t['n']} |")
    lines += ["", "A paraphrase gap says how far a paraphrase's Dice is from the canonical prompt's; "
                  "it means little while that Dice is far below its own target, and a paraphrase the "
                  "prompt bank resolves to the canonical entry (see BUSI lesions) has a gap of 0 by "
                  "construction."]
    lines += ["", f"Split: {d['split_rule']}. Counts: {s['counts']['benign']} benign, "
                  f"{s['counts']['malignant']} malignant, {s['counts']['normal']} normal BUSI image(s); "
                  f"{s['counts']['head']} HC18 image(s).", ""]
    b = s["busi_lesion"]
    lines += ["## BUSI lesions", "", "| prompt | resolved as | Dice (mean ± std) | gap to 'breast mass' | empty |",
              "|---|---|---|---:|---:|",
              f"| {BREAST} | (canonical) | {_stat_cell(b['dice'])} | | {b['empty_pred']} |"]
    for text, p in s["paraphrases"].items():
        lines.append(f"| {text} | {', '.join(p['resolved_as'])} | {_stat_cell(p['dice'])} | {_fmt(p['gap'])} | "
                     f"{p['empty_pred']} |")
    lines += ["", "Per label ('breast mass'): " + "; ".join(
        f"{lab} {_stat_cell(v)}" for lab, v in b["per_label"].items()) + f". HD95 (px, non-empty pairs): "
        f"{_stat_cell(b['hd95_px'])}.",
        "", "*resolved as*: `synonym:<bank entry>` means the prompt bank maps the text to the same "
            "entry (and text embedding) as the canonical prompt, so its result is identical by "
            "construction; `none:` means the text was embedded as typed.", ""]
    n = s["busi_normal"]
    lines += ["## BUSI normals", "", f"'{BREAST}' empty on {n['empty']} of {n['n']} normal image(s) "
              f"(share {_fmt(n['empty_share'])}; false-positive rate {_fmt(n['false_positive_rate'])}).", ""]
    c = s["classification"]
    lines += ["## Benign / malignant", ""]
    if not c.get("available"):
        lines += [f"Not available: {c.get('reason')}.", ""]
    else:
        lines += [f"Source: {c['source']}; {c['empty_contour_rule']} ({c['empty_contours']} lesion(s)).", "",
                  "| malignant probability from | n | AUC | accuracy @0.5 | sensitivity | specificity |",
                  "|---|---:|---:|---:|---:|---:|"]
        for key, label in (("own_contour", "the model's own contour (the target)"),
                           ("own_contour_answered_only", "own contour, non-empty contours only"),
                           ("truth_mask_diagnostic", "the TRUE mask (diagnostic only)")):
            a = c[key]
            if a.get("available"):
                lines.append(f"| {label} | {a['n']} | {_fmt(a['auc'])} | {_fmt(a['accuracy'])} | "
                             f"{_fmt(a['sensitivity'])} | {_fmt(a['specificity'])} |")
            else:
                lines.append(f"| {label} | {a.get('n', 0)} | n/a: {a['reason']} | | | |")
        lines.append("")
    h = s["hc18"]
    lines += ["## HC18 fetal head", "",
              f"'{HEAD}': Dice {_stat_cell(h['dice'])}; HD95 (mm) {_stat_cell(h['hd95_mm'])}; "
              f"{h['empty_pred']} empty prediction(s).", "",
              f"Head circumference (ellipse fitted to the outer boundary of the largest component, "
              f"Ramanujan's perimeter, mm from the manifest's spacing; the same method on truth and "
              f"prediction): median absolute error {_fmt(h['hc_median_abs_error_mm'], 2)} mm over "
              f"{h['dice']['n']} image(s) ({h['hc_unmeasured']} without a measurable prediction, "
              f"counted as infinite); {h['within_3mm']} within 3 mm. Measured errors: "
              f"{_stat_cell(h['hc_abs_error_mm_measured'])} mm; signed (prediction minus truth): "
              f"{_stat_cell(h['hc_signed_error_mm'])} mm; truth HC {_stat_cell(h['hc_truth_mm'])} mm.", ""]
    lines += ["## Cross-organ prompts", "", "| prompt on images of | n | non-empty | share |", "|---|---:|---:|---:|"]
    for name, share in s["cross_organ"].items():
        lines.append(f"| {name} | {share['n']} | {share['nonempty']} | {_fmt(share['share'])} |")
    lines += ["", "## Gallery", "", "Truth in green, prediction in magenta.", ""]
    for g in report["gallery"]:
        lines.append(f"- {g['set']} {g['kind']} {g['rank']}: {g['id']} ({g['label']}), Dice {g['dice']:.4f}  ")
        lines.append(f"  ![{g['id']}]({g['file']})")
    if report["failures"]:
        lines += ["", "## Failed images", ""]
        lines += [f"- {f['dataset']}/{f['id']}: {f['error']}" for f in report["failures"]]
    lines += ["", "## Provenance", "", "| | |", "|---|---|",
              f"| model | {m['name']} ({m['path']}), manifest sha256 {m['manifest_sha256']} |",
              f"| model threshold / classes | {m['threshold']} / {', '.join(m['class_names'])} |",
              f"| post-processing | {json.dumps(report['settings']['postprocess'])} |"]
    for f in d["folders"]:
        lines.append(f"| data {f['name']} | {f['path']}: manifest.csv sha256 {f['manifest_sha256']}, "
                     f"{f['rows']} rows (train {f['split_sizes']['train']}, val {f['split_sizes']['val']}, "
                     f"in no split {f['in_no_split']}), {f['selected']} evaluated from {d['split']} "
                     f"({f['groups_selected']} groups) |")
    lines += [f"| code | {report['code_revision']} |", f"| date | {report['date']} |",
              f"| machine | {report['machine']['platform']}, torch {report['machine']['torch']}, "
              f"{report['machine']['threads']} threads |",
              f"| command | `{report['command']}` |", ""]
    return "\n".join(lines) + "\n"


def write_gallery(out: Path, items: dict[str, Item], records: Sequence[dict], masks: dict[str, tuple],
                  k_busi: int, k_hc18: int) -> list[dict[str, Any]]:
    """Overlays of the best and worst BUSI lesions and HC18 heads by Dice (ties by id)."""
    from usvlm.io import Segment, read_image, write_overlay_png

    folder = out / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # a previous run's cases would mislead
        if re.match(r"(busi|hc18)_(best|worst)_\d+_", old.name):
            old.unlink()
    shown = []
    for name, kind, k in (("busi", "lesion", k_busi), ("hc18", "head", k_hc18)):
        rows = [r for r in records if r["kind"] == kind and r["id"] in masks]
        best = sorted(rows, key=lambda r: (-r["dice"], r["id"]))[:k]
        worst = sorted(rows, key=lambda r: (r["dice"], r["id"]))[:k]
        for which, chosen in (("best", best), ("worst", worst)):
            for rank, r in enumerate(chosen, start=1):
                item = items[r["id"]]
                try:
                    image = read_image(item.image_path)
                    gt = read_mask(item.mask_path, image.frame_shape)
                    shape, bits = masks[r["id"]]
                    pred = np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)
                    file = f"gallery/{name}_{which}_{rank:02d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', r['id'])}.png"
                    write_overlay_png(out / file, image, [Segment("truth", gt, (0.0, 1.0, 0.0)),
                                                          Segment("prediction", pred, (1.0, 0.0, 1.0))],
                                      thickness=2)
                except (USVLMError, OSError, ValueError) as exc:
                    print(f"warning: gallery image of {r['id']} not written: {exc}", file=sys.stderr)
                    continue
                shown.append({"set": name, "kind": which, "rank": rank, "id": r["id"], "label": r["label"],
                              "dice": r["dice"], "file": file})
    return shown


# -- entry point ----------------------------------------------------------------------------------

def evaluate_real(model: str | os.PathLike[str] | None, data: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                  *, split: str = "val", seed: int = SPLIT_SEED, limit: int | None = None,
                  device: str = "auto", threshold: float | None = None, gallery_busi: int = 4,
                  gallery_hc18: int = 2, progress: bool = True, threads: int | None = None,
                  log: Callable[[str], None] | None = None, command: str | None = None,
                  segmenter: Any = None) -> dict[str, Any]:
    """Evaluate a model on the real data's split; write real_eval.json, real_eval.md and gallery/
    into `out_dir`; return the report (as in the JSON). `segmenter`: an engine already loaded
    with the model of `model` (else one is made here)."""
    from usvlm.engine import Segmenter
    from usvlm.io.atomic import AtomicGroup
    from usvlm.model.registry import resolve_model
    from usvlm.postprocess import PostprocessOptions

    from .infer import json_safe

    say = log or (lambda msg: print(msg, file=sys.stderr))
    if split not in ("val", "train", "all"):
        raise InputError(None, f"split must be val, train or all, got {split!r}")
    if limit is not None and limit < 1:
        raise InputError(None, f"limit must be a positive number of images, got {limit}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(out, "exists and is not a folder")
    t_start = time.perf_counter()
    folders, chosen, problems = [], [], []
    for folder in data_folders(data):
        items, bad = read_folder(folder)
        assignment, skipped = layout_splits(folder, seed)
        # rows the layout skips are in no split: named, and evaluated only with --split all
        outside = [{"id": i.id, "dataset": folder.name, "error": f"in no split: the real layout skips "
                    f"it ({skipped.get(i.id, 'reason not given')})"} for i in items if i.id not in assignment]
        problems += bad + (outside if split != "all" else [])
        picked = choose(items, split, assignment, limit)
        chosen += picked
        folders.append({"name": folder.name, "path": str(folder.resolve()),
                        "manifest_sha256": sha256_file(folder / "manifest.csv"), "rows": len(items) + len(bad),
                        "unusable_rows": len(bad), "in_no_split": len(outside),
                        "split_sizes": {name: sum(v == name for v in assignment.values())
                                        for name in ("train", "val")},
                        "selected": len(picked), "groups_selected": len({i.group for i in picked}),
                        "selected_by_label": {lab: sum(i.label == lab for i in picked)
                                              for lab in sorted({i.label for i in picked})}})
    if not chosen:
        raise InputError(Path(data), f"no image in split {split!r}")
    model_dir = resolve_model(model)
    t0 = time.perf_counter()
    if segmenter is None:
        segmenter = Segmenter(model_dir, device=device, threads=threads)
    load_s = time.perf_counter() - t0
    options = PostprocessOptions(threshold=segmenter.model.threshold if threshold is None else threshold)
    classify = segmenter.model.cls_head is not None and POSITIVE in segmenter.model.class_names
    no_classifier = None if classify else (
        "the model has no classification head" if segmenter.model.cls_head is None
        else f"the model's classes ({', '.join(segmenter.model.class_names)}) have no '{POSITIVE}'")
    segmenter.encode_prompts(list(dict.fromkeys(BUSI_PROMPTS + HC18_PROMPTS)))  # texts once
    say(f"model {model_dir} loaded in {load_s:.1f} s on {segmenter.device}; "
        f"{len(chosen)} image(s) of split {split!r}" + (f" (limit {limit} per data set)" if limit else ""))
    records, failures, masks = [], [], {}
    iterator: Any = chosen
    if progress:
        from tqdm import tqdm

        iterator = tqdm(chosen, desc="evaluate_real", unit="image", file=sys.stderr)
    t_loop = time.perf_counter()
    for item in iterator:
        try:
            record, mask = evaluate_item(segmenter, item, options, classify)
        except Exception as exc:  # noqa: BLE001 - one broken image is recorded, the others go on
            failures.append({"id": item.id, "dataset": item.dataset, "label": item.label,
                             "error": str(exc) if isinstance(exc, USVLMError) else f"{type(exc).__name__}: {exc}"})
            continue
        records.append(record)
        if item.kind in ("lesion", "head"):
            masks[item.id] = (mask.shape, np.packbits(mask))
    loop_s = time.perf_counter() - t_loop
    summary = summarize(records, classify, no_classifier)
    out.mkdir(parents=True, exist_ok=True)
    items = {i.id: i for i in chosen}
    gallery = write_gallery(out, items, records, masks, gallery_busi, gallery_hc18)
    seconds = [r["seconds"] for r in records]
    by_set = {name: [r["seconds"] for r in records if r["dataset"] == name] for name in {r["dataset"] for r in records}}
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "code_revision": code_revision(),
        "command": command or "evaluate_real()",
        "machine": machine(segmenter),
        "model": model_info(model_dir, segmenter.model),
        "data": {"path": str(Path(data).resolve()), "split": split, "seed": seed, "val_fraction": VAL_FRACTION,
                 "split_rule": split_rule(seed), "limit": limit, "folders": folders,
                 "unusable_rows": problems},
        "settings": {"prompts": {"busi": list(BUSI_PROMPTS), "hc18": list(HC18_PROMPTS)},
                     "paraphrases": list(PARAPHRASES), "postprocess": options.to_dict(),
                     "threshold_source": "model" if threshold is None else "given",
                     "no_answer_probability": NO_ANSWER, "targets": TARGETS},
        "images": {"selected": len(chosen), "evaluated": len(records), "failed": len(failures)},
        "timing": {"total_s": round(time.perf_counter() - t_start, 2), "model_load_s": round(load_s, 2),
                   "loop_s": round(loop_s, 2),
                   "per_image_median_s": round(statistics.median(seconds), 4) if seconds else math.nan,
                   "per_image_median_s_by_dataset": {k: round(statistics.median(v), 4)
                                                     for k, v in sorted(by_set.items())}},
        "summary": summary,
        "gallery": gallery,
        "failures": failures,
        "per_image": records,
    }
    markdown = render_md(report)  # before json_safe: an infinite error reads inf, not n/a
    report = json_safe(report)
    with AtomicGroup() as group:
        group.path(out / "real_eval.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n",
                                                      encoding="utf-8")
        group.path(out / "real_eval.md").write_text(markdown, encoding="utf-8")
    say(f"{len(records)} image(s) in {loop_s:.1f} s ({report['timing']['per_image_median_s']} s per image, "
        f"median); {len(failures)} failed; total {report['timing']['total_s']} s")
    return report


def build_parser() -> argparse.ArgumentParser:
    from usvlm.cli._common import count_arg, device_arg, probability_arg

    p = argparse.ArgumentParser(
        prog="python -m usvlm_training.evaluate_real",
        description="Measure a model on real ultrasound validation data (BUSI, HC18) against the "
                    "real-data targets: real_eval.json, real_eval.md and gallery/ in OUT_DIR.")
    p.add_argument("--model", help="model directory or installed model name (default: the bundled one)")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="a real data folder (manifest.csv, images/, masks/) or a folder of them")
    p.add_argument("--split", default="val", choices=("val", "train", "all"), help="groups evaluated (val)")
    p.add_argument("--seed", type=int, default=SPLIT_SEED, help=f"split seed ({SPLIT_SEED})")
    p.add_argument("--limit", type=count_arg(1), metavar="N",
                   help="at most N images per data set, spread evenly over its split")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    p.add_argument("--threshold", type=probability_arg, help="segmentation threshold (default: the model's)")
    p.add_argument("--gallery-busi", type=count_arg(0), default=4, metavar="K",
                   help="best / worst BUSI lesions drawn (4)")
    p.add_argument("--gallery-hc18", type=count_arg(0), default=2, metavar="K",
                   help="best / worst HC18 heads drawn (2)")
    p.add_argument("--device", default="auto", type=device_arg, help="auto (default), cpu, cuda")
    p.add_argument("--threads", type=count_arg(1), help="CPU threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = evaluate_real(args.model, args.data, args.output, split=args.split, seed=args.seed,
                               limit=args.limit, device=args.device, threshold=args.threshold,
                               gallery_busi=args.gallery_busi, gallery_hc18=args.gallery_hc18,
                               progress=not args.no_progress, threads=args.threads,
                               command=" ".join(["python -m usvlm_training.evaluate_real",
                                                 *(shlex.quote(a) for a in (argv if argv is not None
                                                                            else sys.argv[1:]))]))
    except USVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for t in report["summary"]["targets"]:
        met = "n/a" if t["met"] is None else ("MET" if t["met"] else "not met")
        print(f"{t['what']}: {_fmt(t['value'])} (goal {t['target']}; {met}; n={t['n']})", file=sys.stderr)
    print(f"report: {Path(args.output) / 'real_eval.md'}", file=sys.stderr)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

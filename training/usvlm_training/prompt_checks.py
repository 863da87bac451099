"""Two checks of what the text does, run by `evaluate` beside the Dice table.

Prompt selectivity: on images holding structures of two or more classes, each class's canonical
prompt must contour that class and leave the others alone. Per (image, class): Dice with the
class's target and the share of the other classes' structure pixels the prediction covers.

Paraphrase robustness: each (image, class) pair is prompted again with every held-out paraphrase
of the class (bank texts the model never saw in training, recorded in its manifest) and compared
with the canonical prompt's Dice on the same pair.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usvlm.errors import InputError

from .metrics import dice

SELECTIVITY_TARGETS = {"dice": 0.80, "other_covered": 0.10}
PARAPHRASE_TOLERANCE = 0.03


def selectivity_rows(sample_id: str, class_masks: Mapping[str, np.ndarray],
                     predicted: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Rows of one image; none when the image holds fewer than two classes.

    class_masks: the union of each class's structure masks; predicted: each class's prediction.
    """
    if len(class_masks) < 2:
        return []
    rows = []
    for name, target in class_masks.items():
        others = np.logical_or.reduce([m for c, m in class_masks.items() if c != name])
        others &= ~target  # pixels shared with the target (touching structures) are not a leak
        pred = predicted[name]
        covered = float((pred & others).sum() / others.sum()) if others.any() else 0.0
        rows.append({"id": sample_id, "class": name, "dice": float(dice(pred, target)),
                     "other_covered": covered, "other_classes": len(class_masks) - 1})
    return rows


def summarize_selectivity(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def agg(subset: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        d = np.array([r["dice"] for r in subset], float)
        c = np.array([r["other_covered"] for r in subset], float)
        if not len(d):
            return {"n": 0}
        return {"n": len(d), "images": len({r["id"] for r in subset}),
                "dice": {"n": len(d), "mean": float(d.mean()), "std": float(d.std())},
                "other_covered": {"n": len(c), "mean": float(c.mean()), "std": float(c.std()),
                                  "max": float(c.max())},
                "pairs_over_limit": int((c > SELECTIVITY_TARGETS["other_covered"]).sum())}

    classes = sorted({r["class"] for r in rows})
    return {"targets": SELECTIVITY_TARGETS, "overall": agg(rows),
            "per_class": {c: agg([r for r in rows if r["class"] == c]) for c in classes}}


def held_out_paraphrases(model_manifest: Mapping[str, Any]) -> dict[str, list[str]]:
    """The held-out prompts recorded at training time (class or finding -> texts); {} if none."""
    data = model_manifest.get("provenance", {}).get("training", {}).get("data", {})
    held = data.get("held_out_prompts") or {}
    return {str(k): [str(t) for t in v] for k, v in held.items() if isinstance(v, list)}


def read_paraphrases(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """A JSON file {"class name": ["paraphrase", ...]} given by the user."""
    from usvlm.io.jsonfile import read_json

    data = read_json(Path(path), "paraphrase file")
    if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(t, str) and t.strip() for t in v) for v in data.values()):
        raise InputError(path, 'paraphrase file must map class names to lists of texts: '
                               '{"cyst": ["a fluid-filled structure", ...]}')
    return {str(k): list(v) for k, v in data.items()}


def paraphrase_rows(sample_id: str, class_name: str, canonical_dice: float,
                    results: Sequence[tuple[str, np.ndarray]], target: np.ndarray) -> list[dict[str, Any]]:
    """One row per paraphrase of a pair: its Dice next to the canonical prompt's."""
    return [{"id": sample_id, "class": class_name, "paraphrase": text, "dice": float(dice(mask, target)),
             "canonical_dice": float(canonical_dice)} for text, mask in results]


def summarize_paraphrases(rows: Sequence[Mapping[str, Any]], paraphrases: Mapping[str, Sequence[str]]
                          ) -> dict[str, Any]:
    """Per class and overall: canonical Dice and paraphrase Dice on the same pairs, and the gap.
    Every (pair, paraphrase) counts once, so a class with more paraphrases weighs more."""
    def agg(subset: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not subset:
            return {"n": 0}
        para = np.array([r["dice"] for r in subset], float)
        canon = np.array([r["canonical_dice"] for r in subset], float)
        return {"n": len(subset), "pairs": len({(r["id"], r["class"]) for r in subset}),
                "canonical_dice": float(canon.mean()), "paraphrase_dice": float(para.mean()),
                "paraphrase_std": float(para.std()), "gap": float(canon.mean() - para.mean())}

    per_text = {t: agg([r for r in rows if r["paraphrase"] == t]) for t in sorted({r["paraphrase"] for r in rows})}
    classes = sorted({r["class"] for r in rows})
    return {"tolerance": PARAPHRASE_TOLERANCE, "paraphrases": {k: list(v) for k, v in paraphrases.items()},
            "overall": agg(rows), "per_class": {c: agg([r for r in rows if r["class"] == c]) for c in classes},
            "per_paraphrase": per_text}


def paraphrase_source(option: str | None, manifest: Mapping[str, Any]) -> tuple[dict[str, list[str]], str]:
    """(paraphrases, where they came from) for `evaluate --paraphrases` (auto, none or a file)."""
    if option in (None, "auto"):
        held = held_out_paraphrases(manifest)
        return held, ("held out at training time (model manifest)" if held else
                      "none: the model manifest records no held-out prompts")
    if option == "none":
        return {}, "none (disabled)"
    return read_paraphrases(option), f"file {option}"

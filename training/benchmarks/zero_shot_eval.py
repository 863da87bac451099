"""Zero-shot benign/malignant AUC on a data set split: refined prompt ensembles vs bare class names.

    python training/benchmarks/zero_shot_eval.py --model usvlm-default --data PHANTOMS [--split test]

The paper's claim is that LLM-refined descriptive prompts beat bare class names for zero-shot
classification. Each image's embedding is scored against the ensembles of its organ's bank
(breast, thyroid, lymph node); the image label is malignant if any structure is.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from usvlm.engine import Segmenter
from usvlm.model.registry import resolve_model
from usvlm.text.zero_shot import MODES, class_ensembles
from usvlm_training.data import open_dataset
from usvlm_training.metrics import classification_scores

# Phantom organ contexts -> prompt bank organs.
ORGAN_BANK = {"breast": "breast", "thyroid": "thyroid", "neck": "lymph node"}


def run(model: str | None, data: str, split: str, limit: int | None = None) -> dict:
    seg = Segmenter(resolve_model(model), device="auto")
    samples = open_dataset(data).split(split)[:limit]
    labels, probs = [], {m: [] for m in MODES}
    with torch.inference_mode():
        for sample in samples:
            if sample.label < 0:
                continue
            feats = seg.encode_image(sample.load_image()).features.select(slice(0, 1))
            organ = ORGAN_BANK.get(sample.organ or "", sample.organ or "breast")
            for mode in MODES:
                p = seg.model.zero_shot_probabilities(feats, class_ensembles(organ, mode))
                probs[mode].append(float(p[0, seg.model.class_names.index("malignant")]))
            labels.append(sample.label)
    result = {"model": seg.model.name, "data": data, "split": split, "images": len(labels),
              "malignant": int(np.sum(labels))}
    for mode in MODES:
        scores = classification_scores(np.array(probs[mode]), np.array(labels))
        result[mode] = {"auc": round(float(scores.auc), 4), "accuracy": round(float(scores.accuracy), 4)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    result = run(args.model, args.data, args.split, args.limit)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    sys.exit(main())

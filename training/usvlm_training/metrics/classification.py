"""Benign / malignant classification metrics from probabilities and labels (1 = malignant).

Labels of -1 (unknown) are left out and counted, never silently. Precision, recall and F1 of a
class never predicted are 0 (sklearn's zero_division=0); AUC is NaN when the labels hold one
class only (a ROC curve needs both).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm


@dataclass(frozen=True)
class RocCurve:
    fpr: list[float]
    tpr: list[float]
    thresholds: list[float]


@dataclass(frozen=True)
class ClassificationScores:
    accuracy: float
    precision: float
    recall: float  # sensitivity
    specificity: float
    f1: float
    auc: float
    roc: RocCurve
    confusion: dict[str, int]  # tn, fp, fn, tp
    n: int  # samples with a known label
    n_positive: int
    n_unknown: int  # label -1, left out
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _arrays(probabilities: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Malignant probabilities (N,) and labels (N,) of the known samples, and the unknown count.
    Probabilities may be (N,) or (N, 2) (benign, malignant)."""
    prob = probabilities.detach().cpu().numpy() if hasattr(probabilities, "detach") else np.asarray(probabilities)
    lab = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    prob = np.asarray(prob, dtype=float)
    if prob.ndim == 2 and prob.shape[1] == 2:
        prob = prob[:, 1]
    lab = np.asarray(lab).reshape(-1).astype(int)
    if prob.ndim != 1 or prob.shape[0] != lab.shape[0]:
        raise ValueError(f"probabilities of shape {np.shape(probabilities)} do not match "
                         f"{lab.shape[0]} labels")
    if not np.isin(lab, (-1, 0, 1)).all():
        raise ValueError("labels must be 0 (benign), 1 (malignant) or -1 (unknown)")
    if not np.all(np.isfinite(prob)) or prob.min(initial=0) < 0 or prob.max(initial=0) > 1:
        raise ValueError("probabilities must lie in [0, 1]")
    known = lab >= 0
    return prob[known], lab[known], int((~known).sum())


def roc_curve(probabilities: Any, labels: Any) -> tuple[RocCurve, float]:
    """The ROC curve points and the area under it (NaN with a single class)."""
    prob, lab, _ = _arrays(probabilities, labels)
    if len(np.unique(lab)) < 2:
        return RocCurve([], [], []), math.nan
    fpr, tpr, thresholds = skm.roc_curve(lab, prob)
    # sklearn's first threshold is +inf (nothing predicted positive): keep it finite for JSON
    thresholds = np.minimum(thresholds, 1.0)
    return RocCurve(fpr.tolist(), tpr.tolist(), thresholds.tolist()), float(skm.roc_auc_score(lab, prob))


def classification_scores(probabilities: Any, labels: Any, threshold: float = 0.5) -> ClassificationScores:
    """Metrics with `threshold` on the malignant probability (>= threshold: malignant)."""
    prob, lab, unknown = _arrays(probabilities, labels)
    if lab.size == 0:
        raise ValueError(f"no sample with a known label ({unknown} unknown)")
    pred = (prob >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(lab, pred, labels=[0, 1]).ravel())
    roc, auc = roc_curve(prob, lab)
    return ClassificationScores(
        accuracy=float(skm.accuracy_score(lab, pred)),
        precision=float(skm.precision_score(lab, pred, zero_division=0)),
        recall=float(skm.recall_score(lab, pred, zero_division=0)),
        specificity=tn / (tn + fp) if tn + fp else 0.0,
        f1=float(skm.f1_score(lab, pred, zero_division=0)),
        auc=auc, roc=roc, confusion={"tn": tn, "fp": fp, "fn": fn, "tp": tp}, n=int(lab.size),
        n_positive=int(lab.sum()), n_unknown=unknown, threshold=float(threshold))

"""Evaluation metrics: segmentation (Dice, IoU, HD95, ASD in mm, empty masks counted) and
benign / malignant classification (accuracy, precision, recall, F1, AUC with the ROC curve)."""

from .classification import ClassificationScores, RocCurve, classification_scores, roc_curve
from .segmentation import (SegmentationScores, SegmentationSummary, Stat, aggregate, asd, dice, hd95,
                           iou, score, surface, surface_distances)

__all__ = ["ClassificationScores", "RocCurve", "SegmentationScores", "SegmentationSummary", "Stat",
           "aggregate", "asd", "classification_scores", "dice", "hd95", "iou", "roc_curve", "score",
           "surface", "surface_distances"]

"""Segmentation and classification losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0, *, skip_empty: bool = False) -> Tensor:
    """Soft Dice per item, averaged; `eps` keeps empty targets from dividing by zero.

    skip_empty: average over the items whose target is not empty. On an empty target the soft
    Dice is ~1 for any probability mass above a pixel or two, a loss with next to no gradient
    that only teaches timidity; binary cross-entropy is what teaches such an item to stay empty.
    """
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    per_item = 1 - (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)
    if not skip_empty:
        return per_item.mean()
    keep = target.sum(1) > 0
    return per_item[keep].mean() if keep.any() else per_item.sum() * 0.0  # keeps the graph (DDP)


def segmentation_loss(logits: Tensor, target: Tensor, bce_weight: float = 1.0) -> Tensor:
    """Dice (over items with a structure) + binary cross-entropy (over all items, negatives
    included): the paper's segmentation objective, extended to prompts naming nothing present."""
    return dice_loss(logits, target, skip_empty=True) + \
        bce_weight * F.binary_cross_entropy_with_logits(logits, target)


def classification_loss(logits: Tensor, labels: Tensor, kind: str = "ce", gamma: float = 2.0) -> Tensor:
    """Cross-entropy or focal loss over items with a known label (label >= 0)."""
    known = labels >= 0
    if not known.any():
        return logits.sum() * 0.0  # keeps the graph (DDP needs every rank to backpropagate)
    logits, labels = logits[known], labels[known]
    ce = F.cross_entropy(logits, labels, reduction="none")
    if kind == "focal":
        pt = torch.exp(-ce)
        ce = (1 - pt) ** gamma * ce
    return ce.mean()


def contrastive_loss(image: Tensor, text: Tensor, logit_scale: Tensor, same_text: Tensor) -> Tensor:
    """Symmetric InfoNCE; pairs whose captions are identical count as positives (soft targets),
    so two images captioned 'cyst' in one batch are not pushed apart."""
    logits = logit_scale * image @ text.t()
    targets = same_text.float() / same_text.float().sum(1, keepdim=True)
    return 0.5 * (torch.sum(-targets * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-targets * F.log_softmax(logits.t(), 1), 1).mean())

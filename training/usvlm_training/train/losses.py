"""Segmentation and classification losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice per item, averaged; `eps` keeps empty targets from dividing by zero."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)).mean()


def segmentation_loss(logits: Tensor, target: Tensor, bce_weight: float = 1.0) -> Tensor:
    """Dice + binary cross-entropy (the paper's segmentation objective)."""
    return dice_loss(logits, target) + bce_weight * F.binary_cross_entropy_with_logits(logits, target)


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

"""Classification over the same backbone-independent features as segmentation.

- `ZeroShotClassifier`: image embedding vs each class's prompt ensemble (no training).
- `ClassificationHead`: trained linear or MLP head over pooled multi-level features, optionally
  pooled inside a mask (classify the contoured finding, not the whole image).
- `TemperatureScaler`: post-hoc calibration of either one's logits on validation data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from usvlm.model.heads._common import JsonConfig, check_levels

# CLIP's logit scale after training, and its clamp.
DEFAULT_LOGIT_SCALE_LOG = math.log(100.0)
MAX_LOGIT_SCALE = 100.0


class ZeroShotClassifier(nn.Module):
    """Per-class probabilities from cosine similarity of image and class text embeddings."""

    def __init__(self, logit_scale_log: float = DEFAULT_LOGIT_SCALE_LOG) -> None:
        super().__init__()
        # Stored as a log value, like CLIP's `logit_scale`, so the model's value can be copied in.
        self.register_buffer("logit_scale_log", torch.tensor(float(logit_scale_log)))

    @staticmethod
    def class_embeddings(prompt_embeddings: Tensor | Sequence[Tensor]) -> Tensor:
        """Prompt ensembles -> one unit vector per class, (K, D).

        Accepts (K, D) (one prompt per class), (K, N, D), or a sequence of (N_k, D) tensors.
        Each prompt is normalised, the class vector is their mean, renormalised.
        """
        if isinstance(prompt_embeddings, Tensor):
            ensembles = prompt_embeddings if prompt_embeddings.dim() == 3 else \
                prompt_embeddings.unsqueeze(1)
            return F.normalize(F.normalize(ensembles, dim=-1).mean(1), dim=-1)
        return torch.stack([ZeroShotClassifier.class_embeddings(e.reshape(1, -1, e.shape[-1]))[0]
                            for e in prompt_embeddings])

    def logits(self, image_embedding: Tensor,
               class_prompts: Tensor | Sequence[Tensor]) -> Tensor:
        """(B, D) image embeddings -> (B, K) scaled cosine similarities."""
        classes = self.class_embeddings(class_prompts).to(image_embedding.dtype)
        scale = self.logit_scale_log.exp().clamp(max=MAX_LOGIT_SCALE)
        return scale * F.normalize(image_embedding, dim=-1) @ classes.T

    def forward(self, image_embedding: Tensor, class_prompts: Tensor | Sequence[Tensor]) -> Tensor:
        """(B, D) -> per-class probabilities (B, K)."""
        return self.logits(image_embedding, class_prompts).softmax(dim=-1)


@dataclasses.dataclass
class ClsHeadConfig(JsonConfig):
    level_channels: list[int]
    num_classes: int
    embed_dim: int = 0  # > 0: the image embedding (B, embed_dim) joins the pooled levels
    hidden: int = 0  # 0: linear head; > 0: MLP with one hidden layer of this width
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.level_channels = [int(c) for c in self.level_channels]
        if not self.level_channels or min(self.level_channels) < 1:
            raise ValueError(f"level_channels must be positive, got {self.level_channels}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.embed_dim < 0 or self.hidden < 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("embed_dim and hidden must be >= 0 and dropout in [0, 1)")


def masked_average(x: Tensor, mask: Tensor | None) -> Tensor:
    """Average (B, C, h, w) over space -> (B, C); with a mask, only over the patches it covers.

    The mask (B, H, W) or (B, 1, H, W) at any resolution is area-downsampled to the patch grid,
    so each patch weighs by the fraction of it inside the mask. An empty mask falls back to the
    global average instead of dividing by zero.
    """
    if mask is None:
        return x.mean(dim=(2, 3))
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.dim() != 4 or mask.shape[0] != x.shape[0] or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, H, W) or (B, 1, H, W) with B = {x.shape[0]}, "
                         f"got {tuple(mask.shape)}")
    w = F.interpolate(mask.to(x.dtype), size=x.shape[-2:], mode="area")
    total = w.sum(dim=(2, 3))
    pooled = (x * w).sum(dim=(2, 3)) / total.clamp_min(torch.finfo(x.dtype).tiny)
    return torch.where(total > 0, pooled, x.mean(dim=(2, 3)))


class ClassificationHead(nn.Module):
    """Pooled multi-level features (+ image embedding) -> class logits (B, K)."""

    def __init__(self, level_channels: list[int], num_classes: int, embed_dim: int = 0,
                 hidden: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = ClsHeadConfig(list(level_channels), num_classes, embed_dim, hidden, dropout)
        features = sum(self.config.level_channels) + embed_dim
        # Intermediate ViT tokens are not normalised and differ in scale between blocks.
        self.norm = nn.LayerNorm(features)
        self.classifier = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes)) if hidden == 0
            else nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Dropout(dropout),
                               nn.Linear(hidden, num_classes)))

    @classmethod
    def from_config(cls, config: ClsHeadConfig) -> ClassificationHead:
        return cls(**config.to_dict())

    def pool(self, levels: list[Tensor], image_embedding: Tensor | None = None,
             mask: Tensor | None = None) -> Tensor:
        """Concatenated (masked) average of each level, then the image embedding if configured."""
        cfg = self.config
        check_levels(levels, cfg.level_channels)
        pooled = [masked_average(x, mask) for x in levels]
        if cfg.embed_dim:
            if image_embedding is None or image_embedding.shape[-1] != cfg.embed_dim:
                raise ValueError(f"this head needs the image embedding (B, {cfg.embed_dim})")
            pooled.append(image_embedding.to(pooled[0].dtype))
        return torch.cat(pooled, dim=1)

    def forward(self, levels: list[Tensor], image_embedding: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        return self.classifier(self.norm(self.pool(levels, image_embedding, mask)))


class TemperatureScaler(nn.Module):
    """Calibrated probabilities softmax(logits / T), T > 0 fitted on validation data."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        # Fitted on log T (keeps T positive); a buffer, not a parameter, so a training optimiser
        # over the whole model never changes it.
        self.register_buffer("log_temperature", torch.tensor(math.log(temperature)))

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.exp())

    def fit(self, logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
        """Minimise the NLL of (N, K) validation logits w.r.t. T with LBFGS; returns T."""
        if logits.dim() != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(f"need logits (N, K) and labels (N,), got {tuple(logits.shape)} "
                             f"and {tuple(labels.shape)}")
        logits, labels = logits.detach().double(), labels.detach().long()
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter,
                                      line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), labels)
            loss.backward()
            return loss

        with torch.enable_grad():  # callers often run under torch.no_grad()
            optimizer.step(closure)
        with torch.no_grad():
            self.log_temperature.copy_(log_t.detach().to(self.log_temperature.dtype))
        return self.temperature

    def forward(self, logits: Tensor) -> Tensor:
        return (logits / self.log_temperature.exp().to(logits.dtype)).softmax(dim=-1)

"""Text-conditioned segmentation head: one logit map per prompt over multi-level ViT features.

The reference head ignores text; this one conditions every feature level on the prompt's text
embedding with FiLM (CLIPSeg style), so one model contours whatever the prompt names and can tell
several structures in one image apart.

Split in two so the engine can cache per image: `reduce(levels)` is prompt-independent (run once
per image), `decode(reduced, text)` runs per prompt, all prompts of an image as one B*P batch.
Only per-sample normalisation (GroupNorm) is used, so a prompt's map never depends on which other
prompts share its batch.
"""

from __future__ import annotations

import dataclasses
import math

import torch.nn.functional as F
from torch import Tensor, nn

from usvlm.model.heads._common import JsonConfig, check_levels

DECODERS = ("bilinear", "transposed")


@dataclasses.dataclass
class SegHeadConfig(JsonConfig):
    level_channels: list[int]
    text_dim: int
    width: int = 512
    out_size: int | list[int] | None = None
    decoder: str = "bilinear"
    patch_size: int = 16
    # Channels of the fusion and upsampling decoder (at most `width`). The decoder runs once per
    # prompt, so it must stay a small fraction of the image encoder: a new prompt on a cached
    # image should cost a tenth of a full recompute or less.
    decoder_width: int = 128
    # The convolutional decoder stops at 1/output_stride of the input and the logits are
    # upsampled bilinearly from there (SAM decodes at 1/4 too): the full-resolution stages cost
    # most of a prompt's time and add little to a boundary that bilinear logits already place
    # to a fraction of a pixel. 1 decodes at full resolution (checkpoints made before this field).
    output_stride: int = 1

    def __post_init__(self) -> None:
        self.level_channels = [int(c) for c in self.level_channels]
        if not self.level_channels or min(self.level_channels) < 1:
            raise ValueError(f"level_channels must be positive, got {self.level_channels}")
        if self.text_dim < 1 or self.width < 1 or self.decoder_width < 1:
            raise ValueError("text_dim, width and decoder_width must be positive")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.patch_size < 1 or self.patch_size & (self.patch_size - 1):
            raise ValueError(f"patch_size must be a power of two, got {self.patch_size}")
        if self.output_stride < 1 or self.output_stride & (self.output_stride - 1) \
                or self.output_stride > self.patch_size:
            raise ValueError(f"output_stride must be a power of two up to patch_size "
                             f"({self.patch_size}), got {self.output_stride}")
        if isinstance(self.out_size, (list, tuple)):
            self.out_size = [int(s) for s in self.out_size]
            if len(self.out_size) != 2:
                raise ValueError(f"out_size must be an int or [height, width], got {self.out_size}")


def _groups(channels: int) -> int:
    return math.gcd(channels, 32)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout),
                         nn.GELU())


class FiLM(nn.Module):
    """Feature-wise scale and shift from a text embedding: x * (1 + gamma(t)) + beta(t)."""

    def __init__(self, text_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(text_dim, 2 * channels)
        # Small weights: starts near identity (stable with a fresh head) yet prompts already
        # differ, so gradients reach the text path from the first step.
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, text: Tensor) -> Tensor:
        """x (B, C, h, w), text (P, D) or (B, P, D) -> (B * P, C, h, w)."""
        gamma, beta = self.proj(text).chunk(2, dim=-1)  # (P, C) or (B, P, C)
        if gamma.dim() == 2:
            gamma, beta = gamma.unsqueeze(0), beta.unsqueeze(0)
        y = x.unsqueeze(1) * (1 + gamma[..., None, None]) + beta[..., None, None]
        return y.flatten(0, 1)


class TextConditionedSegHead(nn.Module):
    """Multi-level features + prompt embeddings -> one logit map per prompt, (B, P, H, W).

    `levels`: list of (B, C_i, gh, gw), shallow to deep (ViT blocks 3, 6, 9 on the patch grid).
    `text`: (P, D) prompts shared by all images, or (B, P, D) prompts per image (training).
    Output size: the patch grid times `patch_size` (log2(patch_size / output_stride) x2 decoder
    stages, then bilinear x output_stride), or `out_size` when given.
    """

    def __init__(self, level_channels: list[int], text_dim: int, width: int = 512,
                 out_size: int | tuple[int, int] | list[int] | None = None,
                 decoder: str = "bilinear", patch_size: int = 16, decoder_width: int = 128,
                 output_stride: int = 1) -> None:
        super().__init__()
        self.config = SegHeadConfig(list(level_channels), text_dim, width, out_size, decoder,
                                    patch_size, decoder_width, output_stride)
        cfg = self.config
        dec = min(decoder_width, width)
        self.reducers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1), nn.GroupNorm(_groups(width), width))
            for c in cfg.level_channels)
        self.films = nn.ModuleList(FiLM(text_dim, width) for _ in cfg.level_channels)
        # Conditioned features go down to the decoder width before the (per-prompt) convolutions.
        self.project = nn.ModuleList(nn.Conv2d(width, dec, 1) if dec != width else nn.Identity()
                                     for _ in cfg.level_channels)
        self.fuse = nn.ModuleList(_conv_block(dec, dec) for _ in cfg.level_channels)
        stages, ch = [], dec
        for _ in range(int(math.log2(patch_size // output_stride))):
            out = max(ch // 2, 8)
            up = (nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
                  if decoder == "bilinear" else nn.ConvTranspose2d(ch, ch, 2, stride=2))
            stages.append(nn.Sequential(up, *_conv_block(ch, out)))
            ch = out
        self.upsample = nn.Sequential(*stages)
        self.to_logits = nn.Conv2d(ch, 1, 1)

    @classmethod
    def from_config(cls, config: SegHeadConfig) -> TextConditionedSegHead:
        return cls(**config.to_dict())

    def reduce(self, levels: list[Tensor]) -> list[Tensor]:
        """Prompt-independent part, cacheable per image: each level -> (B, width, gh, gw)."""
        check_levels(levels, self.config.level_channels)
        return [r(x) for r, x in zip(self.reducers, levels, strict=True)]

    def decode(self, reduced: list[Tensor], text: Tensor) -> Tensor:
        """Reduced levels (from `reduce`) + text (P, D) or (B, P, D) -> logits (B, P, H, W)."""
        b = reduced[0].shape[0]
        if text.dim() not in (2, 3) or text.shape[-1] != self.config.text_dim or (
                text.dim() == 3 and text.shape[0] != b):
            raise ValueError(f"text must be (P, {self.config.text_dim}) or "
                             f"({b}, P, {self.config.text_dim}), got {tuple(text.shape)}")
        p = text.shape[-2]
        text = text.to(reduced[0].dtype)
        # Deep to shallow: start from the deepest level, add each shallower one, refine.
        x = self.fuse[-1](self.project[-1](self.films[-1](reduced[-1], text)))
        for i in range(len(reduced) - 2, -1, -1):
            skip = self.project[i](self.films[i](reduced[i], text))
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.fuse[i](x + skip)
        logits = self.to_logits(self.upsample(x))
        size = self.config.out_size
        if size is not None:
            size = (size, size) if isinstance(size, int) else tuple(size)
        elif self.config.output_stride > 1:
            size = tuple(d * self.config.patch_size for d in reduced[-1].shape[-2:])
        if size is not None and tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.view(b, p, *logits.shape[-2:])

    def forward(self, levels: list[Tensor], text: Tensor) -> Tensor:
        return self.decode(self.reduce(levels), text)

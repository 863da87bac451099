"""Text-conditioned segmentation head: one logit map per prompt over multi-level ViT features.

The reference head ignores text; this one conditions every feature level on the prompt's text
embedding with FiLM (CLIPSeg style), so one model contours whatever the prompt names and can tell
several structures in one image apart.

ViT features live on the patch grid (14 x 14 for a 224-px input), two or three cells across a
small lesion; a boundary cannot be placed finer than that from them alone. An optional *detail*
branch (a few strided convolutions on the image itself, U-Net style skips) feeds the decoder's
1/8, 1/4 (and finer) stages with edges and speckle at their own resolution.

Split in two so the engine can cache per image: `reduce(levels, image)` is prompt-independent (run
once per image), `decode(reduced, text)` runs per prompt, all prompts of an image as one B*P batch.
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
MAX_OUT_SIZE = 4096


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
    # Channels of the image detail branch at each decoder stage it feeds (0: none, checkpoints
    # made before the field). With it `reduce` needs the normalised image.
    detail_channels: int = 0

    def __post_init__(self) -> None:
        self.level_channels = [int(c) for c in self.level_channels]
        if not self.level_channels or min(self.level_channels) < 1:
            raise ValueError(f"level_channels must be positive, got {self.level_channels}")
        if self.text_dim < 1 or self.width < 1 or self.decoder_width < 1:
            raise ValueError("text_dim, width and decoder_width must be positive")
        if self.detail_channels < 0:
            raise ValueError(f"detail_channels must be >= 0, got {self.detail_channels}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if not 1 <= self.patch_size <= 64 or self.patch_size & (self.patch_size - 1):
            raise ValueError(f"patch_size must be a power of two up to 64, got {self.patch_size}")
        if self.output_stride < 1 or self.output_stride & (self.output_stride - 1) \
                or self.output_stride > self.patch_size:
            raise ValueError(f"output_stride must be a power of two up to patch_size "
                             f"({self.patch_size}), got {self.output_stride}")
        if isinstance(self.out_size, (list, tuple)):
            self.out_size = [int(s) for s in self.out_size]
            if len(self.out_size) != 2:
                raise ValueError(f"out_size must be an int or [height, width], got {self.out_size}")
        # The logit map of every prompt is this large: a manifest must not ask for gigabytes.
        sizes = [self.out_size] if isinstance(self.out_size, int) else (self.out_size or [])
        if any(not 1 <= s <= MAX_OUT_SIZE for s in sizes):
            raise ValueError(f"out_size must be between 1 and {MAX_OUT_SIZE}")


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


class DetailBranch(nn.Module):
    """Normalised image (B, 3, S, S) -> features at strides 2, 4, ... `max_stride` (a list, fine
    to coarse); each stage one strided 3x3 convolution, so the whole branch costs a few percent
    of the image encoder and is computed once per image."""

    def __init__(self, channels: int, max_stride: int) -> None:
        super().__init__()
        stages, cin = [], 3
        for _ in range(int(math.log2(max_stride))):
            stages.append(nn.Sequential(nn.Conv2d(cin, channels, 3, stride=2, padding=1),
                                        nn.GroupNorm(_groups(channels), channels), nn.GELU()))
            cin = channels
        self.stages = nn.ModuleList(stages)

    def forward(self, image: Tensor) -> list[Tensor]:
        out, x = [], image
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class TextConditionedSegHead(nn.Module):
    """Multi-level features + prompt embeddings -> one logit map per prompt, (B, P, H, W).

    `levels`: list of (B, C_i, gh, gw), shallow to deep (ViT blocks 3, 6, 9 on the patch grid).
    `text`: (P, D) prompts shared by all images, or (B, P, D) prompts per image (training).
    Output size: the patch grid times `patch_size` (log2(patch_size / output_stride) x2 decoder
    stages, then bilinear x output_stride), or `out_size` when given.
    With `detail_channels`, the decoder stages at strides 8, 4, 2 (down to `output_stride`) also
    take the detail branch's features of the image at that stride.
    """

    def __init__(self, level_channels: list[int], text_dim: int, width: int = 512,
                 out_size: int | tuple[int, int] | list[int] | None = None,
                 decoder: str = "bilinear", patch_size: int = 16, decoder_width: int = 128,
                 output_stride: int = 1, detail_channels: int = 0) -> None:
        super().__init__()
        self.config = SegHeadConfig(list(level_channels), text_dim, width, out_size, decoder,
                                    patch_size, decoder_width, output_stride, detail_channels)
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
        # Decoder stage k works at stride patch_size / 2**(k+1); it takes the detail features of
        # that stride when the branch has them (strides 2 .. patch_size / 2).
        self.stage_strides = [patch_size >> (k + 1)
                              for k in range(int(math.log2(patch_size // output_stride)))]
        detail = detail_channels if self.stage_strides and self.stage_strides[0] >= 2 else 0
        self.detail = DetailBranch(detail, self.stage_strides[0]) if detail else None
        # The strides whose detail features are kept in the per-image cache, fine to coarse.
        self._detail_strides = sorted(s for s in self.stage_strides if s >= 2) if detail else []
        # Detail features are added (FPN style) after a 1x1 projection to the stage's channels:
        # the projection runs once per image, so a prompt pays one addition per stage, where a
        # concatenation would widen every per-prompt convolution.
        stages, projections, ch = [], {}, dec
        for stride in self.stage_strides:
            out = max(ch // 2, 8)
            up = (nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
                  if decoder == "bilinear" else nn.ConvTranspose2d(ch, ch, 2, stride=2))
            stages.append(nn.Sequential(up, *_conv_block(ch, out)))
            if stride in self._detail_strides:
                projections[str(stride)] = nn.Conv2d(detail, ch, 1)
            ch = out
        self.upsample = nn.Sequential(*stages)
        self.detail_proj = nn.ModuleDict(projections) if projections else None
        self.to_logits = nn.Conv2d(ch, 1, 1)

    @classmethod
    def from_config(cls, config: SegHeadConfig) -> TextConditionedSegHead:
        return cls(**config.to_dict())

    def reduce(self, levels: list[Tensor], image: Tensor | None = None) -> list[Tensor]:
        """Prompt-independent part, cacheable per image: each level -> (B, width, gh, gw), then
        (with a detail branch) the image's detail features, fine to coarse."""
        check_levels(levels, self.config.level_channels)
        reduced = [r(x) for r, x in zip(self.reducers, levels)]  # lengths checked above
        if self.detail is None:
            return reduced
        if image is None:
            raise ValueError("this segmentation head has a detail branch: reduce() needs the image")
        grid = levels[0].shape[-2:]
        expected = tuple(g * self.config.patch_size for g in grid)
        if image.dim() != 4 or image.shape[1] != 3 or tuple(image.shape[-2:]) != expected:
            raise ValueError(f"image must be (B, 3, {expected[0]}, {expected[1]}) for a "
                             f"{tuple(grid)} patch grid, got {tuple(image.shape)}")
        feats = self.detail(image.to(reduced[0].dtype))  # strides 2, 4, ... (fine to coarse)
        return reduced + [feats[int(math.log2(s)) - 1] for s in self._detail_strides]

    def decode(self, reduced: list[Tensor], text: Tensor) -> Tensor:
        """Reduced levels (from `reduce`) + text (P, D) or (B, P, D) -> logits (B, P, H, W)."""
        n = len(self.config.level_channels)
        reduced, detail = reduced[:n], reduced[n:]
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
        if len(detail) != len(self._detail_strides):
            raise ValueError(f"expected {n} reduced levels and {len(self._detail_strides)} detail "
                             f"maps (from reduce()), got {n + len(detail)} tensors")
        by_stride = dict(zip(self._detail_strides, detail))  # lengths checked above
        for stride, stage in zip(self.stage_strides, self.upsample):
            x = stage[0](x)
            d = by_stride.get(stride)
            if d is not None:
                if d.shape[-2:] != x.shape[-2:]:
                    raise ValueError(f"detail features {tuple(d.shape[-2:])} do not match the "
                                     f"decoder's {tuple(x.shape[-2:])}")
                d = self.detail_proj[str(stride)](d)  # (B, C, h, w): once per image, not prompt
                x = (x.view(b, p, *x.shape[1:]) + d.unsqueeze(1)).flatten(0, 1)
            x = stage[1:](x)
        logits = self.to_logits(x)
        size = self.config.out_size
        if size is not None:
            size = (size, size) if isinstance(size, int) else tuple(size)
        elif self.config.output_stride > 1:
            size = tuple(d * self.config.patch_size for d in reduced[-1].shape[-2:])
        if size is not None and tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.view(b, p, *logits.shape[-2:])

    def forward(self, levels: list[Tensor], text: Tensor, image: Tensor | None = None) -> Tensor:
        return self.decode(self.reduce(levels, image), text)

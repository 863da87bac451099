"""Parameter-efficient adapters for the frozen image tower: Mona, hybrid (Mona + noise estimation +
frequency filtering) and LoRA (through peft).

Placement: one adapter after each chosen visual block (the block is wrapped, `AdaptedBlock`), so the
same code serves open_clip and timm towers without touching their internals; Mona's original
placement (after attention and after the MLP) would need per-tower block surgery for little gain.

Every adapter starts as the identity: the up projection is zero (as LoRA's B matrix), so a freshly
injected model gives the pretrained outputs and training starts from the pretrained model.

Token layout: (B, N, C) with the prefix tokens (class, registers) first, then the gh x gw patch
tokens row by row. Only patch tokens go through the spatial operators; prefix tokens pass the
convolution / filter stage unchanged (they still get the norm, projections and GELU).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from usvlm.model.backbones.core import ADAPTER_ATTR, Backbone, is_adapter_parameter

ADAPTER_KINDS = ("none", "mona", "hybrid", "lora")


@dataclass
class AdapterConfig:
    """What to inject; JSON-serialisable through `to_dict` / `from_dict` (stored in the manifest).

    `blocks`: None = every visual block, an int N = the first N blocks, a list = those 0-based blocks.
    `lora_targets`: module names inside a block (None = the attention and MLP projections of the
    tower style: `attn` (nn.MultiheadAttention: in_proj and out_proj), `mlp.c_fc`, `mlp.c_proj` for
    open_clip; `attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2` for timm).
    """

    kind: str = "mona"
    bottleneck: int = 64
    dropout: float = 0.1
    blocks: int | list[int] | None = None
    kernel_sizes: list[int] = field(default_factory=lambda: [3, 5, 7])
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ValueError(f"adapter kind must be one of {ADAPTER_KINDS}, not {self.kind!r}")
        if self.bottleneck < 1 or self.lora_rank < 1:
            raise ValueError("bottleneck and lora_rank must be positive")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.kind == "hybrid" and len(self.kernel_sizes) != 3:
            raise ValueError("the hybrid adapter weighs exactly three convolutions")
        if any(k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError("kernel sizes must be odd")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown adapter config fields: {unknown}")
        return cls(**dict(data))

    def block_indices(self, depth: int) -> list[int]:
        if self.blocks is None:
            return list(range(depth))
        if isinstance(self.blocks, int):
            if not 0 < self.blocks <= depth:
                raise ValueError(f"blocks={self.blocks}: the tower has {depth} blocks")
            return list(range(self.blocks))
        indices = sorted(set(int(i) for i in self.blocks))
        if not indices or indices[0] < 0 or indices[-1] >= depth:
            raise ValueError(f"blocks {self.blocks} outside the tower's {depth} blocks")
        return indices


# -- spatial operators on the bottleneck grid ----------------------------------------------------
class MultiScaleConv(nn.Module):
    """Mona's operator: depthwise k x k convolutions averaged (or weighted) + residual, 1x1 conv + residual."""

    def __init__(self, channels: int, kernel_sizes: Sequence[int] = (3, 5, 7)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels) for k in kernel_sizes)
        self.projector = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        """x: (B, C, h, w); weights: (B, n_convs) per-sample mixing weights, None = plain mean."""
        outs = torch.stack([conv(x) for conv in self.convs], dim=1)  # (B, K, C, h, w)
        mixed = outs.mean(dim=1) if weights is None else (weights[:, :, None, None, None] * outs).sum(1)
        x = mixed + x
        return x + self.projector(x)


class NoiseEstimator(nn.Module):
    """Per-sample weights of the three convolutions from the grid's global statistics.

    Global average pool -> 1x1 conv -> ReLU -> 1x1 conv to 3 -> softmax. The last conv starts at
    zero, so the weights start uniform and the hybrid adapter starts exactly as Mona.
    """

    def __init__(self, channels: int, n_outputs: int = 3, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(channels // 4, 8)
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(),
                                 nn.Conv2d(hidden, n_outputs, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1).softmax(dim=1)  # (B, n_outputs)


class FrequencyFilter(nn.Module):
    """A learnable real gain per channel and per rFFT2 bin of the patch grid, starting at 1.

    y = irfft2(G * rfft2(x)), G of shape (C, gh, gw // 2 + 1). Unlike one scalar per channel
    (which is a plain spatial rescale), this can pass, damp or remove individual spatial
    frequencies: e.g. speckle-like high frequencies in one channel, smooth structure in another.
    Per bin rather than per radial band because a ViT's patch grid is fixed by its position
    embedding, and per-bin gains keep the orientation (axial vs lateral) that ultrasound has.
    The two bins of a Hermitian pair (ky, 0) / (gh - ky, 0) act together (irfft2 keeps the real
    part), so in the first column the effective gain is their mean.
    """

    def __init__(self, channels: int, grid_size: tuple[int, int]) -> None:
        super().__init__()
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        gh, gw = self.grid_size
        self.gain = nn.Parameter(torch.ones(channels, gh, gw // 2 + 1))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if (h, w) != self.grid_size:
            raise ValueError(f"frequency filter built for a {self.grid_size} grid, got {(h, w)}")
        spectrum = torch.fft.rfft2(x.float(), norm="ortho")  # FFT in float32 even under autocast
        return torch.fft.irfft2(spectrum * self.gain.float(), s=(h, w), norm="ortho").to(x.dtype)


# -- adapters ------------------------------------------------------------------------------------
class Mona(nn.Module):
    """Multi-cognitive visual adapter (Yin et al., Mona) on (B, N, C) tokens.

    x -> LN(x) * gamma + x * gammax -> down -> [patch tokens: multi-scale conv] -> GELU -> dropout
    -> up -> + x. gamma starts at 1e-6 (the LayerNorm branch fades in), the up projection at zero.
    """

    is_adapter = True

    def __init__(self, dim: int, grid_size: tuple[int, int], num_prefix_tokens: int = 1,
                 bottleneck: int = 64, dropout: float = 0.1,
                 kernel_sizes: Sequence[int] = (3, 5, 7)) -> None:
        super().__init__()
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_prefix_tokens = num_prefix_tokens
        self.norm = nn.LayerNorm(dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.gammax = nn.Parameter(torch.ones(dim))
        self.down = nn.Linear(dim, bottleneck)
        self.conv = MultiScaleConv(bottleneck, kernel_sizes)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def spatial(self, grid: Tensor) -> Tensor:
        """The operator on the (B, bottleneck, gh, gw) grid of patch tokens."""
        return self.conv(grid)

    def bottleneck_tokens(self, x: Tensor) -> Tensor:
        """Tokens after the down projection and the spatial operator (before GELU)."""
        b, n, _ = x.shape
        gh, gw = self.grid_size
        p = self.num_prefix_tokens
        if n - p != gh * gw:
            raise ValueError(f"adapter built for {p} prefix + {gh}x{gw} patch tokens, got {n} tokens")
        h = self.down(self.norm(x) * self.gamma + x * self.gammax)
        prefix, patches = h[:, :p], h[:, p:]
        grid = patches.transpose(1, 2).reshape(b, -1, gh, gw)
        patches = self.spatial(grid).flatten(2).transpose(1, 2)
        return torch.cat([prefix, patches], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(self.dropout(self.act(self.bottleneck_tokens(x))))


class HybridAdapter(Mona):
    """Mona whose three convolutions are weighted per sample by a noise estimate, followed by a
    frequency filter on the bottleneck grid (Qu et al., hybrid adapter; real frequency selection).
    """

    def __init__(self, dim: int, grid_size: tuple[int, int], num_prefix_tokens: int = 1,
                 bottleneck: int = 64, dropout: float = 0.1,
                 kernel_sizes: Sequence[int] = (3, 5, 7)) -> None:
        super().__init__(dim, grid_size, num_prefix_tokens, bottleneck, dropout, kernel_sizes)
        self.noise = NoiseEstimator(bottleneck, n_outputs=len(kernel_sizes))
        self.freq = FrequencyFilter(bottleneck, self.grid_size)

    def spatial(self, grid: Tensor) -> Tensor:
        return self.freq(self.conv(grid, self.noise(grid)))


class AdaptedBlock(nn.Module):
    """A visual block followed by its adapter; same call signature as the block it wraps."""

    def __init__(self, block: nn.Module, adapter: nn.Module, batch_first: bool = True) -> None:
        super().__init__()
        self.block = block
        setattr(self, ADAPTER_ATTR, adapter)
        self.batch_first = batch_first

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        y = self.block(x, *args, **kwargs)
        adapter = getattr(self, ADAPTER_ATTR)
        return adapter(y) if self.batch_first else adapter(y.transpose(0, 1)).transpose(0, 1)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:  # towers sometimes read block attributes (mlp, attn, ...)
            return getattr(super().__getattr__("block"), name)


# -- injection -----------------------------------------------------------------------------------
def make_adapter(config: AdapterConfig, backbone: Backbone) -> nn.Module:
    cls = {"mona": Mona, "hybrid": HybridAdapter}[config.kind]
    return cls(backbone.width, backbone.grid_size, backbone.num_prefix_tokens, config.bottleneck,
               config.dropout, config.kernel_sizes)


def default_lora_targets(backbone: Backbone) -> list[str]:
    """Attention and MLP projections of one block, by tower style.

    open_clip's default block uses nn.MultiheadAttention, whose forward reads `out_proj.weight`
    directly, so LoRA on `attn.out_proj` alone would never run: target the whole `attn` module,
    which peft wraps as a MultiheadAttention LoRA layer (in_proj and out_proj).
    """
    if backbone.tower == "timm":
        return ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
    attn = getattr(backbone.visual_blocks[0], "attn", None)
    attn_target = "attn" if isinstance(attn, nn.MultiheadAttention) else "attn.out_proj"
    return [attn_target, "mlp.c_fc", "mlp.c_proj"]


def _apply_lora(backbone: Backbone, config: AdapterConfig, indices: Sequence[int]) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    targets = config.lora_targets or default_lora_targets(backbone)
    prefix = "transformer.resblocks" if backbone.tower == "open_clip" else "trunk.blocks"
    # peft matches a string target with re.fullmatch on module names relative to `visual`.
    pattern = (rf"{re.escape(prefix)}\.({'|'.join(str(i) for i in indices)})\."
               rf"({'|'.join(re.escape(t) for t in targets)})")
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=pattern, bias="none")
    inject_adapter_in_model(lora, backbone.visual)


def has_adapters(backbone: Backbone) -> bool:
    return any(is_adapter_parameter(n) for n, _ in backbone.model.named_parameters())


def inject_adapters(backbone: Backbone, config: AdapterConfig, *, freeze_backbone: bool = True) -> Backbone:
    """Add `config`'s adapters to the chosen visual blocks in place; freeze the pretrained weights."""
    if has_adapters(backbone):
        raise ValueError(f"{backbone.name} already has adapters")
    indices = config.block_indices(backbone.depth)
    if config.kind in ("mona", "hybrid"):
        ref = next(backbone.visual.parameters())
        blocks = backbone.block_list
        for i in indices:
            adapter = make_adapter(config, backbone).to(device=ref.device, dtype=ref.dtype)
            blocks[i] = AdaptedBlock(blocks[i], adapter, backbone.batch_first)
    elif config.kind == "lora":
        _apply_lora(backbone, config, indices)
    backbone.adapter_config = config
    if freeze_backbone:
        backbone.freeze()
    return backbone


def trainable_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts by part: backbone (pretrained weights), adapters, heads (everything else).

    Also `trainable`, `total` and `backbone_trainable` (0 when the backbone is frozen).
    """
    import open_clip

    backbone_roots = [name for name, m in model.named_modules()
                      if isinstance(m, (Backbone, open_clip.CLIP, open_clip.CustomTextCLIP))]
    counts = dict.fromkeys(("backbone", "adapters", "heads", "backbone_trainable", "trainable",
                            "total"), 0)
    for name, p in model.named_parameters():
        n = p.numel()
        in_backbone = any(r == "" or name.startswith(r + ".") for r in backbone_roots)
        part = "adapters" if is_adapter_parameter(name) else "backbone" if in_backbone else "heads"
        counts[part] += n
        counts["total"] += n
        if p.requires_grad:
            counts["trainable"] += n
            if part == "backbone":
                counts["backbone_trainable"] += n
    return counts

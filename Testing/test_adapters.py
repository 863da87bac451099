"""Adapters: identity at injection, frozen backbone, parameter counts, real frequency selection,
training steps, class token kept out of the spatial operators, LoRA through peft."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from usvlm.model.adapters import (
    AdaptedBlock,
    AdapterConfig,
    FrequencyFilter,
    HybridAdapter,
    Mona,
    NoiseEstimator,
    inject_adapters,
    trainable_parameters,
)
from usvlm.model.backbones import Backbone, build_backbone, save_local_dir, tiny_timm_config, tiny_vit_config

CONFIGS = {
    "open_clip": lambda: tiny_vit_config(image_size=112),  # 4 blocks, width 64, 7x7 grid
    "timm": lambda: tiny_timm_config(),  # vit_tiny: 12 blocks, width 192, 14x14 grid
}


def _backbone(tower: str = "open_clip", **kwargs: object) -> Backbone:
    torch.manual_seed(0)
    return build_backbone(CONFIGS[tower](), **kwargs)


def _images(backbone: Backbone, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, *backbone.image_size, generator=torch.Generator().manual_seed(3))


def _outputs(backbone: Backbone, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        levels, embedding = backbone.encode_image_levels(x)
    return [*levels, embedding]


@pytest.mark.parametrize("tower", ["open_clip", "timm"])
@pytest.mark.parametrize("kind", ["mona", "hybrid", "lora"])
def test_fresh_adapters_leave_outputs_unchanged(kind: str, tower: str) -> None:
    backbone = _backbone(tower)
    x = _images(backbone)
    before = _outputs(backbone, x)
    inject_adapters(backbone, AdapterConfig(kind=kind))
    for a, b in zip(before, _outputs(backbone, x), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


def _mona_size(c: int, b: int, kernels: tuple[int, ...] = (3, 5, 7)) -> int:
    norm_and_scales = 4 * c  # LayerNorm weight + bias, gamma, gammax
    down, up = c * b + b, b * c + c
    convs = sum(b * k * k + b for k in kernels) + b * b + b  # depthwise k x k + 1x1 projector
    return norm_and_scales + down + up + convs


def test_only_adapters_train_and_counts_add_up() -> None:
    backbone = _backbone()
    pretrained = sum(p.numel() for p in backbone.parameters())
    inject_adapters(backbone, AdapterConfig(kind="mona"))
    counts = trainable_parameters(backbone)
    assert counts["backbone"] == pretrained and counts["backbone_trainable"] == 0
    assert counts["adapters"] == 4 * _mona_size(64, 64)
    assert counts["trainable"] == counts["adapters"] and counts["heads"] == 0
    assert counts["total"] == pretrained + counts["adapters"]
    for name, p in backbone.named_parameters():
        assert p.requires_grad == (".adapter." in name), name

    # A model around the backbone: its own layers count as heads.
    class WithHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.head = nn.Linear(64, 2)

    counts = trainable_parameters(WithHead())
    assert counts["heads"] == 64 * 2 + 2 and counts["trainable"] == counts["adapters"] + 130


def test_hybrid_counts_noise_and_frequency_parts() -> None:
    backbone = _backbone()
    inject_adapters(backbone, AdapterConfig(kind="hybrid", blocks=2))
    noise = 64 * 16 + 16 + 16 * 3 + 3
    freq = 64 * 7 * (7 // 2 + 1)  # a gain per channel per rFFT2 bin of the 7x7 grid
    assert trainable_parameters(backbone)["adapters"] == 2 * (_mona_size(64, 64) + noise + freq)
    assert [isinstance(b, AdaptedBlock) for b in backbone.visual_blocks] == [True, True, False, False]


@pytest.mark.parametrize("kind", ["mona", "hybrid", "lora"])
def test_training_steps_move_adapters_not_backbone(kind: str) -> None:
    # The last block's patch tokens feed no default level (its class token does feed the
    # embedding): take levels up to the last block so every adapter weight can reach the loss.
    backbone = _backbone(level_indices=(1, 2, 3))
    x = _images(backbone)
    before = _outputs(backbone, x)
    frozen = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    inject_adapters(backbone, AdapterConfig(kind=kind, dropout=0.0))
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    backbone.train()
    grads_seen = {id(p): False for p in trainable}
    for _ in range(3):
        levels, embedding = backbone.encode_image_levels(x)
        loss = sum((level - 1).square().mean() for level in levels) + embedding[:, 0].sum()
        optimizer.zero_grad()
        loss.backward()
        for p in trainable:
            grads_seen[id(p)] |= p.grad is not None and bool(p.grad.abs().sum() > 0)
        optimizer.step()
    assert all(grads_seen.values()), "every adapter parameter should receive a gradient"
    for name, p in backbone.named_parameters():
        if name in frozen:  # pretrained weights: no gradient, unchanged
            assert p.grad is None, name
            torch.testing.assert_close(p, frozen[name], rtol=0, atol=0)
    backbone.eval()
    after = _outputs(backbone, x)
    assert max((a - b).abs().max().item() for a, b in zip(before, after, strict=True)) > 1e-3


def test_frozen_backbone_stays_in_eval_mode_while_adapters_train() -> None:
    backbone = inject_adapters(_backbone(), AdapterConfig(kind="mona"))
    backbone.train()
    wrapped = backbone.visual_blocks[0]
    assert isinstance(wrapped, AdaptedBlock)
    assert wrapped.adapter.training and wrapped.adapter.dropout.training
    assert not wrapped.block.training and not backbone.model.visual.ln_post.training


def test_lora_runs_inside_multihead_attention() -> None:
    """open_clip uses nn.MultiheadAttention, which never calls out_proj.forward: peft must wrap the
    whole `attn` module, and a non-zero LoRA update there must change the output."""
    backbone = _backbone()
    x = _images(backbone)
    before = _outputs(backbone, x)
    inject_adapters(backbone, AdapterConfig(kind="lora", lora_rank=4, lora_targets=["attn"]))
    attn = backbone.visual_blocks[0].attn
    assert hasattr(attn, "lora_A") and hasattr(attn, "lora_B")
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    after = _outputs(backbone, x)
    assert (after[-1] - before[-1]).abs().max() > 1e-4
    counts = trainable_parameters(backbone)
    # in_proj (3 * 64 out) and out_proj (64 out), rank 4, in 4 blocks
    assert counts["adapters"] == 4 * 4 * ((64 + 3 * 64) + (64 + 64))


def test_lora_targets_timm_projections() -> None:
    backbone = inject_adapters(_backbone("timm"), AdapterConfig(kind="lora", lora_rank=2, blocks=[0]))
    block = backbone.visual_blocks[0]
    for module in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
        assert hasattr(module, "lora_A")
    assert not hasattr(backbone.visual_blocks[1].attn.qkv, "lora_A")
    assert trainable_parameters(backbone)["adapters"] == 2 * ((192 + 576) + (192 + 192)
                                                              + (192 + 768) + (768 + 192))


def test_frequency_filter_removes_one_spatial_frequency() -> None:
    gh, gw = 8, 8
    w = torch.arange(gw, dtype=torch.float32)
    h = torch.arange(gh, dtype=torch.float32)[:, None]
    low = torch.cos(2 * math.pi * 1 * w / gw).expand(gh, gw)  # bin (0, 1)
    high = torch.cos(2 * math.pi * 3 * w / gw).expand(gh, gw)  # bin (0, 3)
    rows = torch.cos(2 * math.pi * 2 * h / gh).expand(gh, gw)  # bins (2, 0) and (6, 0)
    x = torch.stack([low + high + rows, 2 * low - high]).unsqueeze(0)  # (1, 2 channels, 8, 8)
    filt = FrequencyFilter(2, (gh, gw))
    torch.testing.assert_close(filt(x), x, atol=1e-5, rtol=0)  # identity at initialisation

    with torch.no_grad():
        filt.gain[:, 0, 1] = 0.0  # remove the low horizontal frequency in both channels
    y = filt(x)
    torch.testing.assert_close(y[0, 0], high + rows, atol=1e-5, rtol=0)
    torch.testing.assert_close(y[0, 1], -high, atol=1e-5, rtol=0)
    # No per-channel spatial scale does this: the best scalar fit leaves a large residual.
    for c in range(2):
        s = (y[0, c] * x[0, c]).sum() / x[0, c].square().sum()
        assert (y[0, c] - s * x[0, c]).abs().max() > 0.5


def test_noise_estimator_starts_uniform_so_hybrid_starts_as_mona() -> None:
    torch.manual_seed(0)
    weights = NoiseEstimator(16)(torch.randn(3, 16, 7, 7))
    torch.testing.assert_close(weights, torch.full((3, 3), 1 / 3))
    hybrid = HybridAdapter(32, (7, 7), bottleneck=16, dropout=0.0)
    mona = Mona(32, (7, 7), bottleneck=16, dropout=0.0)
    mona.load_state_dict(hybrid.state_dict(), strict=False)
    x = torch.randn(2, 50, 32)
    torch.testing.assert_close(hybrid.bottleneck_tokens(x), mona.bottleneck_tokens(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", [Mona, HybridAdapter])
@pytest.mark.parametrize("prefix", [1, 2])
def test_prefix_tokens_bypass_the_spatial_operators(cls: type[Mona], prefix: int) -> None:
    torch.manual_seed(0)
    adapter = cls(32, (5, 5), num_prefix_tokens=prefix, bottleneck=8, dropout=0.0).eval()
    nn.init.normal_(adapter.up.weight)  # make the adapter do something
    x = torch.randn(2, prefix + 25, 32)
    h = adapter.bottleneck_tokens(x)
    direct = adapter.down(adapter.norm(x) * adapter.gamma + x * adapter.gammax)
    torch.testing.assert_close(h[:, :prefix], direct[:, :prefix])  # unchanged by the conv path
    assert (h[:, prefix:] - direct[:, prefix:]).abs().max() > 1e-3  # patch tokens are convolved
    # Changing the patch tokens cannot reach the class token through the adapter.
    y = adapter(x)
    x2 = x.clone()
    x2[:, prefix:] += torch.randn_like(x2[:, prefix:])
    torch.testing.assert_close(adapter(x2)[:, :prefix], y[:, :prefix])


def test_adapter_config_round_trips_through_json() -> None:
    config = AdapterConfig(kind="hybrid", bottleneck=32, dropout=0.05, blocks=[0, 2],
                           lora_targets=["attn"])
    assert AdapterConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert AdapterConfig.from_dict({}) == AdapterConfig()
    with pytest.raises(ValueError, match="kind"):
        AdapterConfig(kind="prompt")
    with pytest.raises(ValueError, match="unknown"):
        AdapterConfig.from_dict({"kind": "mona", "rank": 4})
    assert AdapterConfig(blocks=3).block_indices(12) == [0, 1, 2]
    with pytest.raises(ValueError, match="outside"):
        AdapterConfig(blocks=[12]).block_indices(12)


def test_none_kind_only_freezes_and_double_injection_is_refused(tmp_path) -> None:
    backbone = inject_adapters(_backbone(), AdapterConfig(kind="none"))
    assert trainable_parameters(backbone)["trainable"] == 0
    inject_adapters(backbone, AdapterConfig(kind="mona"))
    with pytest.raises(ValueError, match="already has adapters"):
        inject_adapters(backbone, AdapterConfig(kind="mona"))
    with pytest.raises(ValueError, match="adapters injected"):
        save_local_dir(backbone, None, tmp_path / "x")

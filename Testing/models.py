"""Tiny USVLM models built offline and saved as real model directories, as a user's model would be."""

from __future__ import annotations

from pathlib import Path

from usvlm.model.adapters import AdapterConfig
from usvlm.model.backbones import tiny_vit_config
from usvlm.model.vlm import USVLMModel, build_model


def tiny_model(adapter: str = "mona", *, seed: int = 0, image_size: int = 64, **kwargs) -> USVLMModel:
    import torch

    torch.manual_seed(seed)
    return build_model(tiny_vit_config(width=64, layers=4, image_size=image_size, embed_dim=64),
                       adapter=AdapterConfig(kind=adapter, bottleneck=16), seg_width=32,
                       name=f"tiny-{adapter}", **kwargs)


def save_tiny_model(directory: Path, adapter: str = "mona", **kwargs) -> Path:
    return tiny_model(adapter, **kwargs).save(directory, description="tiny test model (random weights)")

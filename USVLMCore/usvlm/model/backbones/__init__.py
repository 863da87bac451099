"""Vision-language backbones: open_clip models (either ViT tower style) behind one interface.

    backbone = build_backbone("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    levels, image_embedding = backbone.encode_image_levels(images)   # [(B, C, gh, gw)], (B, D)
    text_embedding = backbone.encode_text(["thyroid nodule"])        # (N, D), unit length

Files are found offline first (`resolve`); `save_local_dir` writes a folder that
`build_backbone("local-dir:PATH")` (or open_clip itself) reads back.
"""

from usvlm.model.backbones.configs import (
    MINILM_ID,
    default_model_config,
    minilm_text_cfg,
    small_vit_minilm_config,
    tiny_timm_config,
    tiny_vit_config,
)
from usvlm.model.backbones.core import (
    Backbone,
    build_backbone,
    default_level_indices,
    load_local_dir,
    save_local_dir,
)
from usvlm.model.backbones.resolve import downloads_allowed, model_roots
from usvlm.model.backbones.text import TextTower
from usvlm.model.errors import ModelNotFoundError, UnsupportedModelError

__all__ = [
    "MINILM_ID",
    "Backbone",
    "ModelNotFoundError",
    "TextTower",
    "UnsupportedModelError",
    "build_backbone",
    "default_level_indices",
    "default_model_config",
    "downloads_allowed",
    "load_local_dir",
    "minilm_text_cfg",
    "model_roots",
    "save_local_dir",
    "small_vit_minilm_config",
    "tiny_timm_config",
    "tiny_vit_config",
]

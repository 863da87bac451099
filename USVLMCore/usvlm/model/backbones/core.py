"""`Backbone`: one interface over open_clip models with either ViT tower style, and its factory.

Tower styles:
- "open_clip": open_clip's `VisionTransformer` (OpenAI CLIP, MetaCLIP): `visual.transformer.resblocks`,
  one class token.
- "timm": a timm ViT trunk (BiomedCLIP): `visual.trunk.blocks`, `trunk.num_prefix_tokens` prefix tokens.

Models are built by open_clip itself (`create_model`, `local-dir:` folders in the hub layout);
this module only decides *where* the files come from (offline first, see `resolve`) and fixes up
the Hugging Face text encoder's location so a saved folder is self-contained.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.hf_model import HFTextEncoder
from open_clip.timm_model import TimmModel
from open_clip.tokenizer import HFTokenizer
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from usvlm.errors import OutputError
from usvlm.model.backbones import resolve as rs
from usvlm.model.backbones.text import TextTower
from usvlm.model.errors import CheckpointError, ModelNotFoundError, UnsupportedModelError
from usvlm.model.manifest import read_bounded_file
from usvlm.model.safe_config import check_model_cfg

# What a config's tokenizer_kwargs may pass on (HFTokenizer's own options, see safe_config).
SAFE_TOKENIZER_KWARGS = ("clean", "strip_sep_token")

log = logging.getLogger(__name__)

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
WEIGHTS_FILE = "open_clip_model.safetensors"
DEFAULT_NUM_LEVELS = 3
ADAPTER_ATTR = "adapter"  # attribute name of the adapter inside a wrapped block


def is_adapter_parameter(name: str) -> bool:
    """Whether a parameter name belongs to an injected adapter (USVLM block adapter or peft LoRA)."""
    return f".{ADAPTER_ATTR}." in f".{name}" or "lora_" in name


def is_adapter_module(name: str, module: nn.Module) -> bool:
    return bool(getattr(module, "is_adapter", False)) or name.rsplit(".", 1)[-1].startswith("lora_")


def default_level_indices(depth: int, num_levels: int = DEFAULT_NUM_LEVELS) -> tuple[int, ...]:
    """0-based blocks whose outputs feed the heads: blocks 3, 6, 9 (1-based) of 12, scaled.

    Block k of n levels is ceil(depth * k / (num_levels + 1)) (1-based): 12 -> 2, 5, 8;
    4 -> 0, 1, 2; 24 -> 5, 11, 17. Very shallow models repeat a block rather than drop a level.
    """
    return tuple(max(1, math.ceil(depth * k / (num_levels + 1) - 1e-9)) - 1
                 for k in range(1, num_levels + 1))


class Backbone(nn.Module):
    """A frozen-able CLIP-style model with multi-level image features and a text tower.

    `encode_image_levels(x)` runs the image tower once and returns the patch tokens after each of
    `level_indices` as (B, width, gh, gw), shallow to deep, and the L2-normalised image embedding.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str, model_cfg: Mapping[str, Any],
                 level_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        visual = getattr(model, "visual", None)
        if isinstance(visual, VisionTransformer):
            self.tower = "open_clip"
        elif isinstance(visual, TimmModel) and hasattr(visual.trunk, "blocks") \
                and hasattr(visual.trunk, "patch_embed"):
            self.tower = "timm"
        else:
            raise UnsupportedModelError(
                name, f"image tower {type(visual).__name__} is not a ViT; USVLM needs patch tokens "
                      "(open_clip VisionTransformer or a timm ViT trunk)")
        self.model = model
        self.name = name
        self.model_cfg = deepcopy(dict(model_cfg))
        depth = len(self.block_list)
        indices = tuple(level_indices) if level_indices is not None else default_level_indices(depth)
        if not indices or any(not 0 <= i < depth for i in indices):
            raise ValueError(f"level indices {indices} outside the {depth} blocks of {name}")
        self.level_indices = indices
        self.text = TextTower(model, tokenizer, self.embed_dim)
        self.frozen = False
        self.adapter_config: Any = None  # set by usvlm.model.adapters.inject_adapters
        self.weights_path: Path | None = None  # the weights file it was built from (None: random)
        self.text_weights_path: Path | None = None  # a separately loaded HF text encoder's weights
        self.eval()  # like a pretrained model from a hub: no dropout until training asks for it

    # -- geometry -------------------------------------------------------------------------------
    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def block_list(self) -> nn.ModuleList:
        """The ModuleList the image tower iterates (replace entries to wrap blocks)."""
        v = self.model.visual
        return v.transformer.resblocks if self.tower == "open_clip" else v.trunk.blocks

    @property
    def visual_blocks(self) -> list[nn.Module]:
        return list(self.block_list)

    @property
    def depth(self) -> int:
        return len(self.block_list)

    @property
    def width(self) -> int:
        v = self.model.visual
        return int(v.transformer.width if self.tower == "open_clip" else v.trunk.embed_dim)

    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def grid_size(self) -> tuple[int, int]:
        v = self.model.visual
        grid = v.grid_size if self.tower == "open_clip" else v.trunk.patch_embed.grid_size
        return int(grid[0]), int(grid[1])

    @property
    def patch_size(self) -> tuple[int, int]:
        v = self.model.visual
        patch = v.patch_size if self.tower == "open_clip" else v.trunk.patch_embed.patch_size
        return int(patch[0]), int(patch[1])

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens (class, register, distillation tokens)."""
        return 1 if self.tower == "open_clip" else int(self.model.visual.trunk.num_prefix_tokens)

    @property
    def has_class_token(self) -> bool:
        return True if self.tower == "open_clip" else bool(self.model.visual.trunk.has_class_token)

    @property
    def batch_first(self) -> bool:
        """Whether blocks see (B, N, C) tokens (else (N, B, C), old open_clip layouts)."""
        return True if self.tower == "timm" else bool(self.model.visual.transformer.batch_first)

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        return dict(open_clip.get_model_preprocess_cfg(self.model))

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.preprocess_cfg["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.preprocess_cfg["std"])

    @property
    def logit_scale(self) -> Tensor:
        """The learned CLIP temperature as a multiplier (exp of the stored log-scale)."""
        return self.model.logit_scale.exp()

    @property
    def tokenizer(self) -> Any:
        return self.text.tokenizer

    # -- encoding -------------------------------------------------------------------------------
    def encode_image_levels(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """(B, 3, H, W) normalised images -> ([(B, width, gh, gw)] per level, (B, embed_dim) unit)."""
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"{self.name} expects images of shape (B, 3, {self.image_size[0]}, "
                             f"{self.image_size[1]}), got {tuple(images.shape)}")
        param = next(self.model.visual.parameters())
        unique = sorted(set(self.level_indices))
        # One pass: open_clip iterates the blocks itself and keeps the requested outputs.
        out = self.model.visual.forward_intermediates(
            images.to(device=param.device, dtype=param.dtype), indices=unique, output_fmt="NCHW")
        by_block = dict(zip(unique, out["image_intermediates"]))
        return [by_block[i] for i in self.level_indices], F.normalize(out["image_features"], dim=-1)

    def forward(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        return self.encode_image_levels(images)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """list of N prompts -> (N, embed_dim) L2-normalised."""
        return self.text.encode_text(texts)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        return self.text.tokenize(texts)

    def freeze(self) -> Backbone:
        """Stop gradients into every pretrained weight (image and text towers, logit scale).

        Injected adapter weights keep theirs. While frozen, `train()` leaves the pretrained
        modules in eval mode (no dropout in the text encoder) and trains only the adapters.
        """
        for name, p in self.model.named_parameters():
            p.requires_grad_(is_adapter_parameter(name))
        self.frozen = True
        return self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode and self.frozen:
            self.model.eval()
            for name, module in self.model.named_modules():
                if is_adapter_module(name, module):
                    module.train(True)
        return self


# -- building -----------------------------------------------------------------------------------
@dataclass
class _Source:
    open_clip_name: str          # what open_clip.create_model / get_tokenizer receive
    model_cfg: dict[str, Any]
    checkpoint: Path | None      # full CLIP weights, None = random init (HF text tower excepted)
    files_dir: Path | None       # folder that may also hold tokenizer and HF text config files
    pretrained: str | None = None  # weights file for a built-in name
    create_kwargs: dict[str, Any] = field(default_factory=dict)  # extra open_clip.create_model args


def _read_local_dir(folder: Path, label: str) -> dict[str, Any]:
    config_path = folder / rs.OPEN_CLIP_CONFIG
    if not folder.is_dir():
        raise CheckpointError(folder, f"no such folder (given as {label})")
    if not os.path.lexists(config_path):
        raise CheckpointError(config_path, "missing: a local-dir: folder needs open_clip_config.json "
                                           "and open_clip_model.safetensors")
    data = read_bounded_file(config_path, "open_clip config")
    try:
        config = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(config_path, f"cannot be read: {str(e)[:200]}") from None
    if not isinstance(config, dict) or "model_cfg" not in config:
        raise CheckpointError(config_path, "has no 'model_cfg'")
    # A folder is data: only the allow-listed, bounded keys may reach open_clip.
    check_model_cfg(config["model_cfg"], config_path, "model_cfg")
    return config["model_cfg"]


def _local_source(folder: Path, label: str, load_weights: bool) -> _Source:
    folder = folder.expanduser().resolve()
    cfg = _read_local_dir(folder, label)
    checkpoint = None
    if load_weights:
        found = next((folder / n for n in rs.OPEN_CLIP_WEIGHTS if (folder / n).is_file()), None)
        if found is None:
            raise ModelNotFoundError(label, [f"folder {folder} (config only)"],
                                     f"put {WEIGHTS_FILE} (or open_clip_pytorch_model.bin) "
                                     "beside open_clip_config.json, or build with load_weights=False")
        checkpoint = found
    return _Source(f"{LOCAL_DIR}{folder}", cfg, checkpoint, folder)


def _resolve_source(model: str | Mapping[str, Any], pretrained: str | os.PathLike[str] | None,
                    load_weights: bool, model_dir: str | os.PathLike[str] | None,
                    cache_dir: str | os.PathLike[str] | None, allow_download: bool | None,
                    scratch: Path) -> _Source:
    if isinstance(model, Mapping):
        # open_clip builds only named or folder configs: hand it a folder holding just the config.
        (scratch / rs.OPEN_CLIP_CONFIG).write_text(json.dumps({"model_cfg": dict(model)}))
        return _Source(f"{LOCAL_DIR}{scratch}", deepcopy(dict(model)), None, None)
    if model.startswith(LOCAL_DIR):
        return _local_source(Path(model[len(LOCAL_DIR):]), model, load_weights)
    if model.startswith(HF_HUB):
        folder = rs.resolve_open_clip_hub(model[len(HF_HUB):], need_weights=load_weights,
                                          explicit=model_dir, cache_dir=cache_dir,
                                          allow_download=allow_download)
        return _local_source(folder, model, load_weights)
    name = model.replace("/", "-")
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise UnsupportedModelError(model, "not an open_clip model name (see open_clip.list_models()), "
                                           "hf-hub:ORG/NAME or local-dir:PATH")
    checkpoint = None
    if pretrained and load_weights:
        path = Path(pretrained).expanduser()
        if path.is_file():
            checkpoint = path
        elif os.sep in str(pretrained) or path.suffix in {".safetensors", ".bin", ".pt", ".pth"}:
            raise ModelNotFoundError(model, [f"file {path} (missing)"],
                                     "pass the path of an existing weights file")
        else:
            checkpoint = rs.resolve_pretrained_tag(name, str(pretrained), cache_dir=cache_dir,
                                                   allow_download=allow_download)
            return _tag_source(name, cfg, str(pretrained), checkpoint)
    return _Source(name, cfg, checkpoint, None, str(checkpoint) if checkpoint else None)


def _tag_source(name: str, cfg: dict[str, Any], tag: str, checkpoint: Path) -> _Source:
    """Weights of a pretrained tag, loaded as a file: carry over what open_clip takes from the tag
    (QuickGELU for OpenAI/MetaCLIP weights, mean/std), which it would skip for a plain file."""
    tag_cfg = open_clip.get_pretrained_cfg(name, tag)
    kwargs: dict[str, Any] = {}
    if tag_cfg.get("quick_gelu") and not cfg.get("quick_gelu"):
        cfg["quick_gelu"] = True
        kwargs["force_quick_gelu"] = True
    preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    if preprocess:
        kwargs["force_preprocess_cfg"] = preprocess
    return _Source(name, cfg, checkpoint, None, str(checkpoint), kwargs)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar while open_clip builds the text tower."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


class _DropRandomInitWarnings(logging.Filter):
    """open_clip warns on the root logger when it finds no weights; for a config dict that is the intent."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("no CLIP weights found" in msg or "initialized randomly" in msg
                    or "initialized partially" in msg)


@contextmanager
def _quiet_random_init(active: bool) -> Iterator[None]:
    root = logging.getLogger()
    flt = _DropRandomInitWarnings()
    if active:
        root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _hf_text_overrides(source: _Source, cache_dir: str | os.PathLike[str] | None,
                       allow_download: bool | None) -> dict[str, Any]:
    """Point an HF text tower at local files; load its own weights only when no CLIP checkpoint does."""
    text_cfg = dict(source.model_cfg.get("text_cfg", {}))
    if not text_cfg.get("hf_model_name"):
        return {}
    need_weights = source.checkpoint is None
    need = rs.all_of(rs.has_any([rs.HF_CONFIG]), rs.has_any(rs.HF_WEIGHTS)) if need_weights \
        else rs.has_any([rs.HF_CONFIG])
    files_dir = None if need_weights else source.files_dir  # a saved folder holds config only
    text_cfg["hf_model_name"] = rs.resolve_hf_model(
        text_cfg["hf_model_name"], need=need, what="text encoder", local_dir=files_dir,
        cache_dir=cache_dir, allow_download=allow_download)
    folder = Path(text_cfg["hf_model_name"])
    if folder.is_dir():
        refuse_code(folder)
        if need_weights and not (folder / rs.HF_WEIGHTS[0]).is_file():
            raise CheckpointError(folder / rs.HF_WEIGHTS[1], "is a pickle (torch.save) file; USVLM "
                                  f"loads Hugging Face weights only from {rs.HF_WEIGHTS[0]}")
    text_cfg["hf_model_pretrained"] = need_weights
    return {"text_cfg": text_cfg}


def _make_tokenizer(source: _Source, cache_dir: str | os.PathLike[str] | None,
                    allow_download: bool | None) -> Any:
    text_cfg = source.model_cfg.get("text_cfg", {})
    hf_name = text_cfg.get("hf_tokenizer_name")
    if not hf_name:  # open_clip's own BPE tokenizer ships with open_clip
        return open_clip.get_tokenizer(source.open_clip_name)
    where = rs.resolve_hf_model(hf_name, need=rs.has_any(rs.TOKENIZER_FILES), what="tokenizer",
                                local_dir=source.files_dir, cache_dir=cache_dir,
                                allow_download=allow_download)
    if Path(where).is_dir():
        refuse_code(Path(where))
    kwargs = {k: v for k, v in (text_cfg.get("tokenizer_kwargs") or {}).items()
              if k in SAFE_TOKENIZER_KWARGS}
    # trust_remote_code is forced off: a tokenizer folder's Python is never imported.
    return HFTokenizer(where, context_length=text_cfg.get("context_length", 77),
                       tokenizer_mode=text_cfg.get("tokenizer_mode"), trust_remote_code=False,
                       **kwargs)


CODE_CONFIGS = ("config.json", "tokenizer_config.json", "preprocessor_config.json")


def refuse_code(folder: Path) -> None:
    """Refuse a Hugging Face folder that asks for its own Python (an `auto_map` entry): USVLM never
    imports code from a model folder, and transformers would ask to run it."""
    for name in CODE_CONFIGS:
        path = folder / name
        if not os.path.lexists(path):
            continue
        try:
            config = json.loads(read_bounded_file(path, "Hugging Face config").decode("utf-8"))
        except (ValueError, RecursionError):
            raise CheckpointError(path, "not a valid JSON config") from None
        if isinstance(config, dict) and ("auto_map" in config or "custom_pipelines" in config):
            raise CheckpointError(path, "names Python code to import (auto_map); USVLM never runs "
                                        "code from a model folder")


@contextmanager
def _weights_errors(what: Path | str) -> Iterator[None]:
    """A weights file that cannot be loaded (a pickle refused by torch's weights_only loader, a
    truncated archive, tensors of the wrong shape) is a one-line error naming it, not a traceback."""
    import zipfile

    from safetensors import SafetensorError

    try:
        yield
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, zipfile.BadZipFile,
            SafetensorError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(what, f"cannot load these weights ({type(e).__name__}: {first})") from None


def build_backbone(model: str | Mapping[str, Any], pretrained: str | os.PathLike[str] | None = None,
                   *, load_weights: bool = True, model_dir: str | os.PathLike[str] | None = None,
                   cache_dir: str | os.PathLike[str] | None = None,
                   allow_download: bool | None = None, level_indices: Sequence[int] | None = None,
                   device: str | torch.device = "cpu", precision: str = "fp32",
                   structure_only: bool = False) -> Backbone:
    """Build a Backbone from an open_clip name, `hf-hub:ORG/NAME`, `local-dir:PATH` or a config dict.

    `pretrained` (built-in names only): an open_clip tag ("openai", "metaclip_400m") or a weights
    file; None gives random weights. `hf-hub:` and `local-dir:` models load their own weights
    (`load_weights=False` skips them). Files are looked for offline first (see `resolve`);
    missing ones raise `ModelNotFoundError`. A config dict builds with random weights, except a
    Hugging Face text tower, which loads its pretrained encoder.

    `structure_only`: resolve every file as for a real build but build on the meta device, load
    nothing and allocate nothing, so the sizes a config asks for can be checked against the
    weights first; `weights_path` / `text_weights_path` name the files a real build would load.
    """
    with tempfile.TemporaryDirectory(prefix="usvlm-cfg-") as scratch:
        source = _resolve_source(model, pretrained, load_weights, model_dir, cache_dir,
                                 allow_download, Path(scratch))
        overrides = _hf_text_overrides(source, cache_dir, allow_download)
        tokenizer = _make_tokenizer(source, cache_dir, allow_download)
        text_weights = _hf_text_weights(overrides)
        load = source.checkpoint is not None and not structure_only
        if structure_only and overrides:
            overrides["text_cfg"]["hf_model_pretrained"] = False  # its config only, no weights
        with _quiet_transformers(), _quiet_random_init(isinstance(model, Mapping) or structure_only), \
                torch.device("meta") if structure_only else \
                _weights_errors(source.checkpoint or text_weights or source.open_clip_name):
            clip = open_clip.create_model(
                source.open_clip_name, pretrained=None if structure_only else source.pretrained,
                load_weights=load, device="meta" if structure_only else device, precision=precision,
                cache_dir=str(cache_dir) if cache_dir else None, **source.create_kwargs, **overrides)
    text = getattr(clip, "text", None)
    if source.checkpoint is None and not structure_only and isinstance(text, HFTextEncoder) \
            and isinstance(text.proj, nn.Linear):
        # A (semi-)orthogonal projection keeps the pretrained encoder's sentence geometry until trained.
        nn.init.orthogonal_(text.proj.weight)
    name = model if isinstance(model, str) else "config"
    if not structure_only:
        log.info("backbone %s: weights from %s", name, source.checkpoint or "random initialisation")
    backbone = Backbone(clip, tokenizer, name=name, model_cfg=source.model_cfg,
                        level_indices=level_indices)
    # Checkpoints record (and verify) the sha256 of externally resolved weights.
    backbone.weights_path = source.checkpoint
    backbone.text_weights_path = text_weights
    return backbone


def _hf_text_weights(overrides: Mapping[str, Any]) -> Path | None:
    """The weights file of a Hugging Face text encoder loaded from its own folder (e.g. MiniLM)."""
    text_cfg = overrides.get("text_cfg") or {}
    if not text_cfg.get("hf_model_pretrained"):
        return None
    folder = Path(text_cfg["hf_model_name"])
    return next((folder / n for n in rs.HF_WEIGHTS if (folder / n).is_file()), None)


def load_local_dir(path: str | os.PathLike[str], **kwargs: Any) -> Backbone:
    """Read a folder written by `save_local_dir` (or any open_clip hub-layout folder)."""
    return build_backbone(f"{LOCAL_DIR}{Path(path).expanduser().resolve()}", **kwargs)


def _is_plain_open_clip(state_keys: Sequence[str]) -> bool:
    return not any(is_adapter_parameter(k) for k in state_keys)


def save_local_dir(model: Backbone | nn.Module, config: Mapping[str, Any] | None,
                   path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write `model` as an open_clip hub-layout folder that `local-dir:PATH` loads back.

    Files: open_clip_config.json ({"model_cfg", "preprocess_cfg"}), open_clip_model.safetensors
    and, for a Hugging Face text tower, the encoder's config.json and tokenizer files, so the
    folder needs nothing else. `config` defaults to the Backbone's own model config. Adapters are
    not part of a backbone folder: save them with the USVLM checkpoint.
    """
    backbone = model if isinstance(model, Backbone) else None
    clip = backbone.model if backbone else model
    config = dict(config) if config is not None else (backbone.model_cfg if backbone else None)
    if config is None:
        raise ValueError("config is required when saving a bare open_clip model")
    state = clip.state_dict()
    if not _is_plain_open_clip(list(state)):
        raise ValueError("this backbone has adapters injected; save them with the checkpoint instead")
    target = Path(path).expanduser()
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise OutputError(target, "exists and is not empty (pass overwrite=True to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                  str(partial / WEIGHTS_FILE), metadata={"format": "pt"})
        preprocess = dict(open_clip.get_model_preprocess_cfg(clip))
        (partial / rs.OPEN_CLIP_CONFIG).write_text(
            json.dumps({"model_cfg": config, "preprocess_cfg": preprocess}, indent=2), encoding="utf-8")
        text = getattr(clip, "text", None)
        if isinstance(text, HFTextEncoder):
            text.config.save_pretrained(partial)
        tokenizer = backbone.tokenizer if backbone else None
        if isinstance(tokenizer, HFTokenizer):
            tokenizer.save_pretrained(partial)
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target

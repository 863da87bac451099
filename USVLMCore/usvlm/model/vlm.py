"""The USVLM model: a CLIP-style backbone with adapters, a text-conditioned segmentation head and a
classification head, and its round trip through the checkpoint format.

    model = build_model("ViT-B-16", adapter=AdapterConfig("mona"))        # fresh, for training
    model.save("my-model")                                                # model directory
    model = load_model("my-model")                                        # checked and rebuilt

Building always goes backbone -> adapters -> heads, then weights are loaded into that structure,
so a checkpoint fits only the architecture its manifest describes (shapes are checked first).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from usvlm import __version__
from usvlm.model.adapters import AdapterConfig, has_adapters, inject_adapters, trainable_parameters
from usvlm.model.backbones import Backbone, build_backbone
from usvlm.model.backbones.core import is_adapter_parameter
from usvlm.model.checkpoint import (Checkpoint, check_shapes, file_sha256, open_checkpoint,
                                   save_checkpoint, shapes_of)
from usvlm.model.errors import CheckpointError, ModelNotFoundError
from usvlm.model.heads import (ClassificationHead, ClsHeadConfig, SegHeadConfig,
                               TextConditionedSegHead, ZeroShotClassifier)

DEFAULT_CLASS_NAMES = ["benign", "malignant"]
# Class prompt ensembles for zero-shot classification when the manifest brings none.
DEFAULT_CLASS_PROMPTS = {
    "benign": ["a benign lesion", "an oval circumscribed parallel mass",
               "a smooth anechoic cyst with posterior enhancement"],
    "malignant": ["a malignant lesion", "an irregular spiculated taller-than-wide mass",
                  "a markedly hypoechoic mass with posterior acoustic shadowing"],
}
# Keys of a Hugging Face text encoder loaded from its own (resolvable) weights: never bundled.
_HF_TEXT_PREFIX = "text.transformer."


@dataclass
class ImageFeatures:
    """What the image encoder produced for a batch of frames (cached per image by the engine)."""

    levels: list[Tensor]  # (B, C, gh, gw) per level, shallow to deep
    embedding: Tensor  # (B, D) unit length
    reduced: list[Tensor]  # the segmentation head's prompt-independent reduction of `levels`

    def select(self, index: slice | Sequence[int]) -> ImageFeatures:
        return ImageFeatures([x[index] for x in self.levels], self.embedding[index],
                             [x[index] for x in self.reduced])

    @staticmethod
    def cat(parts: Sequence[ImageFeatures]) -> ImageFeatures:
        return ImageFeatures([torch.cat(xs) for xs in zip(*(p.levels for p in parts))],
                             torch.cat([p.embedding for p in parts]),
                             [torch.cat(xs) for xs in zip(*(p.reduced for p in parts))])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.levels, self.embedding, *self.reduced])


class USVLMModel(nn.Module):
    def __init__(self, backbone: Backbone, seg_head: TextConditionedSegHead,
                 cls_head: ClassificationHead | None = None, *, name: str = "usvlm",
                 backbone_spec: Mapping[str, Any] | None = None,
                 class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
                 class_prompts: Mapping[str, Sequence[str]] | None = None,
                 threshold: float = 0.5, temperature: float = 1.0, color: str = "grey",
                 default_prompts: Sequence[str] = ()) -> None:
        super().__init__()
        self.backbone = backbone
        self.seg_head = seg_head
        self.cls_head = cls_head
        self.zero_shot = ZeroShotClassifier(float(backbone.model.logit_scale.detach().float().item()))
        self.name = name
        self.backbone_spec = dict(backbone_spec or {"id": backbone.name})
        self.class_names = list(class_names)
        self.class_prompts = {k: list(v) for k, v in (class_prompts or DEFAULT_CLASS_PROMPTS).items()}
        self.threshold = float(threshold)
        self.temperature = float(temperature)
        self.color = color
        self.default_prompts = list(default_prompts)
        self.register_buffer("_mean", torch.tensor(backbone.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(backbone.std).view(1, -1, 1, 1), persistent=False)

    # -- geometry ------------------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        return self.backbone.image_size[0]

    @property
    def device(self) -> torch.device:
        return next(self.seg_head.parameters()).device

    # -- encoding ------------------------------------------------------------------------------
    def normalize(self, pixels: Tensor) -> Tensor:
        """(B, S, S) grey or (B, S, S, 3) RGB in [0, 1] -> (B, 3, S, S) normalised for the tower."""
        if pixels.dim() == 3:
            pixels = pixels.unsqueeze(1).expand(-1, 3, -1, -1)
        elif pixels.dim() == 4 and pixels.shape[-1] == 3:
            pixels = pixels.permute(0, 3, 1, 2)
        else:
            raise ValueError(f"expected (B, S, S) or (B, S, S, 3) pixels, got {tuple(pixels.shape)}")
        return (pixels.to(self._mean.dtype) - self._mean) / self._std

    def encode_image(self, images: Tensor) -> ImageFeatures:
        """(B, 3, S, S) normalised images -> features for every head."""
        levels, embedding = self.backbone.encode_image_levels(images)
        levels = [x.to(self._mean.dtype) for x in levels]
        return ImageFeatures(levels, embedding.to(self._mean.dtype),
                             self.seg_head.reduce(levels, images))

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return self.backbone.encode_text(list(texts)).to(self._mean.dtype)

    def encode_prompt_ensembles(self, ensembles: Sequence[Sequence[str]]) -> Tensor:
        """One embedding per prompt: the renormalised mean of its ensemble's text embeddings."""
        flat = [t for e in ensembles for t in e]
        emb = self.encode_text(flat)
        out, start = [], 0
        for e in ensembles:
            out.append(ZeroShotClassifier.class_embeddings([emb[start:start + len(e)]])[0])
            start += len(e)
        return torch.stack(out)

    # -- heads ---------------------------------------------------------------------------------
    def segment_logits(self, features: ImageFeatures, text: Tensor) -> Tensor:
        """(B frames, P prompts) -> (B, P, S, S) logits."""
        return self.seg_head.decode(features.reduced, text.to(features.embedding.dtype))

    def classify_logits(self, features: ImageFeatures, mask: Tensor | None = None) -> Tensor:
        if self.cls_head is None:
            raise ValueError(f"model {self.name} has no trained classification head")
        return self.cls_head(features.levels, features.embedding, mask)

    def classify_probabilities(self, features: ImageFeatures, mask: Tensor | None = None) -> Tensor:
        """Calibrated class probabilities (B, K) from the trained head."""
        return torch.softmax(self.classify_logits(features, mask) / self.temperature, dim=-1)

    def zero_shot_probabilities(self, features: ImageFeatures,
                                class_prompts: Mapping[str, Sequence[str]] | None = None) -> Tensor:
        prompts = class_prompts or self.class_prompts
        embeddings = [self.encode_text(prompts[c]) for c in self.class_names]
        return self.zero_shot(features.embedding, embeddings)

    # -- checkpoint ----------------------------------------------------------------------------
    def state_parts(self) -> dict[str, dict[str, Tensor]]:
        return _state_parts(self.backbone, self.seg_head, self.cls_head,
                            bool(self.backbone_spec.get("bundled")))

    def manifest(self, *, description: str = "", provenance: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, Any] | None = None,
                 prompt_bank: str | Mapping[str, Any] | None = None) -> dict[str, Any]:
        adapter = self.backbone.adapter_config or AdapterConfig(kind="none")
        heads: dict[str, Any] = {"segmentation": self.seg_head.config.to_dict()}
        if self.cls_head is not None:
            heads["classification"] = self.cls_head.config.to_dict()
        prompts: dict[str, Any] = {"default": self.default_prompts, "classes": self.class_prompts}
        if prompt_bank is not None:
            prompts["bank"] = prompt_bank
        return {
            "name": self.name,
            "description": description,
            "backbone": {**self.backbone_spec, "level_indices": list(self.backbone.level_indices)},
            "adapter": {"type": adapter.kind, **adapter.to_dict()},
            "heads": heads,
            "preprocessing": {"input_size": self.input_size, "mean": list(self.backbone.mean),
                              "std": list(self.backbone.std), "color": self.color},
            "prompts": prompts,
            "class_names": self.class_names,
            "thresholds": {"segmentation": self.threshold},
            "temperature": self.temperature,
            "provenance": {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                           "software": software_versions(), **dict(provenance or {})},
            "metrics": dict(metrics or {}),
        }

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False,
             **manifest_fields: Any) -> Path:
        return save_checkpoint(directory, self.state_parts(), self.manifest(**manifest_fields),
                               overwrite=overwrite)

    def parameter_report(self) -> dict[str, int]:
        return trainable_parameters(self)


def _backbone_state(backbone: Backbone) -> dict[str, Tensor]:
    state = backbone.model.state_dict()
    hf_text = bool(backbone.model_cfg.get("text_cfg", {}).get("hf_model_name"))
    return {k: v for k, v in state.items() if not is_adapter_parameter(k)
            and not (hf_text and k.startswith(_HF_TEXT_PREFIX))}


def _state_parts(backbone: Backbone, seg_head: nn.Module, cls_head: nn.Module | None,
                 bundled: bool) -> dict[str, dict[str, Tensor]]:
    """What model.safetensors holds: adapters, heads and (when bundled) the backbone."""
    parts: dict[str, dict[str, Tensor]] = {
        "adapters": {k: v for k, v in backbone.model.state_dict().items() if is_adapter_parameter(k)},
        "heads.segmentation": seg_head.state_dict(),
    }
    if cls_head is not None:
        parts["heads.classification"] = cls_head.state_dict()
    if bundled:
        parts["backbone"] = _backbone_state(backbone)
    return parts


def software_versions() -> dict[str, str]:
    import open_clip

    return {"usvlm": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "python": platform.python_version()}


@functools.lru_cache(maxsize=16)
def _sha256_memo(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def weights_sha256(path: Path) -> str:
    """sha256 of a (possibly large) weights file, computed once per file version and process."""
    st = path.stat()
    return _sha256_memo(str(path), st.st_size, st.st_mtime_ns)


def _backbone_spec(backbone: Backbone, source: str | Mapping[str, Any], pretrained: str | None,
                   bundle: bool | None) -> dict[str, Any]:
    external = backbone.weights_path is not None
    bundled = (not external) if bundle is None else bundle
    spec: dict[str, Any] = {"id": source if isinstance(source, str) else "config",
                            "config": backbone.model_cfg, "bundled": bundled,
                            "weights_sha256": weights_sha256(backbone.weights_path) if external else None}
    if pretrained:
        spec["pretrained"] = str(pretrained)
    if backbone.text_weights_path is not None:  # e.g. MiniLM, resolved from its package
        spec["text_weights_sha256"] = weights_sha256(backbone.text_weights_path)
    return spec


def _verify_sha256(path: Path | None, expected: str | None, what: str) -> None:
    if expected and path is not None and weights_sha256(path) != expected:
        raise CheckpointError(path, f"{what} differ from those the model was trained with "
                                    "(sha256 mismatch)")


def build_model(backbone: str | Mapping[str, Any] | Backbone, *, pretrained: str | None = None,
                adapter: AdapterConfig | None = None, seg_width: int | None = None,
                classification: bool = True, cls_hidden: int = 0, decoder: str = "bilinear",
                output_stride: int = 4, detail_channels: int = 32,
                level_indices: Sequence[int] | None = None, bundle_backbone: bool | None = None,
                name: str = "usvlm", **model_kwargs: Any) -> USVLMModel:
    """A fresh model: backbone (random or pretrained) + adapters + untrained heads.

    `backbone` may be a built `Backbone` (e.g. after contrastive pretraining); `pretrained` is then
    only recorded.

    `bundle_backbone`: store the backbone weights in the checkpoint (default: only when they
    cannot be resolved elsewhere, i.e. random or trained from scratch).
    """
    if isinstance(backbone, Backbone):
        bb, source = backbone, backbone.name
    else:
        bb, source = build_backbone(backbone, pretrained, level_indices=level_indices), backbone
    spec = _backbone_spec(bb, source, pretrained, bundle_backbone)
    if has_adapters(bb):  # a backbone whose adapters were already trained (stage 1) keeps them
        if adapter is not None and adapter != bb.adapter_config:
            raise ValueError("this backbone already carries adapters; pass adapter=None")
        bb.freeze()
    else:
        inject_adapters(bb, adapter or AdapterConfig(kind="none"))
    channels = [bb.width] * len(bb.level_indices)
    width = seg_width or (512 if bb.width >= 512 else max(32, bb.width))
    seg = TextConditionedSegHead.from_config(SegHeadConfig(
        channels, bb.embed_dim, width=width, out_size=bb.image_size[0], decoder=decoder,
        patch_size=bb.patch_size[0], output_stride=min(output_stride, bb.patch_size[0]),
        detail_channels=detail_channels))
    class_names = model_kwargs.pop("class_names", DEFAULT_CLASS_NAMES)
    cls = ClassificationHead.from_config(ClsHeadConfig(channels, len(class_names),
                                                       embed_dim=bb.embed_dim, hidden=cls_hidden)) \
        if classification else None
    return USVLMModel(bb, seg, cls, name=name, backbone_spec=spec, class_names=class_names,
                      **model_kwargs)


def _build_parts(manifest: Mapping[str, Any], allow_download: bool, structure_only: bool = False,
                 ) -> tuple[Backbone, TextConditionedSegHead, ClassificationHead | None]:
    """Backbone (with adapters) and heads as the manifest describes them; on the meta device
    (nothing allocated, no weights read) with `structure_only`."""
    spec = dict(manifest["backbone"])
    levels = spec.get("level_indices")
    if spec.get("bundled"):
        bb = build_backbone(spec["config"], level_indices=levels, allow_download=allow_download,
                            structure_only=structure_only)
    else:
        bb = build_backbone(spec["id"], spec.get("pretrained"), level_indices=levels,
                            allow_download=allow_download, structure_only=structure_only)
        if bb.weights_path is None:  # random weights each load: a stranger's size, nothing saved
            raise ValueError(f"backbone {spec['id']!r} is neither bundled nor given weights")
        _verify_sha256(bb.weights_path, spec.get("weights_sha256"), f"backbone weights of {spec['id']}")
    _verify_sha256(bb.text_weights_path, spec.get("text_weights_sha256"), "text encoder weights")
    adapter = dict(manifest["adapter"])
    adapter.pop("type", None)
    heads = manifest["heads"]
    with torch.device("meta") if structure_only else contextlib.nullcontext():
        inject_adapters(bb, AdapterConfig.from_dict(adapter))
        seg = TextConditionedSegHead.from_config(SegHeadConfig.from_dict(heads["segmentation"]))
        cls = ClassificationHead.from_config(ClsHeadConfig.from_dict(heads["classification"])) \
            if "classification" in heads else None
    return bb, seg, cls


def _rebuild(manifest: Mapping[str, Any], allow_download: bool = False) -> USVLMModel:
    bb, seg, cls = _build_parts(manifest, allow_download)
    prompts = manifest.get("prompts", {})
    return USVLMModel(bb, seg, cls, name=manifest["name"], backbone_spec=manifest["backbone"],
                      class_names=manifest.get("class_names", DEFAULT_CLASS_NAMES),
                      class_prompts=prompts.get("classes"),
                      threshold=manifest["thresholds"].get("segmentation", 0.5),
                      temperature=manifest.get("temperature", 1.0),
                      color=manifest["preprocessing"]["color"],
                      default_prompts=prompts.get("default", ()))


# A parameter read from a weights file takes at least 2 bytes there (fp16 / bf16).
_MIN_BYTES_PER_PARAMETER = 2
_SIZE_SLACK_BYTES = 1 << 20


def _check_sizes(checkpoint: Checkpoint, allow_download: bool) -> None:
    """Every size in the manifest, bounded by the weights before anything is allocated.

    The model is first built on the meta device. The parts stored in model.safetensors must then
    have exactly the header's shapes; the parts loaded from elsewhere (a backbone that is not
    bundled, a Hugging Face text encoder) must not hold more parameters than their weights files
    can. So an absurd width or depth is refused at the cost of the file's real size.
    """
    bb, seg, cls = _build_parts(checkpoint.manifest, allow_download, structure_only=True)
    bundled = bool(checkpoint.manifest["backbone"].get("bundled"))
    stored = _state_parts(bb, seg, cls, bundled)
    check_shapes(checkpoint.weights, checkpoint.shapes, shapes_of(stored))
    in_file = {k for k in shapes_of({"backbone": stored.get("backbone", {}),
                                     "adapters": stored["adapters"]})}
    outside = sum(t.numel() for k, t in bb.model.state_dict().items()
                  if f"backbone.{k}" not in in_file and f"adapters.{k}" not in in_file)
    files = {p for p in (None if bundled else bb.weights_path, bb.text_weights_path) if p is not None}
    available = sum(p.stat().st_size for p in files)
    if outside * _MIN_BYTES_PER_PARAMETER > available + _SIZE_SLACK_BYTES:
        raise CheckpointError(checkpoint.manifest_path,
                              f"describes a backbone of {outside} parameters outside "
                              f"{checkpoint.weights.name}, more than its weights files "
                              f"({available} bytes) hold; refusing to build it")


def load_model(directory: str | os.PathLike[str], device: str | torch.device = "cpu", *,
               allow_download: bool = False) -> USVLMModel:
    """Load a model directory: files and manifest checked, sizes bounded by the weights,
    architecture rebuilt, weights loaded.

    `allow_download`: let a hub id named by the manifest be fetched when it is not on this
    machine. Off unless asked for: a model folder names what it needs, it does not fetch it.
    """
    checkpoint = open_checkpoint(directory)
    manifest, manifest_path = checkpoint.manifest, checkpoint.manifest_path
    try:
        _check_sizes(checkpoint, allow_download)
        model = _rebuild(manifest, allow_download)
    except ModelNotFoundError as exc:  # e.g. a hub id, with downloads off
        raise CheckpointError(manifest_path, f"names files that are not on this machine: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, NotImplementedError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        what = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise CheckpointError(manifest_path, f"describes a model this USVLM cannot build: {what}") from None
    expected = shapes_of(model.state_parts())
    if not manifest["backbone"].get("bundled"):
        expected = {k: v for k, v in expected.items() if not k.startswith("backbone.")}
    _load_parts(model, checkpoint.parts(expected), manifest_path)
    model.eval()
    return model.to(device)


def _load_parts(model: USVLMModel, parts: Mapping[str, Mapping[str, Tensor]], source: Path) -> None:
    clip = model.backbone.model
    if "backbone" in parts:
        result = clip.load_state_dict(dict(parts["backbone"]), strict=False)
        missing = [k for k in result.missing_keys
                   if not is_adapter_parameter(k) and not k.startswith(_HF_TEXT_PREFIX)]
        if missing or result.unexpected_keys:
            raise CheckpointError(source, f"backbone weights do not fit: missing {missing[:3]}, "
                                          f"unexpected {list(result.unexpected_keys)[:3]}")
    adapters = dict(parts.get("adapters", {}))
    if adapters:
        result = clip.load_state_dict(adapters, strict=False)
        if result.unexpected_keys:
            raise CheckpointError(source, f"adapter weights do not fit: {list(result.unexpected_keys)[:3]}")
    model.seg_head.load_state_dict(dict(parts["heads.segmentation"]))
    if model.cls_head is not None:
        model.cls_head.load_state_dict(dict(parts["heads.classification"]))

"""The inference engine: `Segmenter` runs a USVLM model on ultrasound images, fast enough to
contour interactively.

Work is split so that what the user changes most often costs least:
- the image encoder runs once per image (features cached by pixel content, LRU, bounded bytes);
- each prompt's text embedding is computed once (cached by prompt string);
- a new prompt on a cached image only runs the segmentation head's decoder;
- a threshold, click or minimum-size change only re-runs post-processing (`refine`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from usvlm.errors import InputError, USVLMError
from usvlm.io.image import USImage
from usvlm.model.vlm import ImageFeatures, USVLMModel, load_model
from usvlm.postprocess import PostprocessOptions, postprocess
from usvlm.preprocess import PreparedImage, prepare
from usvlm.text.prompt import ResolvedPrompt

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # (done, total, stage)


class Cancelled(USVLMError):
    """The user cancelled; nothing was produced."""

    def __init__(self) -> None:
        super().__init__("cancelled by the user; no output was written")


class CancelToken:
    """Set from any thread (a Cancel button); checked between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()


def choose_device(device: str | torch.device = "auto") -> torch.device:
    """CUDA when present, then Apple MPS, else the CPU; a device that is not here is a one-line
    error (the Slicer module and scripts pass any text, not only the command line's choices)."""
    if str(device) != "auto":
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise USVLMError(f"unknown device {str(device)[:40]!r}; use auto, cpu, cuda, cuda:N "
                             "or mps") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise USVLMError(f"device {device} asked for, but CUDA is not available on this machine")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise USVLMError(f"device {device} asked for, but this machine has "
                                 f"{torch.cuda.device_count()} CUDA device(s)")
        elif dev.type == "mps":
            if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
                raise USVLMError(f"device {device} asked for, but Apple MPS is not available here")
        elif dev.type != "cpu":
            raise USVLMError(f"device {device} cannot run USVLM; use auto, cpu, cuda, cuda:N or mps")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class PromptResult:
    """One prompt's result on one image, on the input pixel grid."""

    prompt: ResolvedPrompt
    probability: np.ndarray  # float32 (H, W) or (T, H, W)
    mask: np.ndarray  # bool, same shape
    options: PostprocessOptions

    @property
    def score(self) -> float:
        """Mean probability inside the mask (0 for an empty mask): the model's confidence."""
        return float(self.probability[self.mask].mean()) if self.mask.any() else 0.0


@dataclass
class SegmentationOutput:
    image: USImage
    frames: list[int]  # which frames of the image were segmented
    results: list[PromptResult]
    field_of_view: np.ndarray  # (H, W) bool
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class _CachedImage:
    prepared: PreparedImage
    features: ImageFeatures
    timings_ms: dict[str, float] = field(default_factory=dict)  # of the run that encoded it

    def nbytes(self) -> int:
        return self.features.nbytes() + self.prepared.pixels.nbytes


def image_key(image: USImage, frames: Sequence[int]) -> str:
    """Content hash: the same pixels give the same key whatever object holds them."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((image.pixels.shape, str(image.pixels.dtype), image.is_rgb, tuple(frames))).encode())
    h.update(np.ascontiguousarray(image.pixels).data)
    return h.hexdigest()


def select_frames(image: USImage, frames: str | int | Sequence[int] | None) -> list[int]:
    """'all' / None -> every frame; an int or a list -> those (0-based), checked."""
    if frames is None or frames == "all":
        return list(range(image.frames))
    chosen = [frames] if isinstance(frames, int) else list(frames)
    bad = [f for f in chosen if not 0 <= int(f) < image.frames]
    if bad or not chosen:
        raise InputError(image.info.path, f"frame(s) {bad or chosen} out of range: the image has "
                                          f"{image.frames} frame(s), numbered from 0")
    return [int(f) for f in chosen]


def _subset(image: USImage, frames: list[int]) -> USImage:
    if not image.is_cine:
        return image
    if frames == list(range(image.frames)):
        return image
    pixels = image.pixels[frames]
    return replace(image, pixels=pixels if len(frames) > 1 else pixels[0], is_cine=len(frames) > 1)


class Segmenter:
    """Text-prompted segmentation and classification with one loaded model.

    Not thread-safe by itself: drive it from one worker thread (the Slicer module does).
    """

    def __init__(self, model: USVLMModel | str | os.PathLike[str], device: str | torch.device = "auto",
                 *, batch_size: int = 8, image_cache_mb: float = 512, text_cache_size: int = 256,
                 precision: str = "auto", threads: int | None = None, organ: str | None = None,
                 resolver: Callable[[str], ResolvedPrompt] | None = None) -> None:
        self.device = choose_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
        self.model = model if isinstance(model, USVLMModel) else load_model(Path(model))
        self.model.eval().to(self.device)
        self.batch_size = max(1, int(batch_size))
        self.precision = self._precision(precision)
        if resolver is None:
            # Prompt banks: exact names and synonyms give the segment its name, colour, terminology
            # and a prompt ensemble; other text is embedded as typed.
            from usvlm.text.banks import default_banks
            from usvlm.text.resolve import PromptResolver

            resolver = PromptResolver(default_banks(), organ=organ)
        self.resolver = resolver
        self._images: OrderedDict[str, _CachedImage] = OrderedDict()
        self._image_cache_bytes = int(image_cache_mb * 1024**2)
        self._texts: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._text_cache_size = text_cache_size

    # -- configuration -------------------------------------------------------------------------
    def _precision(self, precision: str) -> torch.dtype | None:
        """Autocast dtype on GPU (bf16 where supported, else fp16); CPU runs fp32."""
        if precision == "fp32" or self.device.type != "cuda":
            return None
        if precision in ("auto", "bf16") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def _autocast(self):  # noqa: ANN202
        if self.precision is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.precision)

    # -- caches --------------------------------------------------------------------------------
    def clear_cache(self) -> None:
        self._images.clear()
        self._texts.clear()

    @property
    def cached_images(self) -> int:
        return len(self._images)

    def _remember_image(self, key: str, entry: _CachedImage) -> None:
        self._images[key] = entry
        self._images.move_to_end(key)
        total = sum(e.nbytes() for e in self._images.values())
        while total > self._image_cache_bytes and len(self._images) > 1:
            _, old = self._images.popitem(last=False)
            total -= old.nbytes()

    # -- encoders ------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_image(self, image: USImage, frames: str | int | Sequence[int] | None = None, *,
                     progress: Progress | None = None, cancel: CancelToken | None = None,
                     key: str | None = None) -> _CachedImage:
        """Prepare and encode the chosen frames (cached by content); frames run in batches."""
        chosen = select_frames(image, frames)
        key = key or image_key(image, chosen)
        if key in self._images:
            self._images.move_to_end(key)
            return self._images[key]
        self._check_size(image)
        t0 = time.perf_counter()
        prepared = prepare(_subset(image, chosen), self.model.input_size,
                           keep_rgb=self.model.color == "rgb")
        prepare_ms, encoder_ms = (time.perf_counter() - t0) * 1e3, 0.0
        pixels = torch.from_numpy(prepared.pixels)
        parts = []
        total = pixels.shape[0]
        for start in range(0, total, self.batch_size):
            if cancel is not None:
                cancel.check()
            batch = self.model.normalize(pixels[start:start + self.batch_size].to(self.device))
            t1 = time.perf_counter()
            with self._autocast():
                feats = self.model.encode_image(batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            encoder_ms += (time.perf_counter() - t1) * 1e3
            parts.append(ImageFeatures([x.float() for x in feats.levels], feats.embedding.float(),
                                       [x.float() for x in feats.reduced]))
            if progress is not None:
                progress(min(start + self.batch_size, total), total, "encoding image")
        entry = _CachedImage(prepared, ImageFeatures.cat(parts) if len(parts) > 1 else parts[0],
                             {"prepare_ms": prepare_ms, "encoder_ms": encoder_ms})
        self._remember_image(key, entry)
        return entry

    def _check_size(self, image: USImage) -> None:
        patch = self.model.backbone.patch_size[0]
        if min(image.frame_shape) < patch:
            raise InputError(image.info.path, f"image of {image.columns} x {image.rows} pixels is "
                                              f"smaller than one model patch ({patch} px)")

    @torch.inference_mode()
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[list[ResolvedPrompt], torch.Tensor]:
        """Resolve prompts (bank names, synonyms) and embed their ensembles (cached per prompt)."""
        resolved = [self.resolver(p) for p in prompts]
        missing = [r for r in resolved if r.key not in self._texts]
        if missing:
            with self._autocast():
                emb = self.model.encode_prompt_ensembles([r.ensemble for r in missing]).float()
            for r, e in zip(missing, emb):
                self._texts[r.key] = e
        for r in resolved:
            self._texts.move_to_end(r.key)
        while len(self._texts) > self._text_cache_size:
            self._texts.popitem(last=False)
        return resolved, torch.stack([self._texts[r.key] for r in resolved])

    # -- segmentation --------------------------------------------------------------------------
    @torch.inference_mode()
    def probability_maps(self, cached: _CachedImage, text: torch.Tensor, *,
                         cancel: CancelToken | None = None) -> np.ndarray:
        """(P prompts) -> (P, T, H, W) probabilities on the input grid, zero outside the FOV."""
        feats, prepared = cached.features, cached.prepared
        total = feats.embedding.shape[0]
        maps = []
        for start in range(0, total, self.batch_size):
            if cancel is not None:
                cancel.check()
            sub = feats.select(slice(start, start + self.batch_size))
            with self._autocast():
                logits = self.model.segment_logits(sub, text)
            prob = torch.sigmoid(logits.float()).cpu().numpy()  # (B, P, S, S)
            b, p = prob.shape[:2]
            back = prepared.to_image(prob.reshape(b * p, *prob.shape[2:]))
            maps.append(back.reshape(b, p, *back.shape[1:]))
        return np.concatenate(maps).transpose(1, 0, 2, 3).astype(np.float32)

    def segment(self, image: USImage, prompts: str | Sequence[str], *, threshold: float | None = None,
                frames: str | int | Sequence[int] | None = None,
                options: PostprocessOptions | None = None, progress: Progress | None = None,
                cancel: CancelToken | None = None) -> SegmentationOutput:
        """Contour each prompt on the chosen frames; one `PromptResult` per prompt, in order."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise InputError(None, "no prompt given: say what to contour")
        t0 = time.perf_counter()
        chosen = select_frames(image, frames)
        resolved, text = self.encode_prompts(prompts)
        t1 = time.perf_counter()
        key = image_key(image, chosen)
        fresh = key not in self._images
        cached = self.encode_image(image, chosen, progress=progress, cancel=cancel, key=key)
        t2 = time.perf_counter()
        maps = self.probability_maps(cached, text.to(self.device), cancel=cancel)
        t3 = time.perf_counter()
        if options is None:
            options = PostprocessOptions(threshold=self.model.threshold if threshold is None else threshold)
        elif threshold is not None:
            options = replace(options, threshold=threshold)
        spacing = (image.geometry.spacing_x, image.geometry.spacing_y)
        fov = cached.prepared.fov.mask
        results = []
        for r, prob in zip(resolved, maps):
            prob = prob if image.is_cine and len(chosen) > 1 else prob[0]
            results.append(PromptResult(r, prob, postprocess(prob, options, spacing, fov), options))
        t4 = time.perf_counter()
        if progress is not None:
            progress(1, 1, "done")
        timings = {"text_ms": (t1 - t0) * 1e3, "image_ms": (t2 - t1) * 1e3, "head_ms": (t3 - t2) * 1e3,
                   "postprocess_ms": (t4 - t3) * 1e3, "total_ms": (t4 - t0) * 1e3}
        if fresh:  # the split of image_ms: preprocessing vs the encoder itself
            timings.update(cached.timings_ms)
        return SegmentationOutput(image, chosen, results, fov, timings)

    @staticmethod
    def refine(result: PromptResult, output: SegmentationOutput,
               options: PostprocessOptions) -> PromptResult:
        """New threshold / click / size limits on a cached probability map: no model run."""
        image = output.image
        spacing = (image.geometry.spacing_x, image.geometry.spacing_y)
        mask = postprocess(result.probability, options, spacing, output.field_of_view)
        return PromptResult(result.prompt, result.probability, mask, options)

    # -- classification ------------------------------------------------------------------------
    @torch.inference_mode()
    def classify(self, image: USImage, mask: np.ndarray | None = None, *, zero_shot: bool = False,
                 frame: int = 0) -> dict[str, float]:
        """Class probabilities (benign / malignant) of one frame, from the trained head (pooled
        inside `mask` when given) or zero-shot against the class prompt ensembles."""
        cached = self.encode_image(image, [frame] if image.is_cine else None)
        feats = cached.features.select(slice(0, 1))
        if zero_shot or self.model.cls_head is None:
            probs = self.model.zero_shot_probabilities(feats)
        else:
            model_mask = None
            if mask is not None:
                m = np.asarray(mask, dtype=np.float32)
                m = m[frame] if m.ndim == 3 else m
                if m.shape != image.frame_shape:
                    raise InputError(image.info.path, f"the mask of shape {m.shape} does not match "
                                                      f"the image's {image.frame_shape}")
                model_mask = torch.from_numpy(
                    cached.prepared.transform.forward(m, "nearest")).to(self.device)[None]
            probs = self.model.classify_probabilities(feats, model_mask)
        return {name: float(p) for name, p in zip(self.model.class_names, probs[0].tolist())}

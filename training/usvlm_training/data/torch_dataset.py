"""torch data sets over `Sample`s, with the inference engine's own preprocessing.

Images go through `usvlm.preprocess.prepare` (field of view, overlay suppression, letterbox), the
very function the engine calls, so the model trains on what it will see; masks follow with the
same letterbox transform. Random choices (prompt, augmentation) come from (seed, epoch, index):
the same item is the same in any DataLoader worker and any DDP rank; `set_epoch` varies them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from usvlm.errors import InputError
from usvlm.preprocess import PreparedImage, prepare

from .augment import AugmentConfig, augment_image
from .prompts import KNOWN_GROUPS, Kind, Prompt, PromptSampler, target_indices
from .samples import Sample, combined_label


def prepare_sample(sample: Sample, size: int, *, with_masks: bool = True
                   ) -> tuple[PreparedImage, np.ndarray, np.ndarray]:
    """The model input of a sample: the prepared image, its structures' masks (N, S, S) bool in
    model space (none unless `with_masks`) and the support (S, S) bool (field of view, without
    the letterbox padding)."""
    image = sample.load_image()
    if image.is_cine:
        raise InputError(sample.image_path, f"image has {image.frames} frames; training takes 2D images")
    prepared = prepare(image, size)
    masks = sample.load_masks() if with_masks else []
    for structure, mask in zip(sample.structures, masks):
        if mask.shape != image.frame_shape:
            raise InputError(structure.mask_path or sample.image_path,
                             f"mask of {mask.shape[1]} x {mask.shape[0]} pixels on an image of "
                             f"{image.columns} x {image.rows} pixels")
    forward = prepared.transform.forward
    stack = np.stack(masks).astype(np.float32) if masks else np.zeros((0, *image.frame_shape), np.float32)
    # bilinear (antialiased) then 0.5: the area-faithful way to shrink a binary mask
    model_masks = forward(stack) >= 0.5 if len(stack) else np.zeros((0, size, size), bool)
    support = forward(prepared.fov.mask.astype(np.float32)) >= 0.5
    return prepared, model_masks, support


def _spacing(sample: Sample) -> torch.Tensor:
    return torch.tensor(sample.spacing_mm if sample.spacing_mm else (math.nan, math.nan), dtype=torch.float32)


class _Base(Dataset):
    def __init__(self, samples: Sequence[Sample], image_size: int, train: bool, seed: int,
                 prompts: PromptSampler | None, augment_config: AugmentConfig | None) -> None:
        if not samples:
            raise InputError(None, "no samples: the data set or split is empty")
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.prompts = prompts or PromptSampler()
        self.augment_config = augment_config or AugmentConfig()
        self.epoch = 0

    # Prepared images (field of view, overlay fill, letterbox) do not change between epochs:
    # keep them when they fit, so epochs after the first skip the preprocessing.
    CACHE_LIMIT_BYTES = 2 * 1024**3

    def _prepared(self, sample: Sample, with_masks: bool = True) -> tuple[PreparedImage, np.ndarray, np.ndarray]:
        per_item = self.image_size**2 * 4 * 2
        if len(self.samples) * per_item > self.CACHE_LIMIT_BYTES:
            return prepare_sample(sample, self.image_size, with_masks=with_masks)
        cache = self.__dict__.setdefault("_cache", {})
        key = (sample.id, with_masks)
        if key not in cache:
            cache[key] = prepare_sample(sample, self.image_size, with_masks=with_masks)
        return cache[key]

    def set_epoch(self, epoch: int) -> None:
        """New prompts and augmentations each epoch (call it as for a DistributedSampler)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch if self.train else 0, index])

    def _augment(self, pixels: np.ndarray, masks: np.ndarray, support: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if not self.train:
            return pixels, masks
        out = augment_image(pixels, masks, seed=rng, config=self.augment_config, support=support)
        return out.image, out.masks


class SegmentationDataset(_Base):
    """Items (image, prompt, target mask, label), one per (image, structure class).

    Training draws the prompt from one structure of the class (class name, synonym, bank,
    finding or description) and the target is the union of the structures the prompt refers to;
    evaluation (train=False) prompts with the class name, canonical and fixed, and no augmentation.
    negatives: an image without structures that names classes known absent (`Sample.absent`, a
    normal breast image: "breast mass") gives one item more, its first such class with an empty
    target, so validation sees whether the model answers "nothing there" (off by default).
    Item: image (1, S, S) float in [0, 1], mask (1, S, S) float {0, 1}, prompt str, label int
    (0 benign, 1 malignant, -1 unknown), spacing (2,) mm (row, column; NaN if unknown), id str,
    class_name str, prompt_kind str, absent bool (the target is empty by design).
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, train: bool, seed: int = 0, *,
                 prompts: PromptSampler | None = None, augment_config: AugmentConfig | None = None,
                 bank_prompts: Mapping[str, Sequence[str]] | None = None, negatives: bool = False) -> None:
        super().__init__(samples, image_size, train, seed,
                         prompts or PromptSampler(bank_prompts=bank_prompts), augment_config)
        self.items = [(i, c) for i, s in enumerate(self.samples) for c in s.classes]
        if negatives:
            self.items += [(i, s.absent[0]) for i, s in enumerate(self.samples)
                           if not s.structures and s.absent]

    def __len__(self) -> int:
        return len(self.items)

    def item_info(self, index: int) -> tuple[Sample, str]:
        """The sample and structure class of item `index`."""
        i, class_name = self.items[index]
        return self.samples[i], class_name

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample, class_name = self.item_info(index)
        rng = self._rng(index)
        structures = sample.structures
        absent = class_name not in sample.classes
        if absent:  # a negative item: a class the image is known not to hold
            prompt = self.prompts.sample_absent(class_name, rng) if self.train else \
                Prompt(class_name, "class", class_name)
        elif self.train:
            prompt = self.prompts.sample_for_class(structures, class_name, rng)
        else:
            prompt = PromptSampler.canonical(next(s for s in structures if s.class_name == class_name))
        targets = target_indices(prompt, structures)
        prepared, masks, support = self._prepared(sample)
        size = self.image_size
        target = masks[targets].any(axis=0, keepdims=True) if targets else np.zeros((1, size, size), bool)
        image, target = self._augment(prepared.pixels[:1], target, support, rng)
        return {"image": torch.as_tensor(np.asarray(image, np.float32)),
                "mask": torch.as_tensor(np.asarray(target, np.float32)),
                "prompt": prompt.text, "label": combined_label([structures[k] for k in targets]),
                "spacing": _spacing(sample), "id": sample.id, "class_name": class_name,
                "prompt_kind": prompt.kind, "absent": absent}


# Share of a grouped class's prompts that name the group instead ("breast mass" for a benign mass).
GROUP_RATE = 0.25


class MultiPromptDataset(_Base):
    """Training items with several prompts per image: (image, P prompts, P target masks, label).

    The image encoder, the costly part of a step, runs once for P prompts. The prompts name
    every class the image holds (up to P, in random order), and the remaining slots name classes
    it does not hold, with empty targets: the model must learn to answer "not here", which is
    what makes a prompt select its structure rather than any lesion. A class that belongs to a
    group (benign and malignant mass: "breast mass") is now and then prompted by the group's
    texts instead, with every structure of the group as the target.
    Item: image (1, S, S), mask (P, S, S), prompt list of P str, label int (of the first prompt,
    a present class unless the image holds none: -1), spacing, id, class_name (the first prompt's;
    a group prompt gives the group's name), absent (P,) bool.

    Which classes an image lacks: for a sample with `absent` None (phantoms: a closed world),
    every class of `class_names` it does not hold; for one with an `absent` tuple (real images:
    an open world), only those (a normal breast image: breast mass, cyst; any breast image:
    thyroid nodule, fetal head), never a class merely missing from its annotation. A class that
    names what the image holds under another name (the group "breast mass" on an image of a
    "benign mass", or the reverse) is never prompted as absent. P is capped by the most classes
    any image can be prompted with; an image with fewer gets more texts of the same classes.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, prompts_per_image: int = 3,
                 seed: int = 0, *, class_names: Sequence[str] | None = None,
                 prompts: PromptSampler | None = None, augment_config: AugmentConfig | None = None,
                 bank_prompts: Mapping[str, Sequence[str]] | None = None,
                 group_rate: float = GROUP_RATE) -> None:
        super().__init__(samples, image_size, True, seed,
                         prompts or PromptSampler(bank_prompts=bank_prompts), augment_config)
        if prompts_per_image < 1:
            raise ValueError(f"prompts_per_image must be at least 1, got {prompts_per_image}")
        if not 0.0 <= group_rate <= 1.0:
            raise ValueError(f"group_rate must be in [0, 1], got {group_rate}")
        self.group_rate = float(group_rate)
        self.class_names = sorted(set(class_names or (c for s in self.samples for c in s.classes)))
        # fixed P for every item (they are stacked); a data set of fewer classes caps it
        most = max([len(self.class_names)] + [len(s.classes) + len(s.absent) for s in self.samples
                                              if s.absent is not None])
        if most < 1:
            raise InputError(None, "no class to prompt: the samples hold no structure and name "
                                   "no absent class")
        self.prompts_per_image = min(int(prompts_per_image), most)

    def __len__(self) -> int:
        return len(self.samples)

    def _group_prompt(self, class_name: str, rng: np.random.Generator,
                      present: set[str] | None = None) -> Prompt | None:
        """Now and then (`group_rate`) the class's group prompt ("breast mass") in its place;
        for an absent class only when no class of the group is in the image."""
        group = self.prompts.group_of(class_name)
        if group is None or rng.random() >= self.group_rate:
            return None
        if present is not None and present & set(self.prompts.groups[group]):
            return None
        return self.prompts.sample_group(group, rng)

    def _overlaps(self, class_name: str, present: set[str]) -> bool:
        """Whether `class_name` names (part of) what the image holds under another name: a group
        and its classes ("breast mass" and "benign mass"), from the prompt banks or KNOWN_GROUPS."""
        groups = {**KNOWN_GROUPS, **self.prompts.groups}
        if set(groups.get(class_name, ())) & present:
            return True
        return any(name in present for name, members in groups.items() if class_name in members)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        rng = self._rng(index)
        structures = sample.structures
        present = list(sample.classes)
        rng.shuffle(present)
        chosen = [self._group_prompt(c, rng) or self.prompts.sample_for_class(structures, c, rng)
                  for c in present[:self.prompts_per_image]]
        held = set(present)
        known = self.class_names if sample.absent is None else sample.absent
        absent = [c for c in known if c not in held and not self._overlaps(c, held)]
        rng.shuffle(absent)
        chosen += [self._group_prompt(c, rng, held) or self.prompts.sample_absent(c, rng)
                   for c in absent[:self.prompts_per_image - len(chosen)]]
        while len(chosen) < self.prompts_per_image:  # fewer classes than P: other texts of them
            if absent:
                chosen.append(self.prompts.sample_absent(absent[int(rng.integers(len(absent)))], rng))
            else:
                chosen.append(self.prompts.sample_for_class(
                    structures, present[int(rng.integers(len(present)))], rng))
        prepared, masks, support = self._prepared(sample)
        size = self.image_size
        targets = [target_indices(p, structures) for p in chosen]
        stack = np.stack([masks[t].any(axis=0) if t else np.zeros((size, size), bool) for t in targets])
        image, stack = self._augment(prepared.pixels[:1], stack, support, rng)
        return {"image": torch.as_tensor(np.asarray(image, np.float32)),
                "mask": torch.as_tensor(np.asarray(stack, np.float32)),
                "prompt": [p.text for p in chosen],
                "label": combined_label([structures[k] for k in targets[0]]),
                "spacing": _spacing(sample), "id": sample.id, "class_name": chosen[0].class_name,
                "absent": torch.tensor([not t for t in targets])}


# Captions for contrastive pretraining lean on descriptions: they carry the visual attributes.
CAPTION_WEIGHTS: dict[Kind, float] = {"description": 0.7, "finding": 0.15, "class": 0.15}


class ImageTextDataset(_Base):
    """Items (image, caption) for CLIP-style pretraining, one per image. The caption is drawn
    from one structure (mostly its description); evaluation takes the first structure's
    description (or its class name). A sample with image-level `captions` (real images: "ultrasound
    of a benign breast mass", "breast ultrasound without a lesion") takes one of them instead, the
    first in evaluation. Item: image (1, S, S), text str, label int, id str."""

    def __init__(self, samples: Sequence[Sample], image_size: int, train: bool, seed: int = 0, *,
                 prompts: PromptSampler | None = None, augment_config: AugmentConfig | None = None,
                 caption_weights: Mapping[Kind, float] | None = None) -> None:
        super().__init__(samples, image_size, train, seed, prompts, augment_config)
        self.caption_weights = dict(caption_weights or CAPTION_WEIGHTS)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        rng = self._rng(index)
        if sample.captions:
            text = sample.captions[int(rng.integers(len(sample.captions)))] if self.train \
                else sample.captions[0]
        elif not sample.structures:
            raise InputError(sample.image_path, "an image without structures needs captions")
        elif self.train:
            structure = sample.structures[int(rng.integers(len(sample.structures)))]
            text = self.prompts.sample(structure, rng, self.caption_weights).text
        else:
            first = sample.structures[0]
            text = first.description or first.class_name
        prepared, masks, support = self._prepared(sample, with_masks=False)
        image, _ = self._augment(prepared.pixels[:1], masks, support, rng)
        return {"image": torch.as_tensor(np.asarray(image, np.float32)), "text": text,
                "label": sample.label, "id": sample.id}


def collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors, turn numbers into tensors, keep strings (prompts, ids) as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (bool, int, float)) and not isinstance(values[0], str):
            out[key] = torch.tensor(values)
        else:
            out[key] = list(values)
    return out

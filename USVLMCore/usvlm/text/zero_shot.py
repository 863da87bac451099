"""Zero-shot classification: an image embedding against each class's prompt ensemble.

The ensembles come from a prompt bank (the classified structure of an organ: breast mass,
thyroid nodule, lymph node, prostate lesion), either the refined descriptive prompts or, for
comparison, the bare class names (the paper's claim is that refined text helps). Any text
encoder works: `encode_text(list[str]) -> (N, D)` normalised embeddings in the image
embedding's space. The scoring itself is `ZeroShotClassifier` (mean of normalised prompt
embeddings per class, scaled cosine, softmax).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from usvlm.errors import InputError
from usvlm.model.heads.classification import DEFAULT_LOGIT_SCALE_LOG, ZeroShotClassifier
from usvlm.text.banks import BankSet, Structure, default_banks
from usvlm.text.resolve import EncodeText

MODES = ("refined", "bare")


def classified_structure(organ: str, banks: BankSet | None = None,
                         structure: str | None = None) -> Structure:
    """The structure whose classes are scored (the bank's first classified one by default)."""
    bank = (banks if banks is not None else default_banks()).for_organ(organ)
    found = bank.structure(structure) if structure else bank.classified()
    if found is None or not found.classes:
        raise InputError(None, f"the {bank.id} prompt bank has no classified structure"
                               + (f" {structure!r}" if structure else ""))
    return found


def class_ensembles(organ: str, mode: str = "refined", *, banks: BankSet | None = None,
                    structure: str | None = None) -> dict[str, list[str]]:
    """Class id -> prompts: the bank's descriptive prompts ("refined") or the name ("bare")."""
    if mode not in MODES:
        raise InputError(None, f"unknown ensemble mode {mode!r}; choose one of {', '.join(MODES)}")
    target = classified_structure(organ, banks, structure)
    return {c.id: list(c.prompts) if mode == "refined" else [c.name.lower()]
            for c in target.classes}


def encode_ensembles(ensembles: Mapping[str, Sequence[str]],
                     encode_text: EncodeText) -> list[Tensor]:
    """Each class's prompts embedded in one encoder call -> a list of (N_k, D) tensors."""
    if not ensembles or any(not prompts for prompts in ensembles.values()):
        raise InputError(None, "every class needs at least one prompt")
    texts = [p for prompts in ensembles.values() for p in prompts]
    embeddings = encode_text(texts)
    if embeddings.dim() != 2 or embeddings.shape[0] != len(texts):
        raise ValueError(f"encode_text must return a ({len(texts)}, D) tensor, got "
                         f"{tuple(embeddings.shape)}")
    return list(torch.split(embeddings, [len(p) for p in ensembles.values()]))


class ZeroShot:
    """Per-class probabilities for image embeddings; class text embeddings computed once."""

    def __init__(self, ensembles: Mapping[str, Sequence[str]], encode_text: EncodeText,
                 logit_scale_log: float = DEFAULT_LOGIT_SCALE_LOG) -> None:
        self.classes = list(ensembles)
        self.ensembles = {k: list(v) for k, v in ensembles.items()}
        self.classifier = ZeroShotClassifier(logit_scale_log)
        with torch.no_grad():
            self.class_embeddings = ZeroShotClassifier.class_embeddings(
                encode_ensembles(ensembles, encode_text))

    def probabilities(self, image_embedding: Tensor) -> Tensor:
        """(B, D) or (D,) image embeddings -> (B, K) probabilities in `self.classes` order."""
        if image_embedding.dim() == 1:
            image_embedding = image_embedding.unsqueeze(0)
        if image_embedding.shape[-1] != self.class_embeddings.shape[-1]:
            raise InputError(None, f"image embedding has {image_embedding.shape[-1]} dimensions, "
                                   f"the text embeddings {self.class_embeddings.shape[-1]}")
        with torch.no_grad():
            # (K, D) class vectors pass through class_embeddings unchanged (already unit norm).
            classes = self.class_embeddings.to(image_embedding.device)
            return self.classifier(image_embedding, classes)

    def __call__(self, image_embedding: Tensor) -> list[dict[str, float]]:
        """Per image, {class id: probability}."""
        return [dict(zip(self.classes, row.tolist()))
                for row in self.probabilities(image_embedding)]


def zero_shot_classifier(organ: str, encode_text: EncodeText, mode: str = "refined", *,
                         banks: BankSet | None = None, structure: str | None = None,
                         logit_scale_log: float = DEFAULT_LOGIT_SCALE_LOG) -> ZeroShot:
    """A `ZeroShot` for an organ's classified structure with bank ensembles of `mode`."""
    return ZeroShot(class_ensembles(organ, mode, banks=banks, structure=structure), encode_text,
                    logit_scale_log)

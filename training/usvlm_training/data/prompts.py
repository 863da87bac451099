"""Prompt texts for a structure, drawn at random so the model learns language, not one label.

A prompt refers to a set of structures in its image, and the training target is the union of
their masks:
- "class" prompts (the class name, a synonym, a prompt-bank entry for the class, in a template)
  refer to every structure of that class: "lymph node" covers all three nodes of an image;
- "finding" prompts (class qualified by malignancy: "malignant lymph node") and "description"
  prompts (the structure's attribute description) refer to the structures of that class with
  that malignancy;
- "group" prompts (a bank structure's own texts, "breast mass") refer to every structure of the
  classes it groups (benign and malignant masses).
So one image with a cyst and a mass teaches that "cyst" is the cyst and not the mass.

Real images whose structures carry no description (BUSI, HC18) get image-level captions for
stage-1 alignment from `image_captions` ("ultrasound of a benign breast mass", "breast ultrasound
without a lesion"), stored on the sample by the real layout reader.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .samples import Structure, class_from_segment_name

Kind = Literal["class", "finding", "description", "group"]

# A few synonyms per class; the full prompt banks (Resources/prompts/) come in as `bank_prompts`.
# Synonyms stay specific to their class: "lesion" or "mass" alone would name several classes.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "cyst": ("cyst", "simple cyst", "anechoic cyst", "fluid-filled cyst"),
    "benign mass": ("benign mass", "benign breast mass", "benign-appearing mass", "probably benign mass"),
    "malignant mass": ("malignant mass", "malignant breast mass", "suspicious mass", "breast cancer"),
    "lymph node": ("lymph node", "cervical lymph node", "neck lymph node", "node"),
    "thyroid nodule": ("thyroid nodule", "nodule of the thyroid", "thyroid lesion"),
    "lesion": ("lesion", "tumor", "mass", "abnormality"),
    # real data: the breast bank's "Breast mass" (BUSI) and the fetal head (HC18, no bank yet)
    "breast mass": ("breast mass", "breast lesion", "breast tumor", "breast tumour", "breast nodule",
                    "solid breast mass", "mass in the breast"),
    "fetal head": ("fetal head", "fetal skull", "foetal head", "fetal cranium", "head of the fetus",
                   "skull of the fetus"),
}

# Synonyms of findings (a class qualified by a malignancy), added to the finding prompts.
FINDING_SYNONYMS: dict[str, tuple[str, ...]] = {
    "benign breast mass": ("benign breast mass", "benign breast lesion", "benign breast tumor",
                           "benign mass in the breast", "benign mass"),
    "malignant breast mass": ("malignant breast mass", "malignant breast lesion", "malignant breast tumor",
                              "breast cancer", "breast carcinoma", "malignant mass"),
}

# Classes that are names of one structure at two levels (a group and its classes), known without
# the prompt banks: never prompted as absent when the other is present.
KNOWN_GROUPS: dict[str, tuple[str, ...]] = {"breast mass": ("benign mass", "malignant mass")}

# Templates around class names; descriptions are used as they are.
TEMPLATES: tuple[str, ...] = ("{}", "{}", "a {}", "the {}", "{} in the ultrasound image",
                              "segment the {}", "ultrasound of a {}")

DEFAULT_WEIGHTS: dict[Kind, float] = {"class": 0.5, "finding": 0.2, "description": 0.3}


@dataclass(frozen=True)
class Prompt:
    text: str
    kind: Kind
    class_name: str  # for a group prompt: the group's name
    malignancy: str | None = None
    classes: tuple[str, ...] = ()  # a group prompt's classes

    def refers_to(self, structure: Structure) -> bool:
        """Whether the structure belongs to the prompt's target."""
        if self.kind == "group":
            return structure.class_name in self.classes
        if structure.class_name != self.class_name:
            return False
        return self.kind == "class" or structure.malignancy == self.malignancy


def _key(name: str) -> str:
    """Bank lookup key: case-folded, punctuation as spaces ("Thyroid-nodule" = "thyroid nodule")."""
    return " ".join("".join(ch if ch.isalnum() else " " for ch in name.casefold()).split())


class PromptSampler:
    """Seeded prompt choice for a structure.

    bank_prompts: extra texts keyed by class name ("thyroid nodule") or finding
    ("malignant thyroid nodule"), keys matched regardless of case and punctuation;
    held_out: exact texts never produced (kept back for the paraphrase test);
    weights: how often each kind is drawn (renormalised over the kinds a structure has);
    groups: group name -> its classes (texts: the group name in templates, `bank_prompts[name]`).
    """

    def __init__(self, bank_prompts: Mapping[str, Sequence[str]] | None = None,
                 held_out: Collection[str] = (), weights: Mapping[Kind, float] | None = None,
                 templates: Sequence[str] = TEMPLATES,
                 groups: Mapping[str, Sequence[str]] | None = None) -> None:
        self.bank = {_key(k): list(v) for k, v in (bank_prompts or {}).items()}
        self.groups = {name: tuple(members) for name, members in (groups or {}).items()}
        self.held_out = {t.strip().lower() for t in held_out}
        self.weights = dict(weights or DEFAULT_WEIGHTS)
        self.templates = tuple(templates)

    @staticmethod
    def canonical(structure: Structure) -> Prompt:
        """The class name itself: the prompt evaluation uses."""
        return Prompt(structure.class_name, "class", structure.class_name)

    def class_prompts(self, class_name: str, synonyms: bool = True) -> list[str]:
        """The class-kind texts of a class (name and synonyms in templates, bank entries)."""
        names = [class_name, *(SYNONYMS.get(class_name, ()) if synonyms else ())]
        texts = [t.format(n) for n in dict.fromkeys(names) for t in self.templates]
        texts += self.bank.get(_key(class_name), [])
        return [t for t in dict.fromkeys(texts) if t.strip().lower() not in self.held_out]

    def sample_for_class(self, structures: Sequence[Structure], class_name: str,
                         rng: np.random.Generator) -> Prompt:
        """A prompt for one structure of the class in the image, the structure drawn at random
        (its finding and description then speak for it)."""
        group = [s for s in structures if s.class_name == class_name]
        return self.sample(group[int(rng.integers(len(group)))], rng)

    def group_of(self, class_name: str) -> str | None:
        """The group a class belongs to, if any."""
        return next((g for g, members in self.groups.items() if class_name in members), None)

    def sample_group(self, group: str, rng: np.random.Generator) -> Prompt:
        """A prompt naming the whole group ("breast mass"): its target is every member class."""
        options = self.class_prompts(group, synonyms=False)  # the group's name in templates, its bank texts
        return Prompt(options[int(rng.integers(len(options)))] if options else group, "group",
                      group, classes=self.groups[group])

    def sample_absent(self, class_name: str, rng: np.random.Generator) -> Prompt:
        """A class prompt for a class the image does not contain: its target is empty."""
        options = self.class_prompts(class_name) or [class_name]
        return Prompt(options[int(rng.integers(len(options)))], "class", class_name)

    def candidates(self, structure: Structure) -> dict[Kind, list[Prompt]]:
        """Every prompt the structure can be given, by kind (held-out texts removed)."""
        cls, malignancy = structure.class_name, structure.malignancy
        # the annotator's own word (before any class_map renaming) is a synonym too
        own = [class_from_segment_name(structure.name)] if structure.name else []
        texts = {"class": self.class_prompts(cls) + [t.format(n) for n in own for t in self.templates]}
        if malignancy is not None and structure.finding != cls:
            texts["finding"] = [structure.finding, *FINDING_SYNONYMS.get(structure.finding, ()),
                                *self.bank.get(_key(structure.finding), [])]
        if structure.description:
            texts["description"] = [structure.description]
        out: dict[Kind, list[Prompt]] = {}
        for kind, options in texts.items():
            keep = [t for t in dict.fromkeys(options) if t.strip().lower() not in self.held_out]
            if keep:
                qualifier = None if kind == "class" else malignancy
                out[kind] = [Prompt(t, kind, cls, qualifier) for t in keep]  # type: ignore[arg-type]
        return out

    def sample(self, structure: Structure, rng: np.random.Generator,
               weights: Mapping[Kind, float] | None = None) -> Prompt:
        """One prompt: a kind by weight, then a text of that kind uniformly."""
        options = self.candidates(structure)
        weights = weights or self.weights
        kinds = [k for k in options if weights.get(k, 0.0) > 0] or list(options)
        if not kinds:  # everything held out: fall back to the bare class name
            return self.canonical(structure)
        p = np.array([max(weights.get(k, 0.0), 0.0) for k in kinds], dtype=float)
        p = p / p.sum() if p.sum() > 0 else np.full(len(kinds), 1.0 / len(kinds))
        kind = kinds[int(rng.choice(len(kinds), p=p))]
        return options[kind][int(rng.integers(len(options[kind])))]


def target_indices(prompt: Prompt, structures: Sequence[Structure]) -> list[int]:
    """Indices of the structures the prompt refers to (their masks' union is the target)."""
    return [i for i, s in enumerate(structures) if prompt.refers_to(s)]


# -- image-level captions (stage-1 alignment of real images) -------------------------------------

# Organ key -> the word for its ultrasound examination ("breast ultrasound", "obstetric ultrasound").
ORGAN_WORDS: dict[str, str] = {"breast": "breast", "thyroid": "thyroid", "fetal head": "obstetric",
                               "neck": "neck", "prostate": "prostate"}
FINDING_CAPTIONS: tuple[str, ...] = ("ultrasound of {a}", "{a} on ultrasound",
                                     "B-mode ultrasound image of {a}", "{o} ultrasound showing {a}", "{n}")
ANATOMY_CAPTIONS: tuple[str, ...] = ("{n} ultrasound", "{o} ultrasound of the {n}")
NORMAL_CAPTIONS: tuple[str, ...] = ("{o} ultrasound without a lesion", "normal {o} ultrasound",
                                    "{o} ultrasound with no mass", "ultrasound of normal {o} tissue",
                                    "{o} tissue without a focal lesion", "{o} ultrasound with no finding")


def _article(text: str) -> str:
    return f"{'an' if text[:1].lower() in 'aeiou' else 'a'} {text}"


def image_captions(organ: str | None, structures: Sequence[Structure], *, names: int = 4) -> tuple[str, ...]:
    """Captions of an image from its organ key ("breast") and structures, the canonical first:
    "ultrasound of a benign breast mass", ..., "fetal head ultrasound", ...; an image without
    structures: "breast ultrasound without a lesion", ... `names`: how many synonyms of each
    finding the captions use."""
    word = ORGAN_WORDS.get(organ or "", organ or "")
    if not structures:
        if not word:
            return ("ultrasound without a lesion", "ultrasound image with no focal lesion")
        return tuple(dict.fromkeys(t.format(o=word) for t in NORMAL_CAPTIONS))
    texts: list[str] = []
    for structure in structures:
        finding = structure.finding
        synonyms = (FINDING_SYNONYMS.get(finding) if finding != structure.class_name
                    else SYNONYMS.get(structure.class_name)) or ()
        for n in list(dict.fromkeys([finding, *synonyms]))[:names]:
            templates = FINDING_CAPTIONS + (ANATOMY_CAPTIONS if structure.malignancy is None else ())
            texts += [t.format(a=_article(n), n=n, o=word) for t in templates
                      if word or "{o}" not in t]
    return tuple(dict.fromkeys(" ".join(t.split()) for t in texts))

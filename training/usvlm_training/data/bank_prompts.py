"""Prompt-bank texts for a data set's classes, split into training prompts and held-out paraphrases.

Each class name (and finding, "malignant lymph node") is resolved the way the engine resolves what
a user types; when it names a bank entry, that entry's prompt ensemble becomes extra training
prompts for the class. A fixed share of those texts is held out, chosen by a hash of the text (not
by position, so adding a prompt to a bank does not reshuffle the others): the model never sees
them, and the paraphrase check of `evaluate` prompts with them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from usvlm.errors import InputError

HELD_OUT_EVERY = 3  # one text in three, by hash


@dataclass(frozen=True)
class BankPrompts:
    train: dict[str, list[str]]  # key (class name or finding) -> texts the model may see
    held_out: dict[str, list[str]]  # key -> texts kept back for the paraphrase check

    def held_out_texts(self) -> list[str]:
        return [t for texts in self.held_out.values() for t in texts]


def is_held_out(text: str, every: int = HELD_OUT_EVERY) -> bool:
    """Whether `text` belongs to the held-out share (stable across runs, machines and banks)."""
    digest = hashlib.sha256(text.strip().lower().encode("utf-8")).digest()
    return every > 0 and int.from_bytes(digest[:4], "big") % every == 0


def bank_prompts(keys: Iterable[str], organs: Sequence[str | None] = (None,), *,
                 every: int = HELD_OUT_EVERY) -> BankPrompts:
    """Bank texts of each key (class name or finding) that the engine resolves to a bank entry,
    gathered over `organs` (the same name may resolve to another organ's entry, e.g. a cyst of
    the breast or of the thyroid), and split into training texts and held-out paraphrases."""
    from usvlm.text.banks import default_banks
    from usvlm.text.resolve import PromptResolver

    banks = default_banks()
    resolvers = []
    for organ in dict.fromkeys(organs):
        try:
            resolvers.append(PromptResolver(banks, organ=organ))
        except InputError:  # an organ no bank knows: its classes still resolve without it
            continue
    train: dict[str, list[str]] = {}
    held: dict[str, list[str]] = {}
    for key in dict.fromkeys(keys):
        texts: list[str] = []
        for resolver in resolvers:
            resolved = resolver(key)
            if resolved.matched_by in ("exact", "synonym"):
                texts += resolved.ensemble
        texts = [t for t in dict.fromkeys(texts) if t.strip().lower() != key.strip().lower()]
        if texts:
            train[key] = [t for t in texts if not is_held_out(t, every)]
            held[key] = [t for t in texts if is_held_out(t, every)]
    return BankPrompts(train, {k: v for k, v in held.items() if v})

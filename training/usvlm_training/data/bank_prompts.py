"""Prompt-bank texts for a data set's classes, split into training prompts and held-out paraphrases.

Each class name (and finding, "malignant lymph node") is resolved the way the engine resolves what
a user types; when it names a bank entry, that entry's prompt ensemble becomes extra training
prompts for the class. A fixed share of those texts is held out, chosen by a hash of the text (not
by position, so adding a prompt to a bank does not reshuffle the others): the model never sees
them, and the paraphrase check of `evaluate` prompts with them.

Classes that are classes of one bank structure (benign and malignant mass: the breast bank's
"mass") also form a *group*: the structure's own name, synonyms and prompts ("breast mass")
refer to every class of it, so a user who types "breast mass" gets both kinds of mass, not the one
the model happens to associate with the word.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from usvlm.errors import InputError

HELD_OUT_EVERY = 3  # one text in three, by hash


@dataclass(frozen=True)
class BankPrompts:
    train: dict[str, list[str]]  # key (class name, finding, group) -> texts the model may see
    held_out: dict[str, list[str]]  # key -> texts kept back for the paraphrase check
    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> its classes

    def held_out_texts(self) -> list[str]:
        return [t for texts in self.held_out.values() for t in texts]


def is_held_out(text: str, every: int = HELD_OUT_EVERY) -> bool:
    """Whether `text` belongs to the held-out share (stable across runs, machines and banks)."""
    digest = hashlib.sha256(text.strip().lower().encode("utf-8")).digest()
    return every > 0 and int.from_bytes(digest[:4], "big") % every == 0


def bank_prompts(keys: Iterable[str], organs: Sequence[str | None] = (None,), *,
                 classes: Iterable[str] = (), every: int = HELD_OUT_EVERY) -> BankPrompts:
    """Bank texts of each key (class name or finding) that the engine resolves to a bank entry,
    gathered over `organs` (the same name may resolve to another organ's entry, e.g. a cyst of
    the breast or of the thyroid), and split into training texts and held-out paraphrases.

    `classes`: the data set's classes; two or more that resolve to classes of one bank structure
    form a group keyed by the structure's name, with the structure's texts."""
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

    def add(key: str, texts: list[str]) -> None:
        texts = [t for t in dict.fromkeys(texts) if t.strip().lower() != key.strip().lower()]
        if texts:
            train[key] = [t for t in texts if not is_held_out(t, every)]
            held[key] = [t for t in texts if is_held_out(t, every)]

    # Each name resolved once per organ; names and synonyms only (no embedding match).
    keys, classes = list(dict.fromkeys(keys)), list(dict.fromkeys(classes))
    resolved = {name: [r for r in (resolver(name) for resolver in resolvers)
                       if r.matched_by in ("exact", "synonym")]
                for name in dict.fromkeys([*keys, *classes])}
    for key in keys:
        add(key, [t for r in resolved[key] for t in r.ensemble])
    groups = _groups({name: resolved[name] for name in classes}, banks)
    for name, (structure, _) in groups.items():
        add(name, [structure.name, *structure.synonyms, *structure.prompts])
    return BankPrompts(train, {k: v for k, v in held.items() if v},
                       {name: members for name, (_, members) in groups.items()})


def _groups(resolved: dict[str, list[Any]], banks: Any) -> dict[str, tuple[Any, list[str]]]:
    """Structure name -> (bank structure, the data set's classes that are classes of it), for
    structures holding two or more of them. `resolved`: class -> its matches, organ by organ."""
    members: dict[tuple[str, str], list[str]] = {}
    for name, matches in resolved.items():
        first = next((r.extra for r in matches if r.extra.get("class")), None)
        if first is not None:
            members.setdefault((first["bank"], first["structure"]), []).append(name)
    by_id = {bank.id: bank for bank in banks}
    out: dict[str, tuple[Any, list[str]]] = {}
    for (bank_id, structure_id), names in members.items():
        if len(names) >= 2:
            structure = by_id[bank_id].structure(structure_id)
            out[structure.name.lower()] = (structure, sorted(names))
    return out

"""Prompt resolution: what the user typed -> the bank entry to contour, and the prompts to embed.

Matching goes exact (a structure's id or name, a class name), then synonym, then embedding
similarity with the model's own text encoder. Text that matches nothing is still used: it is
embedded as typed and the result says so (`matched_by == "none"`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from usvlm.text.banks import Bank, BankSet, ClassEntry, Structure, default_banks, normalize, \
    unique_texts
from usvlm.text.prompt import MAX_PROMPT_CHARS, ResolvedPrompt, validate_prompt
from usvlm.text.prompt import resolve_prompt as fallback_prompt

MIN_SIMILARITY = 0.5  # cosine; below it an embedding match is not trusted (encoder-dependent)

# list of N texts -> (N, D) L2-normalised embeddings
EncodeText = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class _Entry:
    bank: Bank
    structure: Structure
    klass: ClassEntry | None

    def texts(self) -> tuple[str, ...]:
        """What an embedding match compares against: the structure's names and all its prompts.

        Class prompts count for the structure: a description ("spiculated lesion with shadowing")
        names what to contour, not a diagnosis; only naming a class ("breast cancer") selects it.
        """
        s = self.structure
        return (s.name, *s.synonyms, *s.prompts, *(p for c in s.classes for p in c.prompts))


def _entries(bank: Bank) -> list[_Entry]:
    return [_Entry(bank, s, k) for s in bank.structures for k in (None, *s.classes)]


def _exact_names(entry: _Entry) -> tuple[str, ...]:
    if entry.klass is not None:
        return (entry.klass.name,)
    return (entry.structure.id, entry.structure.name)


def _synonyms(entry: _Entry) -> tuple[str, ...]:
    return entry.klass.synonyms if entry.klass is not None else entry.structure.synonyms


class PromptResolver:
    """Resolves prompts against a set of banks; embeddings of bank texts are computed once.

    `resolver(text)` uses the organ given here, so a resolver plugs into
    `Segmenter(resolver=...)`. The result's `extra` holds "bank", "structure", "class" (ids,
    None where not matched) and "score" (cosine similarity of an embedding match).
    """

    def __init__(self, banks: BankSet | None = None, encode_text: EncodeText | None = None,
                 organ: str | None = None, min_similarity: float = MIN_SIMILARITY) -> None:
        self.banks = banks if banks is not None else default_banks()
        self.banks.bank_id(organ)  # an unknown organ fails now, not at the first prompt
        self.encode_text = encode_text
        self.organ = organ
        self.min_similarity = min_similarity
        self._embedded: dict[tuple[str, ...], tuple[list[_Entry], torch.Tensor, torch.Tensor]] = {}

    def __call__(self, text: str) -> ResolvedPrompt:
        return self.resolve(text)

    def resolve(self, text: str, organ: str | None = None) -> ResolvedPrompt:
        """Resolve `text` for `organ` (default: the resolver's organ)."""
        text = validate_prompt(text)
        organ = organ if organ is not None else self.organ
        key = normalize(text)
        # The organ's bank and the generic one first, then the others ("thyroid nodule" typed on
        # a breast image); exact before synonym within each group.
        near = self.banks.search_order(organ, everywhere=False)
        far = [b for b in self.banks.search_order(organ) if b not in near]
        for group in (near, far):
            for matched_by, names in (("exact", _exact_names), ("synonym", _synonyms)):
                for entry in (e for bank in group for e in _entries(bank)):
                    if key in {normalize(n) for n in names(entry)}:
                        return self._resolved(text, entry, matched_by, organ)
        if self.encode_text is not None:
            found = self._nearest(text, organ)
            if found is not None:
                return self._resolved(text, found[0], "embedding", organ, found[1])
        # As typed, flagged: the fallback resolver's colour, the organ's region.
        plain = fallback_prompt(text)
        return dataclasses.replace(
            plain, terminology=plain.terminology.with_region(self._organ_region(organ)),
            matched_by="none", extra=dict.fromkeys(("bank", "structure", "class", "score")))

    # -- Embedding similarity --------------------------------------------------------------------
    def _nearest(self, text: str, organ: str | None) -> tuple[_Entry, float] | None:
        # With an organ, only its bank and the generic one: "hypoechoic mass" on a thyroid image
        # must not become a breast mass because a breast prompt happens to be closer.
        banks = self.banks.search_order(organ, everywhere=organ is None)
        entries, owners, embeddings = self._bank_embeddings(banks)
        scores = embeddings @ self._encode([text])[0]
        # Best text per entry; ties go to the earlier entry (the organ's bank first).
        best = torch.full((len(entries),), -2.0).scatter_reduce(0, owners, scores, "amax")
        index = int(torch.argmax(best))
        score = float(best[index])
        return (entries[index], score) if score >= self.min_similarity else None

    def _bank_embeddings(self, banks: Sequence[Bank]
                         ) -> tuple[list[_Entry], torch.Tensor, torch.Tensor]:
        cache_key = tuple(b.id for b in banks)
        if cache_key not in self._embedded:
            entries = [e for b in banks for e in _entries(b) if e.klass is None]
            texts: list[str] = []
            owners: list[int] = []
            for i, entry in enumerate(entries):
                texts += entry.texts()
                owners += [i] * len(entry.texts())
            self._embedded[cache_key] = (entries, torch.tensor(owners), self._encode(texts))
        return self._embedded[cache_key]

    def _encode(self, texts: list[str]) -> torch.Tensor:
        assert self.encode_text is not None
        with torch.no_grad():
            emb = self.encode_text(texts)
        if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or emb.shape[0] != len(texts):
            raise ValueError(f"encode_text must return a ({len(texts)}, D) tensor, got "
                             f"{getattr(emb, 'shape', type(emb))}")
        return torch.nn.functional.normalize(emb.detach().float().cpu(), dim=-1)

    # -- Results ---------------------------------------------------------------------------------
    def _resolved(self, text: str, entry: _Entry, matched_by: str, organ: str | None,
                  score: float | None = None) -> ResolvedPrompt:
        s, klass = entry.structure, entry.klass
        term = s.terminology
        if term.anatomic_region is None:
            # A generic finding ("calcification") on a breast image is in the breast.
            term = term.with_region(self._organ_region(organ))
        prompts: Sequence[str] = klass.prompts if klass is not None else s.prompts
        if matched_by == "embedding":
            # Typed descriptive text carries information the bank's prompts may not.
            prompts = unique_texts((text, *prompts))
        return ResolvedPrompt(text=text, name=klass.name if klass else s.name, color=s.color,
                              terminology=term, ensemble=tuple(prompts), matched_by=matched_by,
                              extra={"bank": entry.bank.id, "structure": s.id,
                                     "class": klass.id if klass else None, "score": score})

    def _organ_region(self, organ: str | None):  # noqa: ANN202
        return self.banks.for_organ(organ).region if organ else None


def resolve_prompt(text: str, organ: str | None = None, *, banks: BankSet | None = None,
                   encode_text: EncodeText | None = None,
                   min_similarity: float = MIN_SIMILARITY) -> ResolvedPrompt:
    """One-off resolution; use a `PromptResolver` to reuse bank embeddings across prompts."""
    return PromptResolver(banks, encode_text, organ, min_similarity).resolve(text)


__all__ = ["EncodeText", "MAX_PROMPT_CHARS", "MIN_SIMILARITY", "PromptResolver", "ResolvedPrompt",
           "resolve_prompt", "validate_prompt"]

"""Prompt banks: the structures users contour on each organ, loaded from JSON files.

A bank file (schema: Resources/prompts/bank.schema.json) lists, for one organ context, the
structures with their display name, synonyms, colour, terminology (keys into
`usvlm.text.terminology` or explicit codes) and descriptive prompts; a structure that is
classified (benign / malignant) also lists a prompt ensemble per class.

Where the packaged banks are: an explicit folder (the Slicer module passes its Resources folder),
else `$USVLM_PROMPT_DIR`, else `<repo>/Resources/prompts` beside `<repo>/USVLMCore/usvlm`.
User bank files are added on top: a bank with a new id adds an organ; one with the id of a
packaged bank extends it (structures with the same id replace the packaged ones).
"""

from __future__ import annotations

import functools
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from usvlm.errors import InputError
from usvlm.io.jsonfile import read_json
from usvlm.text.terminology import DICOM_MASTER_LIST, REGIONS, RGB, TERMS, Code, Terminology

PROMPT_DIR_ENV = "USVLM_PROMPT_DIR"
SCHEMA_NAME = "bank.schema.json"
GENERIC = "generic"


def normalize(text: str) -> str:
    """Matching key of a name: case-folded, hyphens and punctuation as spaces, no leading article.

    "Taller-than-wide", "taller than wide" and "  a Taller_than wide. " all give the same key.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch if ch.isalnum() else " " for ch in text)
    words = text.split()
    if len(words) > 1 and words[0] in ("a", "an", "the"):
        words = words[1:]
    return " ".join(words)


def parse_color(hex_color: str) -> RGB:
    value = hex_color.lstrip("#")
    return tuple(int(value[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


@dataclass(frozen=True)
class ClassEntry:
    """One class of a classified structure (e.g. malignant breast mass) and its prompt ensemble."""

    id: str
    name: str
    synonyms: tuple[str, ...]
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class Structure:
    """Something users contour: names, colour, terminology and descriptive prompts."""

    id: str
    name: str
    synonyms: tuple[str, ...]
    color: RGB
    terminology: Terminology
    prompts: tuple[str, ...]
    classes: tuple[ClassEntry, ...] = ()
    bank: str = ""

    def class_entry(self, class_id: str) -> ClassEntry:
        for entry in self.classes:
            if entry.id == class_id:
                return entry
        raise KeyError(f"structure {self.id!r} has no class {class_id!r}; "
                       f"classes: {', '.join(c.id for c in self.classes) or 'none'}")


@dataclass(frozen=True)
class Bank:
    """The structures of one organ context."""

    id: str
    name: str
    organs: tuple[str, ...]
    region: Code | None
    lexicon: str
    structures: tuple[Structure, ...]
    descriptors: Mapping[str, str] = field(default_factory=dict)
    sources: tuple[Path, ...] = ()

    def structure(self, structure_id: str) -> Structure:
        for s in self.structures:
            if s.id == structure_id:
                return s
        raise KeyError(f"bank {self.id!r} has no structure {structure_id!r}; "
                       f"structures: {', '.join(s.id for s in self.structures)}")

    def classified(self) -> Structure | None:
        """The first structure with classes (what zero-shot classification is about)."""
        return next((s for s in self.structures if s.classes), None)


class BankSet:
    """All loaded banks, looked up by organ name or alias."""

    def __init__(self, banks: Iterable[Bank]) -> None:
        self.banks: dict[str, Bank] = {b.id: b for b in banks}
        self._organs: dict[str, str] = {}
        for bank in self.banks.values():
            for name in (bank.id, bank.name, *bank.organs):
                self._organs.setdefault(normalize(name), bank.id)

    def __iter__(self) -> Iterator[Bank]:
        return iter(self.banks.values())

    def __len__(self) -> int:
        return len(self.banks)

    def organs(self) -> list[str]:
        return sorted(self.banks)

    def bank_id(self, organ: str | None) -> str | None:
        """The bank id for an organ name or alias ("neck" -> "lymph_node"); None for no organ."""
        if organ is None or not organ.strip():
            return None
        key = normalize(organ)
        if key not in self._organs:
            raise InputError(None, f"unknown organ {organ!r}; known: {', '.join(self.organs())} "
                                   f"(or their aliases, e.g. neck)")
        return self._organs[key]

    def for_organ(self, organ: str | None) -> Bank:
        """The organ's bank; the generic bank when no organ is given."""
        bank_id = self.bank_id(organ) or GENERIC
        if bank_id not in self.banks:
            raise InputError(None, f"no {bank_id!r} prompt bank is loaded")
        return self.banks[bank_id]

    def search_order(self, organ: str | None, everywhere: bool = True) -> list[Bank]:
        """The organ's bank, then the generic one, then (if `everywhere`) all the others."""
        first = [self.bank_id(organ), GENERIC]
        order = [self.banks[b] for b in dict.fromkeys(first) if b in self.banks]
        if everywhere:
            order += [b for b in self.banks.values() if b not in order]
        return order

    def descriptors(self, organ: str | None) -> dict[str, str]:
        """Descriptor expansions for an organ: its own bank's win over the generic bank's."""
        merged: dict[str, str] = {}
        for bank in reversed(self.search_order(organ, everywhere=False)):
            merged.update(bank.descriptors)
        return merged


# -- Loading -------------------------------------------------------------------------------------

def prompt_dir(folder: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the packaged banks (explicit, $USVLM_PROMPT_DIR, or the repository's)."""
    if folder is not None:
        where, path = "the given folder", Path(folder)
    elif os.environ.get(PROMPT_DIR_ENV):
        where, path = f"${PROMPT_DIR_ENV}", Path(os.environ[PROMPT_DIR_ENV])
    else:
        # <repo>/USVLMCore/usvlm/text/banks.py -> <repo>/Resources/prompts
        where, path = "the repository", Path(__file__).resolve().parents[3] / "Resources" / "prompts"
    if not path.is_dir():
        raise InputError(path, f"prompt bank folder ({where}) does not exist; pass the folder of "
                               f"the prompt banks or set {PROMPT_DIR_ENV}")
    return path


@functools.lru_cache(maxsize=4)
def _validator(schema_path: Path) -> Any:
    import jsonschema

    try:
        schema = json.loads(schema_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(schema_path, f"cannot read the prompt bank schema: {exc}") from None
    return jsonschema.Draft202012Validator(schema)


def _schema_path(near: Path) -> Path:
    """The packaged schema (it validates user banks too, wherever they live), else one beside."""
    candidates = []
    try:
        candidates.append(prompt_dir() / SCHEMA_NAME)
    except InputError:
        pass
    candidates.append(near / SCHEMA_NAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(near, f"prompt bank schema {SCHEMA_NAME} not found; set {PROMPT_DIR_ENV}")


def _json_path(parts: Iterable[Any]) -> str:
    text = "$"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _schema_error(path: Path, data: Any, validator: Any) -> InputError | None:
    from jsonschema.exceptions import best_match, relevance

    errors = list(validator.iter_errors(data))
    if not errors:
        return None
    # The most specific error first; its path names the field (e.g. $.structures[2].prompts).
    error = best_match(errors, key=relevance)
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return InputError(path, f"prompt bank fails the schema at {_json_path(error.absolute_path)}: "
                            f"{_short(error.message)}{more}")


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[:limit - 3] + "..."


def _code(data: Mapping[str, str]) -> Code:
    return Code(value=data["value"], meaning=data["meaning"], scheme=data.get("scheme", "SCT"))


def _region(value: str | Mapping[str, str] | None, path: Path, where: str) -> Code | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return _code(value)
    key = value.strip().lower()
    if key not in REGIONS:
        raise InputError(path, f"{where}: unknown region {value!r}; known: "
                               f"{', '.join(sorted(REGIONS))} (or give an explicit code)")
    return REGIONS[key]


def _terminology(data: Mapping[str, Any], default_region: Code | None, path: Path,
                 where: str) -> Terminology:
    region = _region(data["region"], path, f"{where}.region") if "region" in data \
        else default_region
    modifier = _code(data["region_modifier"]) if "region_modifier" in data else None
    if "term" in data:
        key = data["term"].strip().lower()
        if key not in TERMS:
            raise InputError(path, f"{where}.term: unknown term {data['term']!r}; known: "
                                   f"{', '.join(sorted(TERMS))} (or give explicit codes)")
        return TERMS[key].with_region(region, modifier)
    return Terminology(category=_code(data["category"]), type=_code(data["type"]),
                       type_modifier=_code(data["type_modifier"]) if "type_modifier" in data
                       else None,
                       anatomic_region=region, anatomic_region_modifier=modifier,
                       context=data.get("context", DICOM_MASTER_LIST))


def _check_unique_names(bank: Bank, path: Path) -> None:
    """A name or synonym must lead to one entry of the bank, or matching would be ambiguous."""
    owner: dict[str, str] = {}
    for i, s in enumerate(bank.structures):
        entries = [(f"$.structures[{i}]", s.id, (s.id, s.name, *s.synonyms))]
        entries += [(f"$.structures[{i}].classes[{k}]", f"{s.id}/{c.id}", (c.name, *c.synonyms))
                    for k, c in enumerate(s.classes)]
        if len({c.id for c in s.classes}) != len(s.classes):
            raise InputError(path, f"$.structures[{i}].classes: class ids are not unique")
        for where, label, names in entries:
            for name in names:
                key = normalize(name)
                if key in owner and owner[key] != label:
                    raise InputError(path, f"{where}: name {name!r} is also used by {owner[key]}")
                owner[key] = label


def bank_from_dict(data: Any, path: Path, validator: Any) -> Bank:
    """Validate one bank's JSON data and build it (errors name the file and the JSON path)."""
    error = _schema_error(path, data, validator)
    if error is not None:
        raise error
    region = _region(data.get("region"), path, "$.region")
    structures = []
    for i, s in enumerate(data["structures"]):
        where = f"$.structures[{i}]"
        term = _terminology(s["terminology"], region, path, f"{where}.terminology")
        if "color" in s:
            color = parse_color(s["color"])
        elif term.recommended_color is not None:
            color = term.recommended_color
        else:
            raise InputError(path, f"{where}.color: required when the terminology has no "
                                   "recommended colour")
        classes = tuple(ClassEntry(c["id"], c["name"], tuple(c.get("synonyms", ())),
                                   tuple(c["prompts"])) for c in s.get("classes", ()))
        structures.append(Structure(s["id"], s["name"], tuple(s.get("synonyms", ())), color, term,
                                    tuple(s["prompts"]), classes, bank=data["id"]))
    ids = [s.id for s in structures]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(path, "$.structures: structure ids are not unique: "
                               f"{', '.join(duplicates)}")
    bank = Bank(id=data["id"], name=data["name"], organs=tuple(data.get("organs", ())),
                region=region, lexicon=data.get("lexicon", ""), structures=tuple(structures),
                descriptors=dict(data.get("descriptors", {})), sources=(path,))
    _check_unique_names(bank, path)
    return bank


def load_bank(path: str | os.PathLike[str], schema: str | os.PathLike[str] | None = None) -> Bank:
    """Read and validate one bank file."""
    path = Path(path)
    data = read_json(path, "prompt bank")
    schema_path = Path(schema) if schema is not None else _schema_path(path.parent)
    return bank_from_dict(data, path, _validator(schema_path.resolve()))


def _merge(base: Bank, extra: Bank) -> Bank:
    """`extra` (a user bank with the same id) on top of `base`."""
    replaced = {s.id: s for s in extra.structures}
    structures = tuple(replaced.pop(s.id, s) for s in base.structures) + \
        tuple(s for s in extra.structures if s.id in replaced)
    merged = replace(base, organs=tuple(dict.fromkeys(base.organs + extra.organs)),
                     structures=structures, descriptors={**base.descriptors, **extra.descriptors},
                     sources=base.sources + extra.sources, lexicon=extra.lexicon or base.lexicon)
    _check_unique_names(merged, extra.sources[0])
    return merged


def _bank_files(entry: Path) -> list[Path]:
    if entry.is_dir():
        return sorted(p for p in entry.glob("*.json") if p.name != SCHEMA_NAME)
    return [entry]


def load_banks(folder: str | os.PathLike[str] | None = None,
               extra: Sequence[str | os.PathLike[str]] = ()) -> BankSet:
    """The packaged banks (see `prompt_dir`) plus user bank files or folders in `extra`."""
    base = prompt_dir(folder)
    schema = base / SCHEMA_NAME
    if not schema.is_file():
        raise InputError(base, f"prompt bank folder has no {SCHEMA_NAME}")
    banks: dict[str, Bank] = {}
    for entry in [base, *map(Path, extra)]:
        for path in _bank_files(entry):
            bank = load_bank(path, schema)
            banks[bank.id] = _merge(banks[bank.id], bank) if bank.id in banks else bank
    if not banks:
        raise InputError(base, "no prompt bank files (*.json) found")
    return BankSet(banks.values())


@functools.lru_cache(maxsize=2)
def _default_banks(env: str | None) -> BankSet:
    return load_banks()


def default_banks() -> BankSet:
    """The packaged banks, loaded once per process (again when $USVLM_PROMPT_DIR changes)."""
    return _default_banks(os.environ.get(PROMPT_DIR_ENV))


def unique_texts(texts: Iterable[str]) -> list[str]:
    """Texts in order without repeats (compared by `normalize`)."""
    seen: set[str] = set()
    out = []
    for text in texts:
        key = normalize(text)
        if key not in seen:
            seen.add(key)
            out.append(text)
    return out


def word_spans(text: str, phrases: Iterable[str]) -> list[tuple[int, str]]:
    """Phrases found as whole words in `text` (both normalised), longest first, no overlaps.

    Returns (position, phrase) sorted by position; used to spot lexicon descriptors in captions.
    """
    haystack = f" {normalize(text)} "
    taken: list[tuple[int, int]] = []
    found: list[tuple[int, str]] = []
    for phrase in sorted(phrases, key=lambda p: (-len(normalize(p)), p)):
        key = normalize(phrase)
        if not key:
            continue
        for match in re.finditer(re.escape(f" {key} "), haystack):
            start, end = match.start() + 1, match.end() - 1
            if all(end <= a or start >= b for a, b in taken):
                taken.append((start, end))
                found.append((start, phrase))
                break
    return sorted(found)

"""Text refiner: short labels and terse captions -> descriptive, clinically worded prompts.

`refine(text, organ, style)` returns a list of descriptions, from one of three backends:
- "bank" (default, offline): deterministic expansion from the prompt banks;
- "http": an OpenAI-compatible chat-completions endpoint (llama.cpp server, vLLM, Ollama);
- "hf": a local Hugging Face causal language model folder, run with transformers.

Only the label or caption text, the organ's name and the lexicon's name are ever sent to a
language model; never an image, a file name or any other patient data. LLM outputs are cached in
a JSONL file keyed by (input, organ, style, count, backend, model, template version), so a data
set is refined once and reproducibly. When an LLM fails (unreachable, slow, empty, malformed or
non-JSON reply) the refiner warns and falls back to the bank, unless told not to.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from usvlm.errors import InputError
from usvlm.text.banks import Bank, BankSet, Structure, default_banks, normalize, unique_texts, \
    word_spans
from usvlm.text.hf_backend import HFBackend
from usvlm.text.http_backend import ENV_API_KEY, ENV_MODEL, ENV_TIMEOUT, ENV_URL, HTTPBackend
from usvlm.text.llm_reply import DEFAULT_COUNT, RefinerError, loads, parse_descriptions, \
    usable_texts
from usvlm.text.prompt import validate_prompt
from usvlm.text.resolve import PromptResolver

__all__ = ["BACKENDS", "ENV_API_KEY", "ENV_CACHE_DIR", "ENV_MODEL", "ENV_MODEL_DIR", "ENV_TIMEOUT",
           "ENV_URL", "STYLES", "TEMPLATE_VERSION", "BankBackend", "HFBackend", "HTTPBackend",
           "LLMBackend", "Refinement", "Refiner", "RefinerCache", "RefinerError",
           "RefinerFallbackWarning", "Request", "build_messages", "cache_key", "default_cache_path",
           "make_backend", "parse_descriptions", "refine"]

TEMPLATE_VERSION = "1"  # bump when the LLM messages change: old cache entries stop matching
STYLES = ("label", "caption")
BACKENDS = ("bank", "http", "hf")
ENV_MODEL_DIR = "USVLM_LLM_DIR"
ENV_CACHE_DIR = "USVLM_CACHE_DIR"
# The cache is the user's file too (--cache): read it only when it is a regular file of sane size.
MAX_CACHE_BYTES = 256 * 2**20


class RefinerFallbackWarning(UserWarning):
    """An LLM backend failed and the offline bank was used instead."""


@dataclass(frozen=True)
class Request:
    """Everything a backend is told about one text; nothing else leaves the machine."""

    text: str
    organ: str | None      # bank id, None when no organ was given
    organ_name: str        # e.g. "Breast", "Lymph node (neck)", "unspecified"
    style: str             # "label" | "caption"
    count: int
    lexicon: str


@dataclass(frozen=True)
class Refinement:
    texts: list[str]
    backend: str
    model: str
    cached: bool = False
    fallback: str | None = None  # why the LLM answer was replaced by the bank's


# -- LLM messages and replies -------------------------------------------------------------------

_SYSTEM = ("You rewrite short ultrasound labels and captions into descriptive, clinically worded "
           "image descriptions for a vision-language model. Describe only what is visible on a "
           "B-mode ultrasound image. Reply with a JSON array of strings and nothing else.")


def build_messages(request: Request) -> list[dict[str, str]]:
    """The chat messages of prompt template `TEMPLATE_VERSION`."""
    head = f"Organ: {request.organ_name}.\nLexicon: {request.lexicon or 'general ultrasound'}.\n"
    if request.style == "caption":
        task = (f"Caption: {request.text}\nRewrite this caption as {request.count} different "
                "one-sentence descriptions in clinical ultrasound terms, keeping every finding it "
                "states and adding none.")
    else:
        task = (f"Label: {request.text}\nWrite {request.count} different one-sentence "
                "descriptions of how this finding looks on ultrasound, each under 30 words.")
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": head + task}]


# -- Backends ------------------------------------------------------------------------------------

class LLMBackend(Protocol):
    name: str
    model: str

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The model's reply text to chat `messages`; RefinerError when there is none."""


class BankBackend:
    """Offline, deterministic: bank prompts for known labels, templates and lexicon expansions
    for everything else."""

    name = "bank"
    model = "bank"

    def __init__(self, banks: BankSet | None = None) -> None:
        self.banks = banks if banks is not None else default_banks()
        self._resolver = PromptResolver(self.banks)

    def refine(self, request: Request) -> list[str]:
        text, organ = request.text, request.organ
        bank = self.banks.for_organ(organ)
        where = f"{bank.region.meaning.lower()} " if organ and bank.region else ""
        expansion = self._expansion(text, organ)
        if request.style == "label":
            resolved = self._resolver.resolve(text, organ)
            if resolved.matched_by != "none":
                return list(resolved.ensemble)[:request.count]
            texts = [text, f"an ultrasound image showing {_article(text)}",
                     f"{text} on a B-mode {where}ultrasound image"]
            texts += [f"{text}: {expansion}"] if expansion else []
        else:
            texts = [text, f"a B-mode {where}ultrasound image showing {_article(text)}"]
            texts += [f"an ultrasound finding with {expansion}"] if expansion else []
            texts += self._structure_prompts(text, organ, bank)
        return unique_texts(texts)[:request.count]

    def _expansion(self, text: str, organ: str | None) -> str:
        """The lexicon terms found in `text`, spelled out ("an irregular shape ...; a ...")."""
        descriptors = self.banks.descriptors(organ)
        return "; ".join(descriptors[phrase] for _, phrase in word_spans(text, descriptors))

    def _structure_prompts(self, text: str, organ: str | None, bank: Bank) -> list[str]:
        """For a caption naming a structure ("... mass with ..."), its first prompts."""
        names: dict[str, Structure] = {}
        for b in self.banks.search_order(organ, everywhere=False):  # the organ's bank first
            for s in b.structures:
                for name in (s.name, *s.synonyms):
                    names.setdefault(normalize(name), s)
        spans = word_spans(text, names)
        return list(names[spans[0][1]].prompts[:2]) if spans else []


def _article(phrase: str) -> str:
    """"irregular mass" -> "an irregular mass"; left alone if it has one or is a plural."""
    words = phrase.lower().split()
    first, last = words[0], words[-1]
    if first in ("a", "an", "the", "no") or (last.endswith("s") and not last.endswith("ss")):
        return phrase
    return ("an " if first[0] in "aeiou" else "a ") + phrase


# -- Cache ---------------------------------------------------------------------------------------

def default_cache_path() -> Path:
    """$USVLM_CACHE_DIR, else $XDG_CACHE_HOME/usvlm or ~/.cache/usvlm; file refiner-cache.jsonl."""
    folder = os.environ.get(ENV_CACHE_DIR) or \
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "usvlm"
    return Path(folder) / "refiner-cache.jsonl"


def cache_key(request: Request, backend: str, model: str) -> str:
    fields = {"text": request.text, "organ": request.organ, "style": request.style,
              "count": request.count, "backend": backend, "model": model,
              "template": TEMPLATE_VERSION}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()


class RefinerCache:
    """Append-only JSONL of refined outputs; each line is fsynced, a torn last line is skipped.

    A cache that is not a regular file (a FIFO, a device, a folder) or is absurdly large is not
    used (a warning says why): reading it could hang or exhaust memory. Lines that are not records
    of usable prompts (torn, edited, nested too deeply) are skipped."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._entries: dict[str, list[str]] | None = None
        self._unusable: str | None = None

    def _check(self) -> bool:
        """Whether the cache file may be read and appended to (warns once when not)."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return True
        except OSError as exc:
            problem = f"cannot read it: {exc.strerror}"
        else:
            if not stat.S_ISREG(info.st_mode):
                problem = "not a regular file"
            elif info.st_size > MAX_CACHE_BYTES:
                problem = f"{info.st_size} bytes, more than {MAX_CACHE_BYTES}"
            else:
                return True
        if self._unusable is None:
            self._unusable = problem
            warnings.warn(f"refiner cache {self.path}: {problem}; not used", stacklevel=3)
        return False

    def _load(self) -> dict[str, list[str]]:
        if self._entries is None:
            self._entries = {}
            if self._check() and self.path.is_file():
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        try:
                            record = loads(line)
                            key, outputs = record["key"], record["outputs"]
                        except (ValueError, KeyError, TypeError):
                            continue  # a line torn by a crash
                        if isinstance(key, str) and isinstance(outputs, list) and \
                                all(isinstance(o, str) for o in outputs):
                            texts = usable_texts(outputs, len(outputs))
                            if texts:
                                self._entries[key] = texts
        return self._entries

    def get(self, key: str) -> list[str] | None:
        return self._load().get(key)

    def put(self, key: str, outputs: list[str], **fields: Any) -> None:
        self._load()[key] = list(outputs)
        if not self._check():
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_NONBLOCK: a FIFO put there since the check fails instead of blocking the open.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK, 0o666)
            with open(fd, "a+b") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError("not a regular file")
                # A torn line from an earlier crash must not swallow this record.
                f.seek(0, os.SEEK_END)
                if f.tell():
                    f.seek(-1, os.SEEK_END)
                    torn = f.read(1) != b"\n"
                else:
                    torn = False
                record = {"key": key, **fields, "outputs": outputs}
                f.write((b"\n" if torn else b"") +
                        (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            warnings.warn(f"cannot write the refiner cache {self.path}: "
                          f"{exc.strerror or exc}", stacklevel=2)


# -- The refiner ---------------------------------------------------------------------------------

def make_backend(name: str, banks: BankSet | None = None,
                 **options: Any) -> BankBackend | LLMBackend:
    """"bank", "http" (options: url, model, api_key, timeout, retries) or "hf" (model_dir)."""
    if name == "bank":
        return BankBackend(banks)
    if name == "http":
        return HTTPBackend.from_env(**{k: options.get(k) for k in
                                       ("url", "model", "api_key", "timeout", "retries")})
    if name == "hf":
        model_dir = options.get("model_dir") or os.environ.get(ENV_MODEL_DIR)
        if not model_dir:
            raise InputError(None, "the hf refiner needs a model folder (--model or "
                                   f"${ENV_MODEL_DIR})")
        return HFBackend(model_dir)
    raise InputError(None, f"unknown refiner backend {name!r}; choose one of {', '.join(BACKENDS)}")


class Refiner:
    """refine(text, organ, style) with one backend, a cache, and the bank as fallback."""

    def __init__(self, backend: str | BankBackend | LLMBackend = "bank", *,
                 banks: BankSet | None = None,
                 cache: RefinerCache | str | os.PathLike[str] | None = None,
                 fallback: bool = True, count: int = DEFAULT_COUNT, **backend_options: Any) -> None:
        if not 1 <= count <= 50:
            raise InputError(None, f"the number of descriptions must be 1-50, got {count}")
        self.banks = banks if banks is not None else default_banks()
        self.bank = BankBackend(self.banks)
        if isinstance(backend, str):
            backend = self.bank if backend == "bank" else \
                make_backend(backend, self.banks, **backend_options)
        self.backend = backend
        self.cache = RefinerCache(cache) if isinstance(cache, (str, os.PathLike)) else cache
        self.fallback, self.count = fallback, count

    def request(self, text: str, organ: str | None = None, style: str = "label") -> Request:
        text = validate_prompt(text)
        if style not in STYLES:
            raise InputError(None, f"unknown refiner style {style!r}; choose one of "
                                   f"{', '.join(STYLES)}")
        bank_id = self.banks.bank_id(organ)
        bank = self.banks.for_organ(organ)
        return Request(text, bank_id, bank.name if bank_id else "unspecified", style, self.count,
                       bank.lexicon)

    def refine_result(self, text: str, organ: str | None = None,
                      style: str = "label") -> Refinement:
        """Like `refine`, with the backend, model, cache hit and fallback reason; no warning."""
        request = self.request(text, organ, style)
        backend = self.backend
        if isinstance(backend, BankBackend):
            return Refinement(backend.refine(request), backend.name, backend.model)
        key = cache_key(request, backend.name, backend.model)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            return Refinement(hit[:request.count], backend.name, backend.model, cached=True)
        try:
            reply = backend.complete(build_messages(request))
            try:
                texts = parse_descriptions(reply, request.count)
            except RefinerError as exc:  # name the endpoint or model folder that said it
                where = getattr(backend, "endpoint", backend.model)
                redact = getattr(backend, "redact", str)  # a server may echo the key back
                raise RefinerError(redact(f"{where}: {exc}")) from None
        except RefinerError as exc:
            if not self.fallback:
                raise
            return Refinement(self.bank.refine(request), self.bank.name, self.bank.model,
                              fallback=f"{backend.name} backend: {exc}")
        if self.cache is not None:
            self.cache.put(key, texts, input=request.text, organ=request.organ, style=request.style,
                           backend=backend.name, model=backend.model, template=TEMPLATE_VERSION)
        return Refinement(texts, backend.name, backend.model)

    def refine(self, text: str, organ: str | None = None, style: str = "label") -> list[str]:
        """Refined descriptions of `text`; warns (RefinerFallbackWarning) when the bank stood in."""
        result = self.refine_result(text, organ, style)
        if result.fallback:
            warnings.warn(f"{result.fallback}; used the offline prompt bank instead",
                          RefinerFallbackWarning, stacklevel=2)
        return result.texts


def refine(text: str, organ: str | None = None, style: str = "label", *,
           backend: str = "bank", **options: Any) -> list[str]:
    """One-off refinement; build a `Refiner` to reuse a backend, its model and cache."""
    return Refiner(backend, **options).refine(text, organ, style)

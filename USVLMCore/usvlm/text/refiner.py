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
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from usvlm.errors import InputError, USVLMError
from usvlm.text.banks import Bank, BankSet, Structure, default_banks, normalize, unique_texts, \
    word_spans
from usvlm.text.prompt import validate_prompt
from usvlm.text.resolve import PromptResolver

TEMPLATE_VERSION = "1"  # bump when the LLM messages change: old cache entries stop matching
STYLES = ("label", "caption")
BACKENDS = ("bank", "http", "hf")
DEFAULT_COUNT = 8

ENV_URL = "USVLM_LLM_URL"
ENV_MODEL = "USVLM_LLM_MODEL"
ENV_API_KEY = "USVLM_LLM_API_KEY"
ENV_TIMEOUT = "USVLM_LLM_TIMEOUT"
ENV_MODEL_DIR = "USVLM_LLM_DIR"
ENV_CACHE_DIR = "USVLM_CACHE_DIR"

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class RefinerError(USVLMError):
    """A language model backend gave no usable answer."""


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


def _snippet(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def parse_descriptions(reply: str, count: int = DEFAULT_COUNT) -> list[str]:
    """An LLM reply -> up to `count` descriptions; RefinerError if it holds none.

    Accepts a JSON array of strings, optionally in a ``` fence, with chatter around it, or a JSON
    object whose only value is such an array. Items that are not usable prompts are dropped.
    """
    if not isinstance(reply, str) or not reply.strip():
        raise RefinerError("the reply is empty")
    text = _FENCE.sub("", reply.strip())
    try:
        data = json.loads(text)
    except ValueError:
        start, end = text.find("["), text.rfind("]")
        try:
            data = json.loads(text[start:end + 1]) if 0 <= start < end else None
        except ValueError:
            data = None
        if data is None:
            raise RefinerError(f"the reply is not a JSON list: {_snippet(reply)}") from None
    if isinstance(data, dict) and len(data) == 1:
        data = next(iter(data.values()))
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise RefinerError(f"the reply is not a JSON list of strings: {_snippet(reply)}")
    usable = []
    for item in data:
        try:
            usable.append(validate_prompt(item))
        except InputError:
            continue
    texts = unique_texts(usable)[:count]
    if not texts:
        raise RefinerError(f"the reply has no usable descriptions: {_snippet(reply)}")
    return texts


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


class HTTPBackend:
    """An OpenAI-compatible chat-completions endpoint (POST {url}/chat/completions)."""

    name = "http"

    def __init__(self, url: str, model: str = "default", api_key: str | None = None,
                 timeout: float = 30.0, retries: int = 2, backoff: float = 0.5,
                 max_tokens: int = 600) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InputError(url, "the LLM URL must be http:// or https://host[:port][/path]")
        if timeout <= 0 or retries < 0:
            raise InputError(None, f"timeout must be > 0 and retries >= 0, got {timeout}, "
                                   f"{retries}")
        path = parsed.path.rstrip("/")
        self.endpoint = url.rstrip("/") if path.endswith("/chat/completions") else \
            url.rstrip("/") + "/chat/completions"
        self.model = model
        self._api_key = api_key
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.max_tokens = max_tokens

    @classmethod
    def from_env(cls, url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout: float | None = None, retries: int | None = None) -> "HTTPBackend":
        """Settings given here win over $USVLM_LLM_URL, _MODEL, _API_KEY and _TIMEOUT."""
        url = url or os.environ.get(ENV_URL)
        if not url:
            raise InputError(None, "the http refiner needs the endpoint URL (--url or "
                                   f"${ENV_URL}), e.g. http://127.0.0.1:8080/v1")
        if timeout is None and os.environ.get(ENV_TIMEOUT):
            try:
                timeout = float(os.environ[ENV_TIMEOUT])
            except ValueError:
                raise InputError(None, f"${ENV_TIMEOUT} is not a number of seconds") from None
        options: dict[str, Any] = {"timeout": timeout, "retries": retries}
        return cls(url, model or os.environ.get(ENV_MODEL) or "default",
                   api_key or os.environ.get(ENV_API_KEY) or None,
                   **{k: v for k, v in options.items() if v is not None})

    def complete(self, messages: list[dict[str, str]]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_tokens, "stream": False}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempts = self.retries + 1
        for attempt in range(attempts):
            request = urllib.request.Request(self.endpoint, data=body, headers=headers,
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return self._content(response.read())
            except urllib.error.HTTPError as exc:
                reason = f"HTTP {exc.code} {exc.reason}"
                if exc.code not in RETRY_STATUS:
                    raise RefinerError(f"{self.endpoint}: {reason}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError,
                    http.client.HTTPException) as exc:
                cause = getattr(exc, "reason", exc)
                reason = f"timed out after {self.timeout:g} s" if isinstance(cause, TimeoutError) \
                    else f"{type(cause).__name__}: {cause}"
            if attempt + 1 < attempts:
                time.sleep(self.backoff * 2 ** attempt)
        raise RefinerError(f"{self.endpoint}: no answer after {attempts} attempt"
                           f"{'s' if attempts > 1 else ''} ({reason})")

    def _content(self, raw: bytes) -> str:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise RefinerError(f"{self.endpoint}: the response is not JSON: "
                               f"{_snippet(raw.decode('utf-8', 'replace'))}") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RefinerError(f"{self.endpoint}: the response has no choices[0].message.content: "
                               f"{_snippet(json.dumps(data))}") from None
        if not isinstance(content, str) or not content.strip():
            raise RefinerError(f"{self.endpoint}: the reply is empty")
        return content


class HFBackend:
    """A local Hugging Face causal LM folder (config, weights, tokenizer), greedy decoding."""

    name = "hf"

    def __init__(self, model_dir: str | os.PathLike[str], max_new_tokens: int = 400,
                 device: str = "cpu") -> None:
        path = Path(model_dir)
        if not path.is_dir():
            raise InputError(path, "the hf refiner needs a local model folder (config.json, "
                                   "weights, tokenizer files)")
        if not (path / "config.json").is_file():
            raise InputError(path, "no config.json: not a Hugging Face model folder")
        self.path = path.resolve()
        self.model = str(self.path)
        self.max_new_tokens, self.device = max_new_tokens, device
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True)
            except (OSError, ValueError, KeyError) as exc:
                first_line = str(exc).splitlines()[0] if str(exc) else repr(exc)
                raise InputError(self.path, f"cannot load a causal language model: {first_line}"
                                 ) from None
            self._loaded = (tokenizer, model.to(self.device).eval())
        return self._loaded

    def _prompt(self, tokenizer: Any, messages: list[dict[str, str]]) -> str:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                 tokenize=False)
        return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + \
            "\n\nAssistant:"

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        tokenizer, model = self._load()
        encoded = tokenizer(self._prompt(tokenizer, messages), return_tensors="pt")
        ids = encoded["input_ids"].to(self.device)
        mask = encoded.get("attention_mask")
        eos = tokenizer.eos_token_id
        eos = tokenizer.sep_token_id if eos is None else eos  # BERT-style tokenizers
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        try:
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=None if mask is None else
                                     mask.to(self.device), max_new_tokens=self.max_new_tokens,
                                     do_sample=False, pad_token_id=pad, eos_token_id=eos)
        except Exception as exc:  # any model failure is the backend's failure: fall back
            raise RefinerError(f"{self.path}: generation failed: {type(exc).__name__}: {exc}"
                               ) from None
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


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
    """Append-only JSONL of refined outputs; each line is fsynced, a torn last line is skipped."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._entries: dict[str, list[str]] | None = None

    def _load(self) -> dict[str, list[str]]:
        if self._entries is None:
            self._entries = {}
            if self.path.is_file():
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        try:
                            record = json.loads(line)
                            self._entries[record["key"]] = list(record["outputs"])
                        except (ValueError, KeyError, TypeError):
                            continue  # a line torn by a crash
        return self._entries

    def get(self, key: str) -> list[str] | None:
        return self._load().get(key)

    def put(self, key: str, outputs: list[str], **fields: Any) -> None:
        self._load()[key] = list(outputs)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as f:
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
            warnings.warn(f"cannot write the refiner cache {self.path}: {exc}", stacklevel=2)


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
            return Refinement(hit, backend.name, backend.model, cached=True)
        try:
            reply = backend.complete(build_messages(request))
            try:
                texts = parse_descriptions(reply, request.count)
            except RefinerError as exc:  # name the endpoint or model folder that said it
                where = getattr(backend, "endpoint", backend.model)
                raise RefinerError(f"{where}: {exc}") from None
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

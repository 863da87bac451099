"""The refiner's local backend: a Hugging Face causal LM folder, run with transformers.

A model folder is data, never code: it is checked before transformers sees it, and loaded with
`trust_remote_code=False`, `use_safetensors=True` and `local_files_only=True`, so no Python file
in it is imported, no pickle (pytorch_model.bin, *.pt) is unpickled, and nothing is downloaded.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from usvlm.errors import InputError
from usvlm.io.bounded_file import read_bounded_file
from usvlm.text.llm_reply import RefinerError, loads

MAX_CONFIG_BYTES = 4 * 2**20  # config.json / tokenizer_config.json: a few KB in practice
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def _json_file(path: Path) -> Any:
    """The parsed JSON of a small regular file in the model folder; InputError otherwise."""
    data = read_bounded_file(path, "model configuration", MAX_CONFIG_BYTES)  # no FIFO, no device
    try:
        return loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, f"not valid JSON ({exc})".replace("\n", " ")) from None


def check_model_folder(path: Path) -> None:
    """Refuse folders that would make transformers unpickle (weights that are not safetensors)
    or hang (a FIFO or device where a file is read). Code named by `auto_map` is never imported:
    trust_remote_code is off."""
    for entry in path.iterdir():
        try:
            mode = entry.stat().st_mode
        except OSError:
            continue  # a dangling link: transformers reports it if it needs the file
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise InputError(entry, "not a regular file (a FIFO, socket or device); a model "
                                    "folder holds plain files only")
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        if name == "tokenizer_config.json" and not file.exists():
            continue
        data = _json_file(file)
        if not isinstance(data, dict):
            raise InputError(file, "not a JSON object")
        explicit = data.get("transformers_weights")
        if explicit is not None and not str(explicit).endswith(_WEIGHTS):
            raise InputError(file, "transformers_weights names a file that is not safetensors; "
                                   "only safetensors weights are loaded (never pickles)")
    index = path / "model.safetensors.index.json"
    if index.is_file() and not (path / "model.safetensors").is_file():
        data = _json_file(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        shards = set(weight_map.values()) if isinstance(weight_map, dict) else set()
        if not shards or not all(isinstance(s, str) and s.endswith(".safetensors") and
                                 Path(s).name == s and (path / s).is_file() for s in shards):
            raise InputError(index, "its weight_map must name safetensors files of this folder")
    if not any((path / name).is_file() for name in _WEIGHTS):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth",
                                                                           ".pkl", ".ckpt"))
        found = f" ({', '.join(pickles[:3])} are pickles, never loaded)" if pickles else ""
        raise InputError(path, f"no model.safetensors: only safetensors weights are loaded{found}")


class HFBackend:
    """A local Hugging Face causal LM folder (config, weights, tokenizer), greedy decoding."""

    name = "hf"

    def __init__(self, model_dir: str | os.PathLike[str], max_new_tokens: int = 400,
                 device: str = "cpu") -> None:
        path = Path(model_dir)
        if not path.is_dir():
            raise InputError(path, "the hf refiner needs a local model folder (config.json, "
                                   "model.safetensors, tokenizer files)")
        if not (path / "config.json").is_file():
            raise InputError(path, "no config.json: not a Hugging Face model folder")
        self.path = path.resolve()
        self.model = str(self.path)
        self.max_new_tokens, self.device = max_new_tokens, device
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            check_model_folder(self.path)
            from transformers import AutoModelForCausalLM, AutoTokenizer

            safe = {"local_files_only": True, "trust_remote_code": False}
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.path, **safe)
                model = AutoModelForCausalLM.from_pretrained(self.path, use_safetensors=True,
                                                             **safe)
            except Exception as exc:  # any failure to load a user's folder is the folder's fault
                first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() \
                    else type(exc).__name__
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
        try:
            encoded = tokenizer(self._prompt(tokenizer, messages), return_tensors="pt")
            ids = encoded["input_ids"].to(self.device)
            mask = encoded.get("attention_mask")
            eos = tokenizer.eos_token_id
            eos = tokenizer.sep_token_id if eos is None else eos  # BERT-style tokenizers
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=None if mask is None else
                                     mask.to(self.device), max_new_tokens=self.max_new_tokens,
                                     do_sample=False, pad_token_id=pad, eos_token_id=eos)
            return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        except Exception as exc:  # any model failure is the backend's failure: fall back
            first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise RefinerError(f"{self.path}: generation failed: {type(exc).__name__}"
                               f"{': ' + first_line if first_line else ''}") from None

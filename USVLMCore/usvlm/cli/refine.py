"""usvlm refine: rewrite labels and captions into descriptive prompts (prompt bank or an LLM)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usvlm.cli._common import add_force_arg
from usvlm.errors import InputError, OutputError, USVLMError
from usvlm.io.output_plan import same_file

MAX_COUNT = 50
MAX_INPUT_BYTES = 256 * 2**20  # a captions file; millions of captions fit
MAX_BANK_BYTES = 16 * 2**20  # a prompt bank is tens of KB

DESCRIPTION = """\
Rewrite a short label ("hypoechoic breast mass") or caption into descriptive ultrasound prompts.
Backends: bank (offline, default), http (an OpenAI-compatible chat-completions server: llama.cpp,
vLLM, Ollama; --url or $USVLM_LLM_URL, --model or $USVLM_LLM_MODEL, key in $USVLM_LLM_API_KEY),
hf (a local Hugging Face causal LM folder: --model DIR). Only the text and the organ are sent.
LLM answers are cached (--cache); a failing LLM falls back to the bank with a warning.
HTTP: --timeout bounds each whole request; credentials (the API key, user:password@ in --url) go
only to the scheme, host and port of --url (a redirect elsewhere is refused, never followed) and
are never shown; responses over 4 MiB are refused. The hf backend loads safetensors weights only
and never runs code from the model folder.

Batch mode: --input captions.jsonl -o refined.jsonl. Input lines are {"id", "text", "organ"}
objects, or phantom samples.jsonl records (each structure's description, id "<id>/<k>").
Interrupted runs resume: rerun the same command; finished ids are skipped. An existing output
is replaced only with --force (cached LLM answers make a rerun cheap); it is never the input."""


def _checked(check):  # noqa: ANN001, ANN202
    """An argparse type from a `check_*` function that raises ValueError with its own message."""
    def parse(text: str):  # noqa: ANN202
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = check.__name__.removeprefix("check_")
    return parse


def check_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise ValueError("the count must be a whole number") from None
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"the count must be 1 to {MAX_COUNT}")
    return count


def check_url(text: str) -> str:
    from usvlm.text.http_settings import Endpoint

    Endpoint.parse(text)  # ValueError with the URL's credentials masked
    return text


def check_bank(text: str) -> str:
    """A bank file, or a folder of *.json bank files: regular files of sane size (a FIFO would
    hang the reader, /dev/zero exhaust memory)."""
    path = Path(text)
    try:
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            info = file.stat()
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"{file} is not a regular file")
            if info.st_size > MAX_BANK_BYTES:
                raise ValueError(f"{file} has {info.st_size} bytes; a prompt bank is at most "
                                 f"{MAX_BANK_BYTES}")
    except OSError as exc:
        raise ValueError(f"{text}: {exc.strerror or 'cannot read'}") from None
    return text


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from usvlm.text.http_settings import check_retries, check_timeout

    p = sub.add_parser("refine", help="rewrite labels or captions into descriptive prompts",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="?", metavar="TEXT", help="the label or caption to refine")
    p.add_argument("--organ", help="organ context: breast, thyroid, neck (lymph node), prostate")
    p.add_argument("--style", choices=("label", "caption"),
                   help="label (default for TEXT) or caption (default for --input)")
    p.add_argument("--backend", choices=("bank", "http", "hf"), default="bank")
    p.add_argument("--url", type=_checked(check_url),
                   help="chat-completions base URL, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--model", help="model name (http) or model folder (hf)")
    p.add_argument("--timeout", type=_checked(check_timeout),
                   help="seconds for each whole HTTP request, connect to last byte (default 30, "
                        "at most 3600)")
    p.add_argument("--retries", type=_checked(check_retries),
                   help="HTTP retries after a failure (default 2, at most 10)")
    p.add_argument("--count", type=_checked(check_count), default=8,
                   help=f"descriptions per text (default 8, at most {MAX_COUNT})")
    p.add_argument("--bank", action="append", default=[], metavar="FILE",
                   type=_checked(check_bank),
                   help="an extra prompt bank file or folder (repeatable)")
    p.add_argument("--cache", metavar="FILE",
                   help="LLM cache file (default: refiner-cache.jsonl in the user cache folder)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the LLM cache")
    p.add_argument("--no-fallback", action="store_true",
                   help="fail instead of falling back to the bank when the LLM fails")
    p.add_argument("--json", action="store_true", help="print a JSON list of strings")
    p.add_argument("--input", metavar="JSONL", help="refine every caption of a JSONL file")
    p.add_argument("-o", "--output", metavar="JSONL", help="output of --input (resumable)")
    add_force_arg(p)
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
    if args.input is None and (args.output or args.force):
        raise InputError(None, "-o/--output and --force go with --input; TEXT is refined to stdout")
    if args.input is not None:
        plan = _plan_batch(args)  # before the backend is built: refuse early, touch nothing
        return _run_batch(_refiner(args), args, plan)
    texts = _refiner(args).refine(args.text, args.organ, args.style or "label")
    print(json.dumps(texts, ensure_ascii=False, indent=2) if args.json else "\n".join(texts))
    return 0  # a reader that went away (`| head -1`) is handled by usvlm.cli: exit 141, quietly


# -- Batch ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchPlan:
    source: Path
    output: Path
    partial: Path  # progress of an unfinished run, beside the output; resumed by the same command


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror}") from None


def _plan_batch(args: argparse.Namespace) -> BatchPlan:
    """Check every path the batch reads or writes before any work: the input is a regular file
    of sane size; the output is not the input (by inode, so links count), not an existing file
    unless --force, and neither is the cache."""
    source, output = Path(args.input), Path(args.output)
    partial = output.with_name(f".{output.name}.partial")
    source_info = _stat(source)
    if source_info is None:
        raise InputError(source, "does not exist")
    if not stat.S_ISREG(source_info.st_mode):
        raise InputError(source, "not a regular file")
    if source_info.st_size > MAX_INPUT_BYTES:
        raise InputError(source, f"{source_info.st_size} bytes; a captions file is at most "
                                 f"{MAX_INPUT_BYTES}")
    if not output.parent.is_dir():
        raise OutputError(output, f"output folder {output.parent} does not exist")
    output_info = _stat(output)
    if same_file(output, source):
        raise OutputError(output, "is the --input file; write the refined captions elsewhere")
    if output_info is not None and not stat.S_ISREG(output_info.st_mode):
        raise OutputError(output, "exists and is not a regular file")
    if output_info is not None and not args.force:
        raise OutputError(output, "exists; give --force to replace it")
    partial_info = partial.lstat() if os.path.lexists(partial) else None
    if partial_info is not None and not stat.S_ISREG(partial_info.st_mode):
        raise OutputError(partial, "the progress file of an earlier run is not a regular file; "
                                   "remove it")
    if partial_info is not None and same_file(partial, source):
        raise OutputError(output, f"its progress file {partial.name} is the --input file")
    if not args.no_cache and args.cache:
        cache = Path(args.cache)
        for path in (source, output, partial):
            if same_file(cache, path):
                raise InputError(cache, f"the --cache file is {path}; give another file")
    return BatchPlan(source, output, partial)


def _captions(path: Path, default_organ: str | None) -> Iterator[tuple[str, str, str | None]]:
    """(id, text, organ) of each caption; phantom records give one per structure."""
    from usvlm.text.llm_reply import JSONTooDeep, loads

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = loads(line)
        except JSONTooDeep:
            raise InputError(path, f"line {number} is JSON nested too deeply") from None
        except ValueError as exc:
            raise InputError(path, f"line {number} is not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise InputError(path, f"line {number}: expected a JSON object")
        key = record.get("id", f"line{number}")
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise InputError(path, f"line {number}: \"id\" must be a string or a whole number")
        organ = record.get("organ") or default_organ
        if organ is not None and not isinstance(organ, str):
            raise InputError(path, f"line {number}: \"organ\" must be a string")
        if isinstance(record.get("structures"), list):
            for k, structure in enumerate(record["structures"]):
                if isinstance(structure, dict) and isinstance(structure.get("description"), str):
                    yield f"{key}/{k}", structure["description"], organ
            continue
        text = record.get("text", record.get("caption"))
        if not isinstance(text, str):
            raise InputError(path, f"line {number}: no \"text\" (or \"caption\") string")
        yield str(key), text, organ


def _saved_records(partial: Path, wanted: dict[str, tuple[str, str | None, str]]
                   ) -> dict[str, str]:
    """Lines of the progress file by id, for captions whose text, organ and style are still
    those of the input (a progress file of another input is not reused); a torn last line (a
    crash mid-write) and anything unreadable are skipped."""
    from usvlm.text.llm_reply import loads

    if not partial.exists():
        return {}
    saved = {}
    with open(partial, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # torn
            try:
                record = loads(raw.decode("utf-8"))
                key = record["id"]
                fields = (record["text"], record["organ"], record["style"])
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(key, str) and wanted.get(key) == fields and \
                    isinstance(record.get("refined"), list):
                saved[key] = raw.decode("utf-8").rstrip("\n")
    return saved


def _run_batch(refiner: Any, args: argparse.Namespace, plan: BatchPlan) -> int:
    from tqdm import tqdm

    from usvlm.io.atomic import atomic_output

    source, output, partial = plan.source, plan.output, plan.partial
    captions = list(_captions(source, args.organ))
    if not captions:
        raise InputError(source, "holds no captions")
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
    # Progress goes to a hidden file beside the output, one fsynced line per caption, so an
    # interrupted run resumes; the output is written (atomically, in input order) only when
    # every caption is done.
    lines = _saved_records(partial, {key: (text, organ, style) for key, text, organ in captions})
    todo = [c for c in captions if c[0] not in lines]
    fallbacks = 0
    try:
        with _progress_file(partial, lines) as f, \
                tqdm(total=len(captions), initial=len(lines), unit="caption",
                     disable=args.no_progress, file=sys.stderr) as bar:
            for key, text, organ in todo:
                result = refiner.refine_result(text, organ, style)
                fallbacks += result.fallback is not None
                record = {"id": key, "text": text, "organ": organ, "style": style,
                          "refined": result.texts, "backend": result.backend,
                          "model": result.model, "fallback": result.fallback}
                lines[key] = json.dumps(record, ensure_ascii=False)
                f.write((lines[key] + "\n").encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
                bar.update()
        with atomic_output(output) as tmp:
            tmp.write_text("".join(lines[key] + "\n" for key in ids), encoding="utf-8")
    except KeyboardInterrupt:
        _drop_if_empty(partial, lines)
        print(f"error: interrupted; {len(lines)} of {len(captions)} captions are saved in "
              f"{partial}; run the same command again to resume", file=sys.stderr)
        return 130
    except (OSError, USVLMError) as exc:
        _drop_if_empty(partial, lines)
        resume = f"; {len(lines)} of {len(captions)} captions are saved in {partial}, run the " \
            "same command again to resume" if lines else ""
        if isinstance(exc, OSError):  # writing the progress file or the output
            raise OutputError(output, f"cannot write: {exc.strerror or exc}{resume}") from None
        exc.args = (f"{exc}{resume}",)  # the backend's own error, with where the progress is
        raise
    partial.unlink(missing_ok=True)
    if fallbacks:
        print(f"warning: {fallbacks} captions used the offline bank because the "
              f"{args.backend} backend failed (see the \"fallback\" field)", file=sys.stderr)
    print(f"refined {len(todo)} captions ({len(captions) - len(todo)} already done) -> {output}")
    return 0


@contextlib.contextmanager
def _progress_file(partial: Path, lines: dict[str, str]) -> Iterator[Any]:
    """The progress file, rewritten with the records still valid, open for appending."""
    from usvlm.io.atomic import atomic_output

    if lines:  # drops stale and torn lines of an earlier run
        with atomic_output(partial) as tmp:
            tmp.write_bytes(b"".join((line + "\n").encode("utf-8") for line in lines.values()))
    else:
        partial.unlink(missing_ok=True)
    with open(partial, "ab") as f:
        yield f


def _drop_if_empty(partial: Path, lines: dict[str, str]) -> None:
    """A progress file holding nothing is not left behind."""
    if not lines:
        partial.unlink(missing_ok=True)

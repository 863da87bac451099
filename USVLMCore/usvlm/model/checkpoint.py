"""Model checkpoints: a directory with `model.safetensors`, `manifest.json` and `manifest.sha256`.

Weights are only ever read with safetensors, never unpickled. Every file is listed in the
manifest with its sha256 and size, and the manifest's own sha256 is in `manifest.sha256`; all are
checked on load, so a damaged or tampered file is refused with its name. Saving builds the directory beside the target and renames it into place, so a
failure never leaves a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
from torch import Tensor, nn

from usvlm.errors import OutputError
from usvlm.io.atomic import default_file_mode
from usvlm.model.errors import CheckpointError
from usvlm.model.manifest import (
    DIGEST_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    digest_line,
    manifest_text,
    parse_manifest,
    read_bounded_file,
    validate_manifest,
    verify_manifest_digest,
)

_PARTS_KEY = "usvlm.parts"  # safetensors metadata: JSON list of part names, to split keys again
_MAX_LISTED = 5

Parts = dict[str, dict[str, Tensor]]


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (backbone weights can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def _check_part_names(names: list[str]) -> None:
    for name in names:
        if not name or name.startswith(".") or name.endswith("."):
            raise ValueError(f"invalid part name {name!r}")
        # "heads" and "heads.segmentation" would make "heads.segmentation.w" ambiguous.
        clash = [other for other in names if other.startswith(name + ".")]
        if clash:
            raise ValueError(f"part names {name!r} and {clash[0]!r} overlap")


def flatten_parts(parts: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """{"heads.segmentation": {"w": t}} -> {"heads.segmentation.w": t}, detached, on the CPU."""
    _check_part_names(list(parts))
    flat: dict[str, Tensor] = {}
    storages: set[int] = set()
    for part, state in parts.items():
        for key, tensor in state.items():
            t = tensor.detach().cpu().contiguous()
            ptr = t.untyped_storage().data_ptr()
            # safetensors refuses tensors that share memory (tied weights): store copies.
            if ptr in storages and t.numel():
                t = t.clone()
            storages.add(t.untyped_storage().data_ptr())
            flat[f"{part}.{key}"] = t
    return flat


def shapes_of(modules: Mapping[str, nn.Module | Mapping[str, Tensor]]) -> dict[str, tuple]:
    """Flat key -> shape for the parts a model needs, to pass to `load_checkpoint`."""
    return {f"{part}.{key}": tuple(t.shape)
            for part, m in modules.items()
            for key, t in (m.state_dict() if isinstance(m, nn.Module) else m).items()}


def _prepare_manifest(manifest: Mapping[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    version = manifest.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise CheckpointError(MANIFEST_NAME, f"this USVLM writes format_version {FORMAT_VERSION}, "
                                             f"not {version}")
    body = {k: v for k, v in manifest.items() if k not in ("format_version", "files")}
    try:  # also turns tuples into lists, as the schema expects
        body = json.loads(json.dumps(body))
    except (TypeError, ValueError) as e:
        raise CheckpointError(MANIFEST_NAME, f"not JSON-serialisable: {e}") from None
    return {"format_version": version, **body, "files": files}


def _check_target(directory: Path, overwrite: bool) -> None:
    if not directory.parent.is_dir():
        raise OutputError(directory, f"output folder {directory.parent} does not exist")
    if not os.access(directory.parent, os.W_OK):
        raise OutputError(directory, f"output folder {directory.parent} is not writable")
    if not directory.exists() and not directory.is_symlink():
        return
    if not overwrite:
        raise OutputError(directory, "already exists; pass overwrite=True (--overwrite) to "
                                     "replace it")
    # Never delete a folder that is not a model: a wrong path must not cost the user's data.
    if not directory.is_dir() or (any(directory.iterdir())
                                  and not (directory / MANIFEST_NAME).is_file()):
        raise OutputError(directory, "exists and is not a USVLM model directory; "
                                     "refusing to replace it")


def save_checkpoint(directory: str | os.PathLike[str],
                    state_dict_parts: Mapping[str, Mapping[str, Tensor]],
                    manifest: Mapping[str, Any], overwrite: bool = False,
                    extra_files: Mapping[str, str | os.PathLike[str]] | None = None) -> Path:
    """Write a model directory; returns its path.

    `state_dict_parts`: part name -> state dict, e.g. {"adapters": ..., "heads.segmentation": ...};
    keys are stored as "<part>.<key>". `manifest` gets `format_version` (if absent) and `files`
    (sha256 and size of every file) filled in and must then satisfy the schema.
    `extra_files`: name -> source path of further files to copy in (e.g. a prompt bank).
    """
    directory = Path(directory)
    extra = {name: Path(src) for name, src in (extra_files or {}).items()}
    for name in extra:
        if name in (WEIGHTS_NAME, MANIFEST_NAME, DIGEST_NAME) or Path(name).name != name or name.startswith("."):
            raise ValueError(f"invalid extra file name {name!r}")
        if not extra[name].is_file():
            raise CheckpointError(extra[name], f"missing (to be stored in the model as {name})")
    # Check everything cheap before writing weights that can be large.
    placeholder = {"sha256": "0" * 64, "bytes": 0}
    validate_manifest(_prepare_manifest(manifest, {n: placeholder for n in [WEIGHTS_NAME, *extra]}),
                      directory / MANIFEST_NAME)
    flat = flatten_parts(state_dict_parts)
    _check_target(directory, overwrite)

    tmp = _sibling(directory, "tmp")
    tmp.mkdir()  # unlike mkdtemp, honours the umask: a shared model stays readable by others
    try:
        weights = tmp / WEIGHTS_NAME
        safetensors.torch.save_file(flat, str(weights), metadata={
            "format": "pt", "usvlm.format_version": str(FORMAT_VERSION),
            _PARTS_KEY: json.dumps(list(state_dict_parts))})
        for name, src in extra.items():
            shutil.copyfile(src, tmp / name)
        files = {name: _file_entry(tmp / name) for name in [WEIGHTS_NAME, *extra]}
        # No atomic_output needed inside the temporary directory: renaming it is the atomic step.
        text = manifest_text(_prepare_manifest(manifest, files), directory / MANIFEST_NAME)
        (tmp / MANIFEST_NAME).write_bytes(text.encode("utf-8"))
        (tmp / DIGEST_NAME).write_text(digest_line(text.encode("utf-8")), encoding="utf-8")
        # safetensors writes 0600 files; a model shared by several users must stay readable.
        mode = default_file_mode()
        for name in [WEIGHTS_NAME, MANIFEST_NAME, DIGEST_NAME, *extra]:
            os.chmod(tmp / name, mode)
        _move_into_place(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _sibling(directory: Path, kind: str) -> Path:
    """An unused hidden name beside `directory`."""
    return directory.parent / f".{directory.name}.{uuid.uuid4().hex[:12]}.{kind}"


def _move_into_place(tmp: Path, directory: Path) -> None:
    if not directory.exists():
        os.rename(tmp, directory)
        return
    # Replace: move the old model aside first so it can be restored if the rename fails.
    old = _sibling(directory, "old")
    os.rename(directory, old)
    try:
        os.rename(tmp, directory)
    except BaseException:
        os.rename(old, directory)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _verify_files(root: Path, manifest: dict[str, Any]) -> None:
    for name, entry in manifest["files"].items():
        path = root / name
        if not path.is_file():
            raise CheckpointError(path, f"missing (listed in {MANIFEST_NAME})")
        size = path.stat().st_size
        if size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
            found = f"{size} bytes" if size != entry["bytes"] else "different sha256"
            raise CheckpointError(path, f"does not match {MANIFEST_NAME} ({found}): the file was "
                                        f"changed or damaged after the model was saved; "
                                        f"refusing to load it")


def _not_safetensors(path: Path, error: Exception) -> CheckpointError:
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80" or head == b"PK\x03\x04":
        return CheckpointError(path, "is a pickle / torch.save file, not safetensors; USVLM never "
                                     "unpickles model files (convert it with a trusted tool)")
    return CheckpointError(path, f"not a valid safetensors file ({error})")


def _read_header(path: Path) -> tuple[list[str], dict[str, tuple[int, ...]]]:
    """Part names and flat key -> shape from the safetensors header, without reading any tensor."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            names = json.loads((f.metadata() or {}).get(_PARTS_KEY, "null"))
            shapes = {key: tuple(int(n) for n in f.get_slice(key).get_shape()) for key in f.keys()}
    except (safetensors.SafetensorError, OSError, ValueError, RecursionError) as e:
        raise _not_safetensors(path, e) from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(path, f"has no '{_PARTS_KEY}' metadata (not written by USVLM)")
    for key in shapes:
        if not any(key.startswith(n + ".") for n in names):
            raise CheckpointError(path, f"key {key!r} belongs to none of the parts {names}")
    return names, shapes


def _read_parts(path: Path, names: list[str]) -> Parts:
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            flat = {key: f.get_tensor(key) for key in f.keys()}
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise _not_safetensors(path, e) from None
    parts: Parts = {name: {} for name in names}
    for key, tensor in flat.items():
        part = next(n for n in names if key.startswith(n + "."))
        parts[part][key[len(part) + 1:]] = tensor
    return parts


def check_shapes(path: Path, found: Mapping[str, tuple], expected: Mapping[str, tuple]) -> None:
    problems = [f"{key} is missing" if key not in found else
                f"{key} has shape {found[key]}, expected {tuple(shape)}"
                for key, shape in expected.items() if found.get(key) != tuple(shape)]
    if problems:
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise CheckpointError(path, "does not fit this model: "
                                    + "; ".join(problems[:_MAX_LISTED]) + more)


@dataclass
class Checkpoint:
    """A model directory whose files all checked out; its tensors are not read yet."""

    manifest: dict[str, Any]
    manifest_path: Path
    weights: Path
    part_names: list[str]
    shapes: dict[str, tuple[int, ...]]  # flat key -> shape, from the safetensors header

    def parts(self, expected_shapes: Mapping[str, tuple] | None = None) -> Parts:
        """{part: state dict} on the CPU, after checking `expected_shapes` against the header."""
        if expected_shapes is not None:
            check_shapes(self.weights, self.shapes, expected_shapes)
        return _read_parts(self.weights, self.part_names)


def open_checkpoint(directory_or_manifest_path: str | os.PathLike[str]) -> Checkpoint:
    """Check a model directory without reading its tensors.

    Checks, in order: the manifest is a regular file of bounded size, valid JSON of a known
    format version satisfying the schema; presence, size and sha256 of every listed file; that
    the weights are safetensors written by USVLM; and that `manifest.sha256` vouches for the
    manifest, before anything in it is used to build a model. Each failure raises
    `CheckpointError` naming the file.
    """
    path = Path(directory_or_manifest_path)
    if not os.path.lexists(path):
        raise CheckpointError(path, "no such model directory or manifest")
    is_dir = path.is_dir()
    root = path if is_dir else path.parent
    manifest_path = root / MANIFEST_NAME if is_dir else path
    if is_dir and not os.path.lexists(manifest_path):
        raise CheckpointError(path, f"not a USVLM model directory ({MANIFEST_NAME} is missing)")
    data = read_bounded_file(manifest_path, "model manifest")
    manifest = parse_manifest(data, manifest_path)
    _verify_files(root, manifest)
    weights = root / WEIGHTS_NAME
    names, shapes = _read_header(weights)
    verify_manifest_digest(manifest_path, data)
    return Checkpoint(manifest, manifest_path, weights, names, shapes)


def load_checkpoint(directory_or_manifest_path: str | os.PathLike[str],
                    expected_shapes: Mapping[str, tuple] | None = None,
                    ) -> tuple[dict[str, Any], Parts]:
    """Read and check a model directory -> (manifest, {part: state dict}) on the CPU.

    See `open_checkpoint` for the checks; `expected_shapes` (flat key -> shape, see
    `shapes_of()`) is compared with the weights' header before any tensor is read.
    """
    checkpoint = open_checkpoint(directory_or_manifest_path)
    return checkpoint.manifest, checkpoint.parts(expected_shapes)

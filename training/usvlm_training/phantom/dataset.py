"""Write a phantom data set: PNG images and masks, samples.jsonl, splits and dataset.json.

The set is built in a temporary sibling folder and renamed into place at the end, so an
interrupted run (exception, Ctrl-C) never leaves a half-written data set behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage import io as skio
from tqdm import tqdm

from usvlm.io.atomic import default_file_mode
from usvlm.errors import InputError, OutputError

from .config import DEFAULT_CONFIG, ORGANS, PROBES, PhantomConfig
from .probe import check_size
from .sample import GENERATOR, VERSION, PhantomSample, generate_sample

_SPLIT_STREAM = 0x5917   # extra seed word: the split permutation is its own random stream


def _validate(out: Path, count: int, size, splits: Sequence[float], overwrite: bool,
              organ: str | Sequence[str] | None, probe: str | None) -> None:
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 1:
        raise InputError(None, f"count must be a positive integer, got {count!r}")
    if size is not None:
        try:
            check_size(size, DEFAULT_CONFIG.geometry)
        except ValueError as exc:
            raise InputError(None, f"size: {exc}") from None
    if len(splits) != 3 or min(splits) < 0 or not math.isclose(sum(splits), 1.0, abs_tol=1e-6):
        raise InputError(None, f"splits must be three non-negative fractions summing to 1, got {splits}")
    for one in _organs(organ):
        if one not in ORGANS:
            raise InputError(None, f"organ must be one of {', '.join(ORGANS)}, got {one!r}")
    if probe is not None and probe not in PROBES:
        raise InputError(None, f"probe must be one of {', '.join(PROBES)}, got {probe!r}")
    if out.exists() and not out.is_dir():
        raise OutputError(out, "exists and is not a folder")
    if out.is_dir():
        _check_not_in_use(out)  # an existing folder is moved aside and replaced
        if any(out.iterdir()):
            if not overwrite:
                raise OutputError(out, "folder is not empty (ask for overwrite to replace it)")
            _check_replaceable(out)
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(out, f"parent folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(out, f"parent folder {parent} is not writable")


def _check_not_in_use(out: Path) -> None:
    """The folder the user works in (`--out .`) or one of its parents is never replaced."""
    here = Path.cwd().resolve()
    target = out.resolve()
    if target == here or target in here.parents:
        raise OutputError(out, "is the current folder or one of its parents; refusing to replace it "
                               "(give a new folder, e.g. --out phantoms)")


def _check_replaceable(out: Path) -> None:
    """Overwrite replaces only a phantom data set this generator wrote, never any other folder:
    a wrong path must not cost the user's files."""
    try:
        made_here = json.loads((out / "dataset.json").read_text(encoding="utf-8")).get("generator")
    except (OSError, ValueError, AttributeError):
        made_here = None
    if made_here != GENERATOR:
        raise OutputError(out, "is not a phantom data set written by this generator (no dataset.json "
                               f"of {GENERATOR}); refusing to replace it")


def _organs(organ: str | Sequence[str] | None) -> list[str]:
    return [] if organ is None else [organ] if isinstance(organ, str) else list(organ)


def split_ids(ids: Sequence[str], seed: int, splits: Sequence[float]) -> dict[str, list[str]]:
    """Deterministic train / val / test partition of the ids (a permutation drawn from the seed)."""
    order = np.random.default_rng([seed, _SPLIT_STREAM, len(ids)]).permutation(len(ids))
    n_train = int(round(splits[0] * len(ids)))
    n_val = min(int(round(splits[1] * len(ids))), len(ids) - n_train)
    shuffled = [ids[i] for i in order]
    parts = {"train": shuffled[:n_train], "val": shuffled[n_train:n_train + n_val],
             "test": shuffled[n_train + n_val:]}
    return {name: sorted(members) for name, members in parts.items()}


def _record(sample: PhantomSample, sample_id: str, folder: Path) -> dict:
    """Write one sample's PNGs under `folder`; return its samples.jsonl entry (relative paths)."""
    image_path = f"images/{sample_id}.png"
    skio.imsave(folder / image_path, sample.image, check_contrast=False)
    structures = []
    for k, (mask, info) in enumerate(zip(sample.masks, sample.structures)):
        mask_path = f"masks/{sample_id}_{k}.png"
        skio.imsave(folder / mask_path, mask.astype(np.uint8) * 255, check_contrast=False)
        structures.append({"mask": mask_path, "class": info["class"],
                           "malignancy": info["malignancy"], "kind": info["kind"],
                           "description": info["description"], "attributes": info["attributes"],
                           "bbox": info["bbox"], "area_px": info["area_px"]})
    return {"id": sample_id, "image": image_path, "organ": sample.organ, "probe": sample.probe,
            "spacing_mm": sample.spacing_mm, "depth_mm": sample.depth_mm,
            "width_mm": sample.width_mm, "rows": int(sample.image.shape[0]),
            "columns": int(sample.image.shape[1]), "seed": sample.seed, "index": sample.index,
            "has_overlay": sample.has_overlay, "overlays": sample.overlay_boxes,
            "geometry": sample.geometry, "acquisition": sample.acquisition,
            "structures": structures}


def _install(tmp: Path, out: Path) -> None:
    """Move the finished set into place; an existing (overwritten) folder goes only afterwards."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_dataset(out_dir: str | os.PathLike, count: int, seed: int, size: int | None = 256,
                  splits: Sequence[float] = (0.8, 0.1, 0.1), progress: bool = True, *,
                  overwrite: bool = False, organ: str | Sequence[str] | None = None,
                  probe: str | None = None, config: PhantomConfig = DEFAULT_CONFIG) -> dict:
    """Generate `count` phantoms (indices 0..count-1 of series `seed`) into `out_dir`.

    organ: one organ, several (taken in turn: image i gets organs[i % len(organs)], e.g. a
    restricted domain "breast and neck"), or None for all, drawn at random.

    size: square side in px, or None for random 256-640 px sides. config: the parameter ranges;
    VARIETY_CONFIG widens the nominal v1 ones (VarietyRanges), for training data that does not
    teach a model this one renderer. Returns a summary with the number written, the elapsed time
    and the throughput (images/s).
    """
    out = Path(out_dir).absolute()
    _validate(out, count, size, splits, overwrite, organ, probe)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    file_mode = default_file_mode()
    os.chmod(tmp, file_mode | (file_mode & 0o444) >> 2)  # as mkdir would (mkdtemp makes it 0700)
    start = time.perf_counter()
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        width = max(6, len(str(count - 1)))
        ids, structures = [], 0
        with open(tmp / "samples.jsonl", "w", encoding="utf-8") as jsonl:
            organs = _organs(organ)
            for index in tqdm(range(count), desc="phantoms", unit="img", disable=not progress):
                sample = generate_sample(seed, index, size=size, probe=probe, config=config,
                                         organ=organs[index % len(organs)] if organs else None)
                sample_id = f"{index:0{width}d}"
                record = _record(sample, sample_id, tmp)
                jsonl.write(json.dumps(record) + "\n")
                ids.append(sample_id)
                structures += len(sample.masks)
        for name, members in split_ids(ids, seed, splits).items():
            (tmp / f"{name}.txt").write_text("".join(f"{m}\n" for m in members), encoding="utf-8")
        elapsed = time.perf_counter() - start
        manifest = {"generator": GENERATOR, "version": VERSION, "count": count, "seed": seed,
                    "size": size, "splits": list(splits),
                    "organ": organ if organ is None or isinstance(organ, str) else list(organ), "probe": probe,
                    "variety": config.variety is not None,
                    "structures": structures,
                    "bbox": "x0, y0, x1, y1 in pixels; x1 and y1 exclusive",
                    "masks": "one binary PNG (0 / 255) per structure, on the image grid"}
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _install(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return {"out_dir": str(out), "count": count, "structures": structures,
            "seconds": elapsed, "images_per_s": count / elapsed if elapsed > 0 else float("inf")}

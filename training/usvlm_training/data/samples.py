"""Training samples: one image, its structures (masks, class, malignancy, description), its spacing.

    data = open_dataset("cohort/")          # layout detected: paper, phantom, Slicer exports or real
    for sample in data.split("train"):
        image, masks = sample.load_image(), sample.load_masks()
    data = open_datasets(["phantoms/", "real/busi", "real/hc18"])   # several folders as one

Four layouts are read (see `layouts.py`): the reference paper's (`images/`, `masks/`, split files,
`labels.csv`), the phantom generator's (`samples.jsonl`), a folder of Slicer exports (image +
`<stem>.seg.nrrd`) and re-packed real data sets (`manifest.csv` with `images/` and `masks/`, or a
folder of such folders: BUSI, HC18), split by group of near-duplicate images, never by image.
Broken samples (missing or mis-sized mask, unreadable image, unknown label or split id) are all
named: `on_error="raise"` stops with one InputError listing every one of them, `on_error="skip"`
drops them with a warning and keeps the list in `SampleSet.problems`.

Spacing is (row, column) in mm, the DICOM PixelSpacing order, which is also numpy's axis order and
what `usvlm_training.metrics` takes.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from usvlm.errors import InputError
from usvlm.io import USImage, read_image, read_seg_nrrd
from usvlm.io.raster_reader import RASTER_SUFFIXES

Layout = Literal["paper", "phantom", "slicer", "real", "mixed"]
OnError = Literal["raise", "skip"]
SPLITS = ("train", "val", "test")
DEFAULT_SPLITS = (0.8, 0.1, 0.1)
DEFAULT_VAL_FRACTION = 0.2  # share of the groups a real data set puts in "val" (it has no "test")
# The real layout's split seed unless one is given: fixed, not the training seed, so runs with
# other seeds validate on the same groups and an evaluation can name them.
REAL_SPLIT_SEED = 2026

# Malignancy -> class label of the classification head; -1 stands for "unknown".
LABELS: dict[str, int] = {"benign": 0, "malignant": 1}
UNKNOWN_LABEL = -1


def label_of(malignancy: str | None) -> int:
    """0 benign, 1 malignant, -1 unknown."""
    return LABELS.get(malignancy, UNKNOWN_LABEL) if malignancy else UNKNOWN_LABEL


def parse_malignancy(value: str) -> str | None:
    """'benign' / 'malignant' from the spellings found in label files (benign, Malignant, 0, 1);
    None when the value is none of them."""
    key = str(value).strip().lower()
    return {"benign": "benign", "0": "benign", "malignant": "malignant", "1": "malignant"}.get(key)


def class_from_segment_name(name: str) -> str:
    """An annotator's segment name as a class name: lower case, single spaces, without the
    numbering Slicer and annotators add ("Cyst_2", "cyst (3)", "Segment 1" -> "cyst", "segment")."""
    text = re.sub(r"[\s_]+", " ", name).strip().lower()
    text = re.sub(r"(\s*\(\d+\)|[\s-]+\d+)$", "", text).strip()
    return text or name.strip().lower()


def malignancy_in_name(name: str) -> str | None:
    words = set(re.findall(r"[a-z]+", name.lower()))
    if "malignant" in words and "benign" not in words:
        return "malignant"
    if "benign" in words and "malignant" not in words:
        return "benign"
    return None


@dataclass(frozen=True)
class Structure:
    """One annotated structure of an image.

    The mask comes from `mask` (in memory), or from `mask_path`: a binary image, or a .seg.nrrd
    when `segment` names one of its segments. `offset` (row, column) places a mask smaller than
    the image (a Slicer segmentation saved with a cropped extent) on the image grid.
    """

    class_name: str
    mask_path: Path | None = None
    segment: str | None = None
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    malignancy: str | None = None  # "benign", "malignant" or None (unknown)
    description: str | None = None
    name: str | None = None  # the segment name as written by the annotator
    offset: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.mask is None and self.mask_path is None:
            raise ValueError(f"structure {self.class_name!r} needs a mask or a mask path")
        if self.malignancy not in (None, *LABELS):
            raise ValueError(f"malignancy must be benign, malignant or None, got {self.malignancy!r}")

    @property
    def label(self) -> int:
        return label_of(self.malignancy)

    @property
    def finding(self) -> str:
        """The class qualified by its malignancy ("malignant thyroid nodule"), when not implied."""
        if self.malignancy is None or malignancy_in_name(self.class_name):
            return self.class_name
        return f"{self.malignancy} {self.class_name}"


@dataclass(frozen=True)
class Sample:
    """One image and its structures. `shape` (rows, columns) is checked against every mask.

    `absent`: the classes known NOT to be in the image, for prompts with empty targets. None (the
    phantom, paper and Slicer layouts) means a closed world: every class of the data set that the
    image does not hold is absent. A tuple (real data) is an open world: only those classes are
    known absent (a normal breast image holds no breast mass, a fetal head image no thyroid
    nodule); a class merely missing from the annotation is never taken for absent.
    `group`: images sharing it are near-duplicates (split together). `captions`: image-level
    texts for image-text alignment where structures carry no description (real data)."""

    id: str
    image_path: Path
    structures: tuple[Structure, ...]
    spacing_mm: tuple[float, float] | None = None  # (row, column); None: not calibrated
    organ: str | None = None
    probe: str | None = None
    shape: tuple[int, int] | None = None
    group: str | None = None
    absent: tuple[str, ...] | None = None
    captions: tuple[str, ...] = ()

    @property
    def label(self) -> int:
        """Image-level label: 1 if any structure is malignant, 0 if all are benign, else -1."""
        return combined_label(self.structures)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.class_name for s in self.structures))

    def load_image(self) -> USImage:
        """The image, with the data set's spacing when it has one (PNGs carry none)."""
        if self.spacing_mm is None:
            return read_image(self.image_path)
        row, col = self.spacing_mm
        return read_image(self.image_path, spacing_mm=(col, row))

    def load_masks(self) -> list[np.ndarray]:
        """Boolean (rows, columns) masks on the image grid, one per structure, in order."""
        segmentations: dict[Path, object] = {}  # each .seg.nrrd is read once
        return [load_mask(s, self.shape, segmentations) for s in self.structures]


def combined_label(structures: Sequence[Structure]) -> int:
    """1 if any structure is malignant, 0 if all are benign, else -1 (unknown)."""
    labels = {s.label for s in structures}
    return 1 if 1 in labels else (0 if labels == {0} else UNKNOWN_LABEL)


def load_mask(structure: Structure, shape: tuple[int, int] | None = None,
              _segmentations: dict | None = None) -> np.ndarray:
    """The structure's boolean mask, placed on an image grid of `shape` when given."""
    if structure.mask is not None:
        mask = np.asarray(structure.mask) != 0
    elif structure.segment is not None:
        path = Path(structure.mask_path)  # type: ignore[arg-type]
        cache = {} if _segmentations is None else _segmentations
        if path not in cache:
            cache[path] = read_seg_nrrd(path)
        try:
            mask = cache[path].segment(structure.segment).mask  # type: ignore[attr-defined]
        except KeyError as exc:
            raise InputError(path, str(exc.args[0])) from None
    else:
        mask = read_binary_mask(Path(structure.mask_path))  # type: ignore[arg-type]
    if shape is None or mask.shape == tuple(shape):
        return mask
    return place(mask, structure.offset, shape, structure.mask_path)


def place(mask: np.ndarray, offset: tuple[int, int], shape: tuple[int, int],
          source: str | os.PathLike | None = None) -> np.ndarray:
    """A mask of a sub-grid pasted at `offset` (row, column) into a zero mask of `shape`."""
    r, c = offset
    h, w = mask.shape
    if r < 0 or c < 0 or r + h > shape[0] or c + w > shape[1]:
        raise InputError(source, f"mask of {w} x {h} pixels at offset {offset} does not fit the "
                                 f"image of {shape[1]} x {shape[0]} pixels")
    out = np.zeros(shape, dtype=bool)
    out[r:r + h, c:c + w] = mask
    return out


def read_binary_mask(path: Path) -> np.ndarray:
    """A mask image (0 / 255, 0 / 1, grey or colour) as a boolean (rows, columns) array."""
    image = read_image(path).grey()
    if image.is_cine:
        raise InputError(path, f"mask has {image.frames} frames; expected a single 2D mask")
    return image.pixels > 0


def image_shape(path: Path) -> tuple[int, int]:
    """(rows, columns) of an image file; raster files from their header only (fast)."""
    if path.name.lower().endswith(RASTER_SUFFIXES):
        try:
            from PIL import Image

            with Image.open(path) as im:
                width, height = im.size
            return (int(height), int(width))
        except Exception:  # noqa: BLE001 - the full reader gives the precise error
            pass
    image = read_image(path)
    if image.is_cine:
        raise InputError(path, f"image has {image.frames} frames; expected a single 2D image")
    return image.frame_shape


# -- the data set -------------------------------------------------------------------------------

@dataclass
class SampleSet:
    """The samples of one data folder, its splits, and the problems found while reading it."""

    root: Path
    layout: Layout
    samples: list[Sample]
    splits: dict[str, list[str]]
    split_source: Literal["files", "seeded", "groups", "mixed"] = "files"
    problems: list[str] = field(default_factory=list)
    parts: list[dict] = field(default_factory=list)  # a merged set: the summary of each folder

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, sample_id: str) -> Sample:
        return self._by_id[sample_id]

    @cached_property
    def _by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted({c for s in self.samples for c in s.classes}))

    def split(self, name: str, *, allow_empty: bool = False) -> list[Sample]:
        """The samples of split `name`; an empty split is an error unless allowed, so training
        never silently runs on nothing."""
        if name not in self.splits:
            raise InputError(self.root, f"no split {name!r}; splits: {', '.join(self.splits)}")
        by_id = self._by_id
        samples = [by_id[i] for i in self.splits[name]]
        if not samples and not allow_empty:
            raise InputError(self.root, f"split {name!r} is empty")
        return samples

    def summary(self) -> dict:
        """Counts for logs and the model manifest's provenance."""
        out = {"root": str(self.root), "layout": self.layout, "samples": len(self.samples),
               "structures": sum(len(s.structures) for s in self.samples),
               "splits": {k: len(v) for k, v in self.splits.items()}, "split_source": self.split_source,
               "classes": dict(sorted(Counter(st.class_name for s in self.samples
                                              for st in s.structures).items())),
               "labels": dict(sorted(Counter(s.label for s in self.samples).items())),
               "skipped": len(self.problems)}
        if any(s.group is not None for s in self.samples):
            out["groups"] = len({s.group for s in self.samples})
            out["without_structures"] = sum(not s.structures for s in self.samples)
        if self.parts:
            out["parts"] = self.parts
        return out


def detect_layout(root: str | os.PathLike) -> Layout:
    """'phantom' (samples.jsonl), 'real' (manifest.csv with images/ and masks/, or sub-folders of
    that kind), 'paper' (images/ and masks/) or 'slicer' (*.seg.nrrd files)."""
    from .layouts import real_folders

    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "data set folder not found" if not root.exists() else "not a folder")
    if (root / "samples.jsonl").is_file():
        return "phantom"
    if real_folders(root):
        return "real"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "paper"
    if next(root.rglob("*.seg.nrrd"), None) is not None:
        return "slicer"
    raise InputError(root, "not a data set: expected samples.jsonl (phantom), manifest.csv with "
                           "images/ and masks/ (real), images/ and masks/ folders (paper layout) or "
                           "image files with <name>.seg.nrrd (Slicer exports)")


def open_dataset(path: str | os.PathLike, *, layout: Layout | None = None, on_error: OnError = "raise",
                 classes: Collection[str] | None = None, class_map: Mapping[str, str] | None = None,
                 default_class: str = "lesion", organ: str | None = None,
                 spacing_mm: tuple[float, float] | None = None, seed: int = 0,
                 splits: Sequence[float] = DEFAULT_SPLITS, check_files: bool = True,
                 val_fraction: float = DEFAULT_VAL_FRACTION, split_seed: int | None = None) -> SampleSet:
    """Read a data folder (layout detected unless given).

    classes: the allowed class names (others are bad samples); class_map: renames classes, e.g.
    annotators' segment names to the model's ("Nodule" -> "thyroid nodule"); default_class: the
    class of the paper layout's masks, which do not name it; spacing_mm (row, column): for samples
    whose files carry none; seed, splits: the seeded split when the folder has no split files;
    check_files: open every image and mask header to check presence and size.
    Real layout (no split files): whole groups go to "train" or "val" (`val_fraction` of the
    groups of each label, chosen by a hash of the group id and `split_seed`, default
    REAL_SPLIT_SEED, not `seed`); "test" is always empty (the test split of those data sets is
    held back elsewhere).
    """
    from . import layouts  # readers use the records above

    root = Path(path).absolute()
    layout = layout or detect_layout(root)
    if on_error not in ("raise", "skip"):
        raise InputError(None, f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if layout not in ("paper", "phantom", "slicer", "real"):
        raise InputError(None, f"layout must be paper, phantom, slicer or real, got {layout!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise InputError(None, f"val_fraction must be in [0, 1), got {val_fraction}")
    options = layouts.ReadOptions(class_map=dict(class_map or {}), default_class=default_class,
                                  organ=organ, spacing_mm=spacing_mm, check_files=check_files,
                                  val_fraction=float(val_fraction),
                                  split_seed=(REAL_SPLIT_SEED if layout == "real" else seed)
                                  if split_seed is None else int(split_seed))
    reader = {"paper": layouts.read_paper, "phantom": layouts.read_phantom,
              "slicer": layouts.read_slicer, "real": layouts.read_real}[layout]
    try:
        samples, problems = reader(root, options)
    except (OSError, UnicodeDecodeError) as exc:  # e.g. a layout forced on a folder of another
        raise InputError(root, f"cannot read it as a {layout} data set ({exc})") from exc
    if classes is not None:
        allowed = {c.lower() for c in classes}
        for s in samples:
            for st in s.structures:
                if st.class_name.lower() not in allowed:
                    problems.append((s.id, f"class {st.class_name!r} is not in the class list "
                                           f"({', '.join(sorted(allowed))})"))
    bad = {where for where, _ in problems}
    samples = sorted((s for s in samples if s.id not in bad), key=lambda s: s.id)
    if layout == "real" and not any((root / f"{name}.txt").is_file() for name in SPLITS):
        split_ids, split_problems, source = layouts.group_splits(samples, options), [], "groups"
    else:
        split_ids, split_problems, source = layouts.read_splits(root, [s.id for s in samples], bad,
                                                                seed, splits)
        if layout == "real":
            split_problems += layouts.group_leaks(samples, split_ids)
    problems += split_problems
    bad |= {where for where, _ in split_problems}  # e.g. a sample listed in two splits
    samples = [s for s in samples if s.id not in bad]
    split_ids = {name: [i for i in ids if i not in bad] for name, ids in split_ids.items()}
    messages = [f"{where}: {problem}" for where, problem in problems]
    if messages and on_error == "raise":
        raise InputError(root, f"{len(messages)} problem(s) in the data set: " + "; ".join(messages))
    if messages:
        warnings.warn(f"{root}: {len(messages)} problem(s), the samples concerned are skipped: "
                      + "; ".join(messages[:5]) + (" ..." if len(messages) > 5 else ""), stacklevel=2)
    if not samples:
        raise InputError(root, "the data set has no usable samples")
    return SampleSet(root, layout, samples, split_ids, source, messages)


def open_datasets(paths: str | os.PathLike | Sequence[str | os.PathLike], **options) -> SampleSet:
    """One folder (as `open_dataset`) or several read as one data set: e.g. phantoms and real
    folders, `open_datasets(["phantoms", "real/busi", "real/hc18"])`. Each folder is read and
    split on its own (`options` apply to each); see `merge_datasets`."""
    if isinstance(paths, (str, os.PathLike)):
        return open_dataset(paths, **options)
    paths = list(paths)
    if not paths:
        raise InputError(None, "no data set folder given")
    if len(paths) == 1:
        return open_dataset(paths[0], **options)
    return merge_datasets([open_dataset(p, **options) for p in paths])


def merge_datasets(sets: Sequence[SampleSet]) -> SampleSet:
    """Several data sets as one: sample ids become `<folder name>/<id>` (two folders of one name
    get `-2`, `-3`), each split is the union of the folders' splits, `parts` keeps each folder's
    summary. A layout with a closed world (phantoms: every class of the data set that an image
    does not hold is absent) keeps it over the merged class list; real samples list their own."""
    import dataclasses

    if not sets:
        raise InputError(None, "no data sets to merge")
    if len(sets) == 1:
        return sets[0]
    prefixes: list[str] = []
    for data in sets:
        name = data.root.name or "data"
        prefix, k = name, 1
        while prefix in prefixes:
            k += 1
            prefix = f"{name}-{k}"
        prefixes.append(prefix)
    samples: list[Sample] = []
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for prefix, data in zip(prefixes, sets):
        samples += [dataclasses.replace(s, id=f"{prefix}/{s.id}") for s in data.samples]
        for name, ids in data.splits.items():
            splits.setdefault(name, []).extend(f"{prefix}/{i}" for i in ids)
    roots = [d.root for d in sets]
    try:
        root = Path(os.path.commonpath(roots))
    except ValueError:  # different drives
        root = roots[0].parent
    sources = {d.split_source for d in sets}
    return SampleSet(root, "mixed", samples, splits,
                     sources.pop() if len(sources) == 1 else "mixed",  # type: ignore[arg-type]
                     [p for d in sets for p in d.problems], [d.summary() for d in sets])

"""Readers of the four data set layouts, of split files and labels.csv, and the group split.

Each reader returns the samples it could build and a list of (where, problem) pairs; `where` is
the sample id when a sample is bad, so `open_dataset` can skip exactly those or stop naming them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from usvlm.errors import InputError
from usvlm.io import read_image, read_seg_nrrd
from usvlm.io.itk_reader import ITK_SUFFIXES
from usvlm.io.raster_reader import RASTER_SUFFIXES

from ..phantom.dataset import split_ids
from .samples import (DEFAULT_VAL_FRACTION, REAL_SPLIT_SEED, SPLITS, Sample, Structure,
                      class_from_segment_name, image_shape, malignancy_in_name, parse_malignancy,
                      place, read_binary_mask)

Problems = list[tuple[str, str]]
_SUFFIXES = (".seg.nrrd", *ITK_SUFFIXES, *RASTER_SUFFIXES, ".dcm", ".dicom")


# -- what the real layout knows about organs ------------------------------------------------------
# Keys are organ keys: the manifest's organ in lower case, before any parenthesis
# ("fetal head (brain)" -> "fetal head").

# The class of an organ's lesions, for labels that are a malignancy (BUSI benign / malignant): the
# prompt banks' structure names ("Breast mass" in Resources/prompts/breast.json).
REAL_LESION_CLASSES: dict[str, str] = {"breast": "breast mass", "thyroid": "thyroid nodule",
                                       "prostate": "prostate lesion"}
# Labels of images without a finding (empty mask).
NORMAL_LABELS = frozenset({"normal", "none", "negative", "no finding"})
# What an image of an organ labelled normal is known not to hold (default: the organ's lesion).
REAL_NORMAL_ABSENT: dict[str, tuple[str, ...]] = {"breast": ("breast mass", "cyst")}
# Cross-organ negatives: classes an image of the organ cannot show, prompted with empty targets.
# Only safe ones (no lymph node on a breast image: axillary nodes do appear there).
REAL_NEGATIVES: dict[str, tuple[str, ...]] = {
    "breast": ("thyroid nodule", "fetal head"),
    "fetal head": ("breast mass", "thyroid nodule", "lymph node"),
}
REAL_COLUMNS = ("stem", "label", "organ", "group")  # required; pixel_spacing_mm, width, height used too


def organ_key(organ: str | None) -> str:
    """"Fetal head (brain)" -> "fetal head"."""
    return " ".join(re.sub(r"\(.*?\)", " ", organ or "").lower().split())


@dataclass
class ReadOptions:
    class_map: dict[str, str] = field(default_factory=dict)
    default_class: str = "lesion"
    organ: str | None = None
    spacing_mm: tuple[float, float] | None = None  # (row, column)
    check_files: bool = True
    # real layout: the group split (share of the groups in "val", hash seed) and the negatives
    val_fraction: float = DEFAULT_VAL_FRACTION
    split_seed: int = REAL_SPLIT_SEED
    negatives: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(REAL_NEGATIVES))

    def class_name(self, name: str) -> str:
        """Mapped by the exact or the normalised name, else the normalised name."""
        plain = class_from_segment_name(name)
        return self.class_map.get(name, self.class_map.get(plain, plain))


def strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    return name


def _image_files(folder: Path, where: str, problems: Problems) -> dict[str, Path]:
    """id (file name without suffix) -> path, for the image files directly in `folder`.
    Files without a suffix are taken as DICOM; hidden files and other suffixes are ignored."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        lower = path.name.lower()
        if path.name.startswith(".") or not path.is_file():
            continue
        if not (lower.endswith(_SUFFIXES) or "." not in path.name):
            continue
        stem = strip_suffix(path.name)
        if stem in found:
            problems.append((stem, f"two files in {where}/ for one sample: {found[stem].name}, {path.name}"))
        found[stem] = path
    return found


def _checked_shape(sample_id: str, image: Path, structures: Sequence[Structure],
                   problems: Problems) -> tuple[int, int] | None:
    """The image's (rows, columns), after checking every mask file has the same size."""
    try:
        shape = image_shape(image)
        for st in structures:
            if st.mask_path is not None and st.segment is None:
                mask_shape = image_shape(st.mask_path)
                if mask_shape != shape:
                    problems.append((sample_id, f"mask {st.mask_path.name} is {mask_shape[1]} x "
                                                f"{mask_shape[0]} pixels, the image {shape[1]} x {shape[0]}"))
                    return None
        return shape
    except InputError as exc:
        problems.append((sample_id, str(exc)))
        return None


# -- labels.csv and split files -----------------------------------------------------------------

def _resolve(entry: str, ids: set[str]) -> str | None:
    """The sample id a split or label file means by `entry` (an id, a file name, a relative path)."""
    entry = entry.strip().replace("\\", "/")
    for candidate in (entry, strip_suffix(entry), strip_suffix(entry.rsplit("/", 1)[-1])):
        if candidate in ids:
            return candidate
    return None


def read_labels(path: Path, ids: set[str]) -> tuple[dict[str, str], Problems]:
    """labels.csv (columns image, label: benign / malignant or 0 / 1) -> id -> malignancy."""
    if not path.is_file():
        return {}, []
    labels: dict[str, str] = {}
    problems: Problems = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        if "image" not in columns or "label" not in columns:
            raise InputError(path, f"needs the columns image and label, has {', '.join(columns) or 'none'}")
        for line, row in enumerate(reader, start=2):
            entry, value = row[columns["image"]] or "", row[columns["label"]] or ""
            sample_id = _resolve(entry, ids)
            if sample_id is None:
                problems.append((f"{path.name} line {line}", f"no sample for image {entry!r}"))
                continue
            malignancy = parse_malignancy(value)
            if malignancy is None:
                problems.append((sample_id, f"{path.name} line {line}: label {value!r} is not "
                                            "benign, malignant, 0 or 1"))
                continue
            labels[sample_id] = malignancy
    return labels, problems


def read_splits(root: Path, ids: Sequence[str], bad: set[str], seed: int, fractions: Sequence[float]
                ) -> tuple[dict[str, list[str]], Problems, str]:
    """train / val / test ids from train.txt, val.txt, test.txt (any present; one id or file name
    a line, # comments), else a seeded split. Ids of samples already found bad are dropped."""
    files = {name: root / f"{name}.txt" for name in SPLITS if (root / f"{name}.txt").is_file()}
    if not files:
        if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
            raise InputError(None, f"splits must be three fractions summing to 1, got {tuple(fractions)}")
        return split_ids(list(ids), seed, fractions), [], "seeded"
    known, problems = set(ids), []
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    member: dict[str, str] = {}
    for name, path in files.items():
        for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            entry = text.split("#", 1)[0].strip()
            if not entry:
                continue
            sample_id = _resolve(entry, known) or _resolve(entry, bad)
            if sample_id is None:
                problems.append((f"{path.name} line {line}", f"unknown sample id {entry!r}"))
            elif sample_id in bad:
                continue
            elif sample_id in member:
                if member[sample_id] != name:  # the same sample in two splits leaks test data
                    problems.append((sample_id, f"listed in both {member[sample_id]}.txt and {name}.txt"))
            else:
                member[sample_id] = name
                splits[name].append(sample_id)
    return splits, problems, "files"


# -- the three layouts --------------------------------------------------------------------------

def read_paper(root: Path, opt: ReadOptions) -> tuple[list[Sample], Problems]:
    """images/<id>.<ext> with masks/<id>.<ext> (or <id>_mask.<ext>), optional labels.csv."""
    problems: Problems = []
    images = _image_files(root / "images", "images", problems)
    masks = _image_files(root / "masks", "masks", problems)
    labels, label_problems = read_labels(root / "labels.csv", set(images))
    problems += label_problems
    used: set[str] = set()
    samples = []
    for sample_id, image in images.items():
        mask_id = sample_id if sample_id in masks else f"{sample_id}_mask"
        if mask_id not in masks:
            problems.append((sample_id, f"no mask masks/{sample_id}.* for images/{image.name}"))
            continue
        used.add(mask_id)
        structure = Structure(opt.class_name(opt.default_class), mask_path=masks[mask_id],
                              malignancy=labels.get(sample_id), name=opt.default_class)
        shape = _checked_shape(sample_id, image, [structure], problems) if opt.check_files else None
        samples.append(Sample(sample_id, image, (structure,), opt.spacing_mm, opt.organ, None, shape))
    for mask_id in sorted(set(masks) - used):
        problems.append((f"masks/{masks[mask_id].name}", "no image with this name in images/"))
    return samples, problems


def inside(root: Path, relative: object) -> Path:
    """`root / relative` when it lies within the data set folder (after resolving `..` and
    symlinks); a record naming a file elsewhere (an absolute path, ../, a link out) is refused, so
    a data set cannot make training read files outside it."""
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise ValueError("a file path must be a non-empty string")
    path = root / relative
    try:
        resolved, base = path.resolve(), root.resolve()
    except (OSError, RuntimeError):
        raise ValueError("a file path cannot be resolved") from None
    if not resolved.is_relative_to(base):
        raise ValueError("a file path leads outside the data set folder")
    return path


def read_phantom(root: Path, opt: ReadOptions) -> tuple[list[Sample], Problems]:
    """samples.jsonl of the phantom generator: one record per image, one mask per structure."""
    problems: Problems = []
    samples = []
    lines = (root / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"samples.jsonl line {number}"
        try:
            record = json.loads(text)
            sample_id = str(record["id"])
            structures = tuple(Structure(
                opt.class_name(s["class"]), mask_path=inside(root, s["mask"]),
                malignancy=s.get("malignancy"), description=s.get("description"), name=s["class"])
                for s in record["structures"])
            spacing = record.get("spacing_mm")
            spacing = opt.spacing_mm if spacing is None else tuple(np.broadcast_to(
                np.asarray(spacing, dtype=float), (2,)).tolist())
            image = inside(root, record["image"])
        except RecursionError:
            problems.append((where, "bad record (JSON nested too deeply)"))
            continue
        except (ValueError, KeyError, TypeError) as exc:
            problems.append((where, f"bad record ({type(exc).__name__}: {str(exc)[:200]})"))
            continue
        shape = _checked_shape(sample_id, image, structures, problems) if opt.check_files else None
        if shape is None and "rows" in record and "columns" in record:
            shape = (int(record["rows"]), int(record["columns"]))
        samples.append(Sample(sample_id, image, structures, spacing,  # type: ignore[arg-type]
                              record.get("organ", opt.organ), record.get("probe"), shape))
    return samples, problems


def _find_image(seg: Path, stem: str) -> Path | list[Path] | None:
    """The image beside `<stem>.seg.nrrd`: `<stem>.<image suffix>` or a suffix-less DICOM file."""
    found = [p for p in seg.parent.iterdir()
             if p.is_file() and p != seg and not p.name.lower().endswith(".seg.nrrd")
             and (p.name == stem or (strip_suffix(p.name) == stem and p.name.lower().endswith(_SUFFIXES)))]
    return found[0] if len(found) == 1 else (found or None)


def _grid_offset(seg_geometry, image) -> tuple[int, int] | None:
    """Where a segmentation grid starts on the image grid, when it is the same lattice."""
    same = (np.allclose(seg_geometry.spacing[:2], image.geometry.spacing[:2], rtol=1e-4)
            and np.allclose(seg_geometry.direction_matrix, image.geometry.direction_matrix, atol=1e-4))
    if not same:
        return None
    i, j, _ = image.geometry.ras_to_ijk_points(np.asarray(seg_geometry.origin))[0]
    if abs(i - round(i)) > 1e-3 or abs(j - round(j)) > 1e-3:
        return None
    return (int(round(j)), int(round(i)))


def read_slicer(root: Path, opt: ReadOptions) -> tuple[list[Sample], Problems]:
    """Every `<stem>.seg.nrrd` under `root` with its image `<stem>.<ext>` in the same folder; the
    id is the path of the stem relative to `root`. Segments are the structures."""
    problems: Problems = []
    found = []
    for seg in sorted(root.rglob("*.seg.nrrd")):
        stem = seg.name[:-len(".seg.nrrd")]
        sample_id = (seg.parent / stem).relative_to(root).as_posix()
        image = _find_image(seg, stem)
        if image is None or isinstance(image, list):
            names = ", ".join(p.name for p in image or [])
            what = f"several image files ({names})" if image else "no image file"
            problems.append((sample_id, f"{what} for {seg.name}"))
            continue
        found.append((sample_id, seg, image))
    labels, label_problems = read_labels(root / "labels.csv", {f[0] for f in found})
    problems += label_problems
    samples = []
    for sample_id, seg, image_path in found:
        try:
            sample = _slicer_sample(sample_id, seg, image_path, labels.get(sample_id), opt)
        except InputError as exc:
            problems.append((sample_id, str(exc)))
            continue
        samples.append(sample)
    return samples, problems


def _slicer_sample(sample_id: str, seg: Path, image_path: Path, label: str | None,
                   opt: ReadOptions) -> Sample:
    image = read_image(image_path)
    if image.is_cine:
        raise InputError(image_path, f"image has {image.frames} frames; expected a single 2D image")
    segmentation = read_seg_nrrd(seg)
    if segmentation.is_cine:
        raise InputError(seg, "segmentation has several frames; expected a single 2D image")
    names = segmentation.names
    if len(set(names)) != len(names):
        raise InputError(seg, f"several segments share a name: {', '.join(names)}")
    offset = (0, 0)
    if segmentation.shape != image.frame_shape:
        grid = _grid_offset(segmentation.geometry, image)
        if grid is None:
            raise InputError(seg, f"segmentation of {segmentation.shape[1]} x {segmentation.shape[0]} "
                                  f"pixels is not on the grid of {image_path.name} "
                                  f"({image.columns} x {image.rows} pixels)")
        offset = grid
    structures = []
    for segment in segmentation.segments:
        if segmentation.shape != image.frame_shape:
            place(segment.mask, offset, image.frame_shape, seg)  # raises when it does not fit
        structures.append(Structure(opt.class_name(segment.name), mask_path=seg, segment=segment.name,
                                    malignancy=malignancy_in_name(segment.name) or label,
                                    name=segment.name, offset=offset))
    if image.geometry.calibrated and image.info.spacing_source != "none":
        spacing = (image.geometry.spacing_y, image.geometry.spacing_x)
    elif segmentation.geometry.spacing[:2] != (1.0, 1.0):  # calibrated by whoever wrote the .seg.nrrd
        spacing = (segmentation.geometry.spacing_y, segmentation.geometry.spacing_x)
    else:
        spacing = opt.spacing_mm
    return Sample(sample_id, image_path, tuple(structures), spacing, opt.organ, None, image.frame_shape)


# -- real data sets: manifest.csv, images/<stem>.png, masks/<stem>_mask.png ----------------------

def _manifest_columns(path: Path) -> set[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()
    return {c.strip().lower() for c in header}


def _is_real(folder: Path) -> bool:
    manifest = folder / "manifest.csv"
    return (manifest.is_file() and (folder / "images").is_dir() and (folder / "masks").is_dir()
            and set(REAL_COLUMNS) <= _manifest_columns(manifest))


def real_folders(root: Path) -> list[Path]:
    """The real data set folders `root` stands for: itself, or its sub-folders of that kind (a
    folder such as real/ holding busi/ and hc18/)."""
    root = Path(root)
    if _is_real(root):
        return [root]
    if not root.is_dir() or (root / "images").is_dir():
        return []
    return sorted(c for c in root.iterdir() if c.is_dir() and not c.name.startswith(".") and _is_real(c))


def parse_spacing(text: str) -> tuple[float, float] | None:
    """"0.144" -> (0.144, 0.144); "0.1 x 0.2", "0.1;0.2", "[0.1, 0.2]" -> (row, column); "" -> None."""
    numbers = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", text or "")
    if not numbers:
        if (text or "").strip():
            raise ValueError(f"pixel_spacing_mm {text!r} is not a number")
        return None
    values = [float(v) for v in numbers]
    if len(values) > 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"pixel_spacing_mm {text!r} is not one or two positive numbers")
    return (values[0], values[-1])


def real_label(sample: Sample) -> str:
    """What a real manifest's label column says of a sample: "normal" (no structure), the
    malignancy ("benign", "malignant") or the class ("fetal head")."""
    if not sample.structures:
        return "normal"
    return "+".join(sorted({st.malignancy or st.class_name for st in sample.structures}))


def read_real(root: Path, opt: ReadOptions) -> tuple[list[Sample], Problems]:
    """manifest.csv (stem, label, organ, group, pixel_spacing_mm, width, height, ...) with
    images/<stem>.<ext> and masks/<stem>_mask.<ext>; or several such folders under `root`.
    One sample per row; the id is the stem."""
    folders = real_folders(root)
    if not folders:
        raise InputError(root, "not a real data set: expected manifest.csv (columns "
                               f"{', '.join(REAL_COLUMNS)}) with images/ and masks/, or folders of them")
    samples: list[Sample] = []
    problems: Problems = []
    where: dict[str, str] = {}
    for folder in folders:
        found, found_problems = _read_real_folder(folder, opt)
        problems += found_problems
        for sample in found:
            if sample.id in where:
                problems.append((sample.id, f"in both {where[sample.id]}/ and {folder.name}/"))
                continue
            where[sample.id] = folder.name
            samples.append(sample)
    return samples, problems


def _read_real_folder(folder: Path, opt: ReadOptions) -> tuple[list[Sample], Problems]:
    problems: Problems = []
    images = _image_files(folder / "images", "images", problems)
    masks = _image_files(folder / "masks", "masks", problems)
    with open(folder / "manifest.csv", newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        rows = list(enumerate(reader, start=2))
    missing = [c for c in REAL_COLUMNS if c not in columns]
    if missing:
        raise InputError(folder / "manifest.csv", f"needs the columns {', '.join(REAL_COLUMNS)}; "
                                                   f"{', '.join(missing)} missing")
    listed: set[str] = set()
    used_masks: set[str] = set()
    samples = []
    for line, row in rows:
        def get(name: str, row: dict = row) -> str:
            return str(row.get(columns[name]) or "").strip() if name in columns else ""

        stem = get("stem")
        if not stem or stem in listed:
            problems.append((f"{folder.name}/manifest.csv line {line}",
                             f"stem {stem!r} listed twice" if stem else "no stem"))
            continue
        listed.add(stem)
        if stem not in images:
            problems.append((stem, f"no image {folder.name}/images/{stem}.*"))
            continue
        mask_id = f"{stem}_mask" if f"{stem}_mask" in masks else stem
        if mask_id not in masks:
            problems.append((stem, f"no mask {folder.name}/masks/{stem}_mask.*"))
            continue
        used_masks.add(mask_id)
        try:
            sample = _real_sample(stem, images[stem], masks[mask_id], get, opt, problems)
        except ValueError as exc:
            problems.append((stem, str(exc)))
            continue
        if sample is not None:
            samples.append(sample)
    for stem in sorted(set(images) - listed):
        problems.append((f"{folder.name}/images/{images[stem].name}", "not listed in manifest.csv"))
    for mask_id in sorted(set(masks) - used_masks):
        if mask_id.removesuffix("_mask") not in listed:
            problems.append((f"{folder.name}/masks/{masks[mask_id].name}", "no row in manifest.csv"))
    return samples, problems


def _real_sample(stem: str, image: Path, mask: Path, get, opt: ReadOptions,
                 problems: Problems) -> Sample | None:
    from .prompts import image_captions

    label, organ = get("label"), get("organ") or opt.organ
    key = organ_key(organ)

    def mapped(name: str) -> str:
        return opt.class_map.get(name, name)

    lesion = REAL_LESION_CLASSES.get(key, opt.default_class)
    negatives = tuple(mapped(c) for c in opt.negatives.get(key, ()))
    malignancy = parse_malignancy(label)
    if label.lower() in NORMAL_LABELS:
        structures: tuple[Structure, ...] = ()
        absent = tuple(mapped(c) for c in REAL_NORMAL_ABSENT.get(key, (lesion,)))
    elif malignancy is not None:
        structures = (Structure(mapped(lesion), mask_path=mask, malignancy=malignancy, name=lesion),)
        absent = ()
    elif label:  # the label names the structure ("fetal head")
        name = class_from_segment_name(label)
        structures = (Structure(opt.class_name(label), mask_path=mask, name=name),)
        absent = ()
    else:
        raise ValueError("no label")
    present = {st.class_name for st in structures}
    absent = tuple(c for c in dict.fromkeys((*absent, *negatives)) if c not in present)
    spacing = parse_spacing(get("pixel_spacing_mm")) or opt.spacing_mm
    shape = None
    if opt.check_files:
        shape = _checked_shape(stem, image, [Structure(lesion, mask_path=mask)], problems)
        if shape is None:
            return None
        size = (get("height"), get("width"))
        if all(size) and size != (str(shape[0]), str(shape[1])):
            problems.append((stem, f"image is {shape[1]} x {shape[0]} pixels, manifest.csv says "
                                   f"{size[1]} x {size[0]}"))
            return None
        if not structures and read_binary_mask(mask).any():
            problems.append((stem, f"labelled {label!r} (no finding) but {mask.name} is not empty"))
            return None
    return Sample(stem, image, structures, spacing, organ or None, None, shape,
                  group=get("group") or stem, absent=absent,
                  captions=image_captions(key or None, structures))


def _unit_hash(seed: int, text: str) -> float:
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def group_splits(samples: Sequence[Sample], opt: ReadOptions) -> dict[str, list[str]]:
    """train / val ids, whole groups only (`Sample.group`, else the id), "test" empty.

    Groups are stratified by (organ, labels of their images): in each stratum the groups are
    ordered by a hash of (seed, group id) and the first round(val_fraction * n) go to val. A label
    held by two groups or more then has a group in val and one in train (the first / last of its
    groups in hash order moves when the strata left it out). Stable: the order of the samples does
    not matter, and a new group moves at most one other."""
    members: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        members[s.group or s.id].append(s)
    labels = {g: frozenset(real_label(s) for s in ms) for g, ms in members.items()}
    strata: dict[tuple, list[str]] = defaultdict(list)
    for g, ms in members.items():
        strata[(tuple(sorted({organ_key(s.organ) for s in ms})), tuple(sorted(labels[g])))].append(g)

    def order(g: str) -> tuple[float, str]:
        return (_unit_hash(opt.split_seed, g), g)

    val: set[str] = set()
    for key in sorted(strata):
        groups = sorted(strata[key], key=order)
        val.update(groups[:int(opt.val_fraction * len(groups) + 0.5)])
    if opt.val_fraction > 0:
        for label in sorted(set().union(*labels.values())):
            holding = sorted((g for g in members if label in labels[g]), key=order)
            if len(holding) >= 2 and not any(g in val for g in holding):
                val.add(holding[0])
            if len(holding) >= 2 and all(g in val for g in holding):
                val.discard(holding[-1])
    return {"train": sorted(s.id for s in samples if (s.group or s.id) not in val),
            "val": sorted(s.id for s in samples if (s.group or s.id) in val), "test": []}


def group_leaks(samples: Sequence[Sample], splits: dict[str, list[str]]) -> Problems:
    """Groups whose images split files put in two splits (near-duplicates across train and val)."""
    split_of = {i: name for name, ids in splits.items() for i in ids}
    seen: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        if s.id in split_of:
            seen[s.group or s.id].add(split_of[s.id])
    return [(f"group {g}", f"its images are in several splits ({', '.join(sorted(n))})")
            for g, n in sorted(seen.items()) if len(n) > 1]


def split_counts(data) -> dict:  # noqa: ANN001 - a SampleSet
    """Images and groups per split, per organ and label: {split: {organ: {label: [images, groups]}}}."""
    by_id = {s.id: s for s in data.samples}
    out: dict = {}
    for name, ids in data.splits.items():
        table: dict = defaultdict(lambda: defaultdict(lambda: [0, set()]))
        for i in ids:
            s = by_id[i]
            cell = table[organ_key(s.organ) or "?"][real_label(s)]
            cell[0] += 1
            cell[1].add(s.group or s.id)
        out[name] = {o: {lab: [n, len(g)] for lab, (n, g) in sorted(labs.items())}
                     for o, labs in sorted(table.items())}
    return out

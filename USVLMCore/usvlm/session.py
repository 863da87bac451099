"""The interactive contouring session behind the Slicer module, free of Slicer and Qt.

Everything the USVLMSegment widget decides lives here so it is tested with pytest: the parameter
defaults, prompt completion and presets from the banks, the resolved-name preview, splitting
several prompts, where a markup click lands on the image, live refinement of the last run from
its cached probability maps (no model run), segment naming without overwriting, and the rows of
the results table with their CSV / clipboard text.

Import-light on purpose: torch, scipy and the prompt banks are imported inside the functions
that need them, so the Slicer module can import this file when it starts (before the first-run
install of the Python dependencies) and Slicer starts fast.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from usvlm.errors import InputError

if TYPE_CHECKING:  # heavy imports only for type checkers
    from usvlm.engine import PromptResult, SegmentationOutput, Segmenter
    from usvlm.io.geometry import Geometry
    from usvlm.postprocess import PostprocessOptions
    from usvlm.text.banks import BankSet
    from usvlm.text.prompt import ResolvedPrompt

DEVICES = ("auto", "cpu", "cuda")
FRAME_MODES = ("current", "all")
# Several prompts in one run: one per line or separated by ";" (commas belong to descriptions
# such as "oval, circumscribed mass").
_PROMPT_SEPARATORS = re.compile(r"[;\n]+")


@dataclass(frozen=True)
class ModuleDefaults:
    """Defaults of the module's parameter node (one place, tested here)."""

    prompt: str = ""
    organ: str = ""  # "" = no organ context: the generic bank first, then all banks
    model: str = "usvlm-default"
    device: str = "auto"
    frames: str = "current"
    threshold: float = 0.5
    keep_largest: bool = True
    fill_holes: bool = True
    min_area_mm2: float = 0.0
    smoothing_mm: float = 0.0
    overwrite: bool = False  # replace same-named segments instead of adding new ones
    classify: bool = True


DEFAULTS = ModuleDefaults()


# -- prompts -------------------------------------------------------------------------------------

def split_prompts(text: str) -> list[str]:
    """The prompts of one run, validated; an `InputError` when there is none or one is bad."""
    from usvlm.text.prompt import validate_prompt

    parts = [p.strip() for p in _PROMPT_SEPARATORS.split(text or "")]
    parts = [p for p in parts if p]
    if not parts:
        raise InputError(None, "empty prompt: say what to contour, e.g. 'breast mass'")
    return [validate_prompt(p) for p in parts]


def organ_choices(banks: BankSet) -> list[tuple[str, str]]:
    """(bank id, display name) for the organ combo box, the generic bank first."""
    from usvlm.text.banks import GENERIC

    ordered = sorted(banks, key=lambda b: (b.id != GENERIC, b.name.lower()))
    return [(b.id, b.name) for b in ordered]


def completions(banks: BankSet, organ: str | None = None) -> list[str]:
    """Prompt completion words: names, synonyms and class names, the organ's bank first."""
    from usvlm.text.banks import unique_texts

    texts: list[str] = []
    for bank in banks.search_order(organ or None):
        for s in bank.structures:
            texts += [s.name, *s.synonyms]
            for c in s.classes:
                texts += [c.name, *c.synonyms]
    return unique_texts(texts)


def presets(banks: BankSet, organ: str | None = None) -> list[str]:
    """One-click prompts: the structure names of the organ's bank (generic without an organ)."""
    return [s.name for s in banks.for_organ(organ or None).structures]


@dataclass(frozen=True)
class PromptPreview:
    """What a prompt will become, shown before running: segment name, colour and terminology."""

    text: str
    name: str
    color: tuple[float, float, float]
    terminology: str  # Slicer TerminologyEntry string
    matched_by: str

    def describe(self) -> str:
        how = {"exact": "bank entry", "synonym": "synonym of a bank entry",
               "none": "no bank entry matches: used as typed"}.get(self.matched_by, self.matched_by)
        return f"{self.text} -> {self.name} ({how})"


def preview(prompt: ResolvedPrompt) -> PromptPreview:
    return PromptPreview(prompt.text, prompt.name, tuple(prompt.color),  # type: ignore[arg-type]
                         prompt.terminology.to_slicer_string(), prompt.matched_by)


def preview_prompts(text: str, banks: BankSet, organ: str | None = None) -> list[PromptPreview]:
    """Previews from names and synonyms alone (embedding matches need the model, at run time)."""
    from usvlm.text.resolve import PromptResolver

    resolver = PromptResolver(banks, organ=organ or None)
    return [preview(resolver(p)) for p in split_prompts(text)]


# -- segment naming ------------------------------------------------------------------------------

def unique_name(name: str, existing: Iterable[str]) -> str:
    """`name`, or `name 2`, `name 3`, ... when a segment of that name exists (case-insensitive)."""
    taken = {e.casefold() for e in existing}
    if name.casefold() not in taken:
        return name
    n = 2
    while f"{name} {n}".casefold() in taken:
        n += 1
    return f"{name} {n}"


@dataclass(frozen=True)
class SegmentPlan:
    name: str
    replace: bool  # True: overwrite the existing segment of that name


def plan_segments(names: Sequence[str], existing: Sequence[str], overwrite: bool) -> list[SegmentPlan]:
    """Names for the new segments. Existing segments are kept unless `overwrite`; then a segment
    of the same name is replaced. Two prompts giving the same name get distinct segments."""
    plans: list[SegmentPlan] = []
    taken = list(existing)
    replaced: set[str] = set()
    for name in names:
        key = name.casefold()
        if overwrite and key in {e.casefold() for e in existing} and key not in replaced:
            replaced.add(key)
            plans.append(SegmentPlan(name, True))
            continue
        unique = unique_name(name, taken + [p.name for p in plans])
        plans.append(SegmentPlan(unique, False))
    return plans


def needs_new_node(has_node: bool, same_reference: bool) -> bool:
    """Write into a new segmentation node when none is selected or the selected one belongs to
    another image (never mix grids in one node: DICOM SEG export needs one reference image)."""
    return not has_node or not same_reference


# -- clicks and frames ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PixelPoint:
    x: float
    y: float
    frame: int


def point_from_ras(geometry: Geometry, ras: Sequence[float], shape: tuple[int, int],
                   frames: int = 1) -> PixelPoint:
    """A markup point (RAS) on the image: exact IJK through the volume's geometry."""
    from usvlm.io.volume_arrays import ras_to_pixel

    return PixelPoint(*ras_to_pixel(geometry, ras, shape, frames))


def frames_to_run(mode: str, frames: int, current: int = 0) -> list[int]:
    """The frames a run segments: the current one, or all of a cine."""
    if mode not in FRAME_MODES:
        raise ValueError(f"frames must be one of {FRAME_MODES}, got {mode!r}")
    if mode == "all":
        return list(range(frames))
    if not 0 <= current < frames:
        raise InputError(None, f"current frame {current} is not one of the {frames} frame(s)")
    return [current]


def frame_at_ras(geometry: Geometry, ras: Sequence[float], frames: int) -> int:
    """The frame a slice view shows (its plane through `ras`), clamped to the image's frames."""
    import numpy as np

    k = geometry.ras_to_ijk_points(np.asarray(ras, dtype=float))[0][2]
    return int(min(max(round(float(k)), 0), frames - 1))


def check_ultrasound_volume(frames: int, modality: str | None = None,
                            minimum: float | None = None, name: str | None = None) -> None:
    """Refuse what is clearly not 2D ultrasound: a CT/MR series, or a multi-slice volume with
    negative intensities (Hounsfield units). A multi-slice US volume is taken as a cine."""
    if modality and modality.upper() != "US":
        raise InputError(name, f"a {modality.upper()} image, not ultrasound: USVLM contours 2D "
                               "ultrasound images and cine loops")
    if frames > 1 and minimum is not None and minimum < -100:
        raise InputError(name, f"a 3D volume of {frames} slices with intensities down to "
                               f"{minimum:.0f} (CT-like), not an ultrasound image or cine loop")


# -- live refinement -----------------------------------------------------------------------------

@dataclass(frozen=True)
class RefineSettings:
    """The widget's refinement controls; `point` is a click on the image (or None)."""

    threshold: float = DEFAULTS.threshold
    keep_largest: bool = DEFAULTS.keep_largest
    fill_holes: bool = DEFAULTS.fill_holes
    min_area_mm2: float = DEFAULTS.min_area_mm2
    smoothing_mm: float = DEFAULTS.smoothing_mm
    point: PixelPoint | None = None

    def options(self, with_point: bool = True) -> PostprocessOptions:
        from usvlm.postprocess import PostprocessOptions

        point = (self.point.x, self.point.y) if with_point and self.point is not None else None
        return PostprocessOptions(threshold=self.threshold, point=point,
                                  keep_largest=self.keep_largest, fill_holes=self.fill_holes,
                                  min_area_mm2=self.min_area_mm2, smoothing_mm=self.smoothing_mm)


@dataclass
class InteractiveSession:
    """The last run and its live refinement. Owned by the GUI thread; the model runs elsewhere."""

    output: SegmentationOutput | None = None
    summaries: list[dict[str, Any]] = field(default_factory=list)
    segment_ids: list[str] = field(default_factory=list)  # Slicer segment id of each result
    # Measure refined masks (False while a slider moves: measuring costs ~0.3 s per mask).
    measure: bool = True

    def set_output(self, output: SegmentationOutput, summaries: Sequence[dict[str, Any]] = (),
                   segment_ids: Sequence[str] = ()) -> None:
        self.output = output
        self.summaries = list(summaries)
        self.segment_ids = list(segment_ids)

    def clear(self) -> None:
        self.output, self.summaries, self.segment_ids = None, [], []

    @property
    def has_result(self) -> bool:
        return self.output is not None and bool(self.output.results)

    def _output(self) -> SegmentationOutput:
        if self.output is None:
            raise InputError(None, "nothing to refine yet: run a prompt first")
        return self.output

    def refine(self, index: int, settings: RefineSettings) -> PromptResult:
        """Re-threshold result `index` from its cached probability map (no model run).

        On a cine the click selects the component under it on the clicked frame only; the other
        frames are refined without the point.
        """
        from usvlm.engine import Segmenter
        from usvlm.postprocess import postprocess_frame

        output = self._output()
        result = output.results[index]
        point = settings.point
        if point is not None and point.frame not in output.frames:
            raise InputError(None, f"the click is on frame {point.frame}, which this run did not "
                                   f"segment (frames {output.frames})")
        multi = result.probability.ndim == 3
        refined = Segmenter.refine(result, output, settings.options(with_point=not multi))
        if multi and point is not None:
            t = output.frames.index(point.frame)
            spacing = (output.image.geometry.spacing_x, output.image.geometry.spacing_y)
            refined.mask[t] = postprocess_frame(result.probability[t], settings.options(), spacing,
                                                output.field_of_view)
            refined.options = settings.options()
        output.results[index] = refined
        self._update_summary(index)
        return refined

    def refine_all(self, settings: RefineSettings) -> list[PromptResult]:
        return [self.refine(i, settings) for i in range(len(self._output().results))]

    def _update_summary(self, index: int) -> None:
        """New measurements (when `measure`) for a refined mask; the classification of the run is
        kept."""
        from usvlm.report import summarize_result

        output = self._output()
        fresh = summarize_result(output.results[index], output, measure=self.measure)
        if index < len(self.summaries) and "classification" in self.summaries[index]:
            fresh["classification"] = self.summaries[index]["classification"]
        while len(self.summaries) <= index:
            self.summaries.append({})
        self.summaries[index] = fresh

    def rows(self) -> list[ResultRow]:
        return result_rows(self.summaries)


# -- results table -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResultRow:
    segment: str
    prompt: str
    score: float
    benign: float | None
    malignant: float | None
    area: float
    long_axis: float
    short_axis: float
    unit: str  # "mm" or "px"
    calibrated: bool
    taller_than_wide: bool
    frame: int
    empty: bool

    def cells(self) -> list[str]:
        """Display text of each column (see `COLUMNS`)."""
        def pct(p: float | None) -> str:
            return "" if p is None else f"{100 * p:.0f} %"

        area_unit = f"{self.unit}²"
        flag = "" if self.calibrated else " (uncalibrated)"
        return [self.segment, f"{self.score:.2f}", pct(self.benign), pct(self.malignant),
                f"{self.area:.1f} {area_unit}{flag}", f"{self.long_axis:.1f} {self.unit}",
                f"{self.short_axis:.1f} {self.unit}", "yes" if self.taller_than_wide else "no",
                str(self.frame)]


COLUMNS = ["Segment", "Score", "Benign", "Malignant", "Area", "Long axis", "Short axis",
           "Taller than wide", "Frame"]
CSV_FIELDS = ["segment", "prompt", "score", "benign", "malignant", "area", "long_axis",
              "short_axis", "unit", "calibrated", "taller_than_wide", "frame", "empty"]


def result_rows(summaries: Iterable[dict[str, Any]]) -> list[ResultRow]:
    """Rows of the results table from `usvlm.report.summarize_result` summaries."""
    rows = []
    for s in summaries:
        m = s["measurements"]
        cls = s.get("classification") or {}
        rows.append(ResultRow(segment=s.get("segment", s["name"]), prompt=s["prompt"],
                              score=float(s["score"]), benign=cls.get("benign"),
                              malignant=cls.get("malignant"), area=float(m["area"]),
                              long_axis=float(m["long_axis"]), short_axis=float(m["short_axis"]),
                              unit=m["unit"], calibrated=bool(m["calibrated"]),
                              taller_than_wide=bool(m["taller_than_wide"]), frame=int(s["frame"]),
                              empty=bool(s["empty"])))
    return rows


def rows_csv(rows: Sequence[ResultRow], delimiter: str = ",") -> str:
    """CSV text of the rows (tab-separated for the clipboard: pastes into a spreadsheet)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        writer.writerow([r.segment, r.prompt, f"{r.score:.4f}",
                         "" if r.benign is None else f"{r.benign:.4f}",
                         "" if r.malignant is None else f"{r.malignant:.4f}",
                         f"{r.area:.3f}", f"{r.long_axis:.3f}", f"{r.short_axis:.3f}", r.unit,
                         str(r.calibrated).lower(), str(r.taller_than_wide).lower(), r.frame,
                         str(r.empty).lower()])
    return buffer.getvalue()


def with_segment_names(summaries: Sequence[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Summaries labelled with the segment names actually used in the scene ("Cyst 2")."""
    return [{**s, "segment": n} for s, n in zip(summaries, names)]


def model_summary(manifest: dict[str, Any]) -> str:
    """One line about a model manifest for the model box: backbone, adapter, data, validation Dice."""
    backbone = (manifest.get("backbone") or {}).get("id", "?")
    adapter = (manifest.get("adapter") or {}).get("type", "?")
    data = (manifest.get("provenance") or {}).get("dataset")
    metrics = manifest.get("metrics") or {}
    dice = metrics.get("val_dice", metrics.get("dice"))
    parts = [f"{manifest.get('name', '?')}: {backbone} backbone, {adapter} adapter"]
    if data:
        parts.append(f"trained on {data}")
    parts.append(f"validation Dice {dice:.3f}" if isinstance(dice, (int, float))
                 else "no validation metrics")
    if manifest.get("description"):
        parts.append(str(manifest["description"]))
    return "; ".join(parts)

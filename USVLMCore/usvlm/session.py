"""The engine's side of an interactive contouring session (free of Slicer and Qt).

What `usvlm serve` answers the Slicer module with: prompt completion and presets from the banks,
the resolved-name preview, and live refinement of the last run from its cached probability maps
(no model run). The module's own rules (segment naming, clicks on the volume grid, the results
table) run in Slicer's Python, in USVLMSegment/USVLMSegmentLib.

Import-light: torch, scipy and the prompt banks are imported inside the functions that need them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from usvlm.errors import InputError

if TYPE_CHECKING:  # heavy imports only for type checkers
    from usvlm.engine import PromptResult, SegmentationOutput
    from usvlm.postprocess import PostprocessOptions
    from usvlm.text.banks import BankSet
    from usvlm.text.prompt import ResolvedPrompt

# Several prompts in one run: one per line or separated by ";" (commas belong to descriptions
# such as "oval, circumscribed mass").
_PROMPT_SEPARATORS = re.compile(r"[;\n]+")



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


# -- live refinement -----------------------------------------------------------------------------

@dataclass(frozen=True)
class PixelPoint:
    """A click on the image: pixel column x, row y, 0-based frame."""

    x: float
    y: float
    frame: int


@dataclass(frozen=True)
class RefineSettings:
    """The widget's refinement controls; `point` is a click on the image (or None)."""

    threshold: float = 0.5
    keep_largest: bool = True
    fill_holes: bool = True
    min_area_mm2: float = 0.0
    smoothing_mm: float = 0.0
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

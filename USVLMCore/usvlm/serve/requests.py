"""Typed requests read from frame headers, checked once here (the routes and jobs trust them).

Image sizes are checked from the array specs of the header, before the pixel bytes are read.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from usvlm.io.limits import check_frame_size, check_pixel_bytes
from usvlm.serve.errors import RequestError
from usvlm.serve.wire import MAX_ARRAYS, ArraySpec, bad

MAX_PROMPTS = 16
MAX_COHORT_SEGMENTS = MAX_ARRAYS - 1  # a frame carries the image and one mask per segment
COHORT_ARRAYS = ("image", *(f"mask{i}" for i in range(MAX_COHORT_SEGMENTS)))
IMAGE_ID_CHARS = 32


def image_id(dtype: str, shape: tuple[int, ...], rgb: bool, cine: bool, data: bytes | memoryview) -> str:
    """Content id of uploaded pixels (the client computes the same to skip re-sending them)."""
    h = hashlib.blake2b(digest_size=16)
    meta = {"cine": bool(cine), "dtype": dtype, "rgb": bool(rgb), "shape": list(shape)}
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    h.update(data)
    return h.hexdigest()


# -- field readers ---------------------------------------------------------------------------------

def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None,
           *, required: bool = False) -> Any:
    if key not in data or data[key] is None:
        if required:
            raise bad(f"'{key}' is missing")
        return default
    value = data[key]
    if kind is float and type(value) is int:
        value = float(value)
    if isinstance(value, bool) and kind in (int, float):
        raise bad(f"'{key}' must be a number, not true/false")
    if not isinstance(value, kind):
        raise bad(f"'{key}' has the wrong type")
    if isinstance(value, float) and not math.isfinite(value):
        raise bad(f"'{key}' must be finite")
    return value


def _object(data: dict[str, Any], key: str, *, required: bool = False) -> dict[str, Any]:
    return _field(data, key, dict, {}, required=required)


# -- image -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageMeta:
    """How to read the image array (or which stored image to use) and its pixel geometry."""

    id: str | None
    rgb: bool
    cine: bool
    spacing: tuple[float, float]
    calibrated: bool
    name: str | None

    @classmethod
    def parse(cls, header: dict[str, Any]) -> "ImageMeta":
        d = _object(header, "image", required=True)
        image = _field(d, "id", str)
        if image is not None and (len(image) != IMAGE_ID_CHARS or not image.isalnum()):
            raise bad("'id' is not an image id this engine gave")
        spacing = _field(d, "spacing", list, [1.0, 1.0])
        if (len(spacing) not in (2, 3) or not all(type(s) in (int, float) for s in spacing)
                or not all(math.isfinite(s) and s > 0 for s in spacing)):
            raise RequestError(422, "input", "pixel spacing must be 2 or 3 positive numbers (mm)")
        name = _field(d, "name", str)
        return cls(image, bool(_field(d, "rgb", bool, False)), bool(_field(d, "cine", bool, False)),
                   (float(spacing[0]), float(spacing[1])), bool(_field(d, "calibrated", bool, False)),
                   None if name is None else name[:200])

    def check_pixels(self, spec: ArraySpec) -> None:
        """The array's shape must fit rgb/cine and its frame size the limits."""
        if spec.encoding != "raw":
            raise bad("the image array must use the raw encoding")
        rank = 2 + int(self.rgb) + int(self.cine)
        if len(spec.shape) != rank or (self.rgb and spec.shape[-1] != 3):
            layout = ("T, " if self.cine else "") + "H, W" + (", 3" if self.rgb else "")
            raise RequestError(422, "input", f"image array of shape {list(spec.shape)} does not match "
                                             f"({layout}) for rgb={self.rgb}, cine={self.cine}")
        rows, columns = spec.shape[int(self.cine)], spec.shape[int(self.cine) + 1]
        problem = check_frame_size(rows, columns)
        if problem is not None:
            status = 413 if max(rows, columns) > 0 and "too large" in problem else 422
            raise RequestError(status, "too_large" if status == 413 else "input", problem)
        if self.cine and spec.shape[0] < 1:
            raise RequestError(422, "input", "a cine needs at least one frame")


def check_specs(header: dict[str, Any], specs: list[ArraySpec], allowed: tuple[str, ...]) -> None:
    """Before the payload is read: only known arrays, their total under the pixel limit, the
    image's shape and frame size sound."""
    unknown = [s.name for s in specs if s.name not in allowed]
    if unknown:
        raise bad(f"unexpected array(s) {unknown}; this request takes {list(allowed)}")
    problem = check_pixel_bytes(sum(s.decoded_nbytes for s in specs))
    if problem is not None:
        raise RequestError(413, "too_large", problem)
    for spec in specs:
        if spec.name == "image":
            ImageMeta.parse(header).check_pixels(spec)


# -- post-processing -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    x: float
    y: float
    frame: int


@dataclass(frozen=True)
class Options:
    """Post-processing asked for; None fields keep the model's (segment) or the result's (refine)."""

    threshold: float | None = None
    keep_largest: bool | None = None
    fill_holes: bool | None = None
    min_area_mm2: float | None = None
    smoothing_mm: float | None = None
    point: Point | None = None

    @classmethod
    def parse(cls, header: dict[str, Any]) -> "Options":
        d = _object(header, "options")
        threshold = _field(d, "threshold", float)
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise RequestError(422, "input", f"threshold must be within 0-1, got {threshold}")
        sizes = {k: _field(d, k, float) for k in ("min_area_mm2", "smoothing_mm")}
        for key, value in sizes.items():
            if value is not None and not 0.0 <= value <= 1e6:
                raise RequestError(422, "input", f"{key} must be within 0-1e6, got {value}")
        p = _field(d, "point", dict)
        point = None
        if p is not None:
            x, y = _field(p, "x", float, required=True), _field(p, "y", float, required=True)
            point = Point(x, y, _field(p, "frame", int, 0))
        return cls(threshold, _field(d, "keep_largest", bool), _field(d, "fill_holes", bool),
                   sizes["min_area_mm2"], sizes["smoothing_mm"], point)

    def settings(self, base: Any) -> Any:
        """`usvlm.session.RefineSettings` from these options over `base` (PostprocessOptions)."""
        from usvlm.session import PixelPoint, RefineSettings

        def pick(name: str) -> Any:
            mine = getattr(self, name)
            return getattr(base, name) if mine is None else mine

        point = None if self.point is None else PixelPoint(self.point.x, self.point.y, self.point.frame)
        return RefineSettings(threshold=pick("threshold"), keep_largest=pick("keep_largest"),
                              fill_holes=pick("fill_holes"), min_area_mm2=pick("min_area_mm2"),
                              smoothing_mm=pick("smoothing_mm"), point=point)


# -- the requests ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentCall:
    job: str | None
    image: ImageMeta
    prompts: tuple[str, ...]
    organ: str | None
    frames: str | tuple[int, ...]  # "all" or 0-based frame numbers
    options: Options
    classify: bool
    measure: bool  # measurements of each result (False: name, score and mask only; faster)

    @classmethod
    def parse(cls, header: dict[str, Any]) -> "SegmentCall":
        from usvlm.text.prompt import validate_prompt

        prompts = _field(header, "prompts", list, required=True)
        if not prompts or len(prompts) > MAX_PROMPTS:
            raise RequestError(422, "input", f"give 1-{MAX_PROMPTS} prompts")
        frames = _field(header, "frames", (str, list), "all")
        if isinstance(frames, str) and frames != "all":
            raise bad("'frames' must be \"all\" or a list of frame numbers")
        if isinstance(frames, list):
            if not frames or not all(type(f) is int for f in frames) or len(frames) > 100_000:
                raise bad("'frames' must be \"all\" or a non-empty list of frame numbers")
            frames = tuple(frames)
        organ = _field(header, "organ", str)
        return cls(_field(header, "job", str), ImageMeta.parse(header),
                   tuple(validate_prompt(p) for p in prompts), organ or None, frames,
                   Options.parse(header), bool(_field(header, "classify", bool, False)),
                   bool(_field(header, "measure", bool, True)))


@dataclass(frozen=True)
class RefineCall:
    result: str
    index: int | None  # None: every prompt of the result
    options: Options
    measure: bool

    @classmethod
    def parse(cls, header: dict[str, Any]) -> "RefineCall":
        index = _field(header, "index", int)
        if index is not None and index < 0:
            raise bad("'index' must be >= 0")
        result = _field(header, "result", str, required=True)
        return cls(result[:64], index, Options.parse(header), bool(_field(header, "measure", bool, True)))


@dataclass(frozen=True)
class ClassifyCall:
    job: str | None
    image: ImageMeta
    frame: int
    zero_shot: bool

    @classmethod
    def parse(cls, header: dict[str, Any]) -> "ClassifyCall":
        frame = _field(header, "frame", int, 0)
        if frame < 0:
            raise bad("'frame' must be >= 0")
        return cls(_field(header, "job", str), ImageMeta.parse(header), frame,
                   bool(_field(header, "zero_shot", bool, False)))


@dataclass(frozen=True)
class CohortSegment:
    name: str
    color: tuple[float, float, float]  # RGB 0-1
    terminology: str  # Slicer TerminologyEntry string; "" for the default (tissue)


@dataclass(frozen=True)
class CohortCall:
    """A training sample of one frame: the image (or its id), the segments' names, colours and
    terminology in the header, their masks as arrays mask0..maskN-1."""

    image: ImageMeta
    frame: int
    segments: tuple[CohortSegment, ...]

    @classmethod
    def parse(cls, header: dict[str, Any]) -> "CohortCall":
        frame = _field(header, "frame", int, 0)
        if frame < 0:
            raise bad("'frame' must be >= 0")
        entries = _field(header, "segments", list, required=True)
        if not entries:
            raise RequestError(422, "input", "no segments to add to the cohort")
        if len(entries) > MAX_COHORT_SEGMENTS:
            raise RequestError(422, "input", f"a training sample takes at most {MAX_COHORT_SEGMENTS} "
                                             f"segments, got {len(entries)}")
        segments = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise bad("each entry of 'segments' must be an object")
            color = _field(entry, "color", list, required=True)
            if (len(color) != 3 or not all(type(c) in (int, float) for c in color)
                    or not all(0.0 <= c <= 1.0 for c in color)):
                raise RequestError(422, "input", "a segment's colour must be 3 numbers within 0-1")
            segments.append(CohortSegment(_field(entry, "name", str, required=True),
                                          (float(color[0]), float(color[1]), float(color[2])),
                                          _field(entry, "terminology", str, "")))
        return cls(ImageMeta.parse(header), frame, tuple(segments))

    def core_segments(self, arrays: dict[str, np.ndarray]) -> list[Any]:
        """`usvlm.io.segmentation.Segment`s from the arrays mask0..maskN-1 (bits or uint8); the
        core's `cohort_sample` checks them against the image grid and the frame."""
        from usvlm.io.segmentation import Segment
        from usvlm.text.terminology import DEFAULT_TERMINOLOGY, Terminology

        masks = sorted(n for n in arrays if n != "image")
        wanted = [f"mask{i}" for i in range(len(self.segments))]
        if sorted(wanted) != masks:
            raise RequestError(422, "input", f"{len(self.segments)} segment(s) need the arrays "
                                             f"mask0..mask{len(self.segments) - 1}, got {masks}")
        out = []
        for name, s in zip(wanted, self.segments):
            mask = arrays[name]
            if mask.dtype not in (np.bool_, np.uint8):
                raise RequestError(422, "input", f"{name} must be bits or uint8, not {mask.dtype}")
            try:
                terminology = Terminology.from_slicer(s.terminology) if s.terminology else DEFAULT_TERMINOLOGY
            except (ValueError, TypeError, KeyError, IndexError):
                raise RequestError(422, "input", f"segment {s.name[:100]!r}: its terminology is not a Slicer "
                                                 f"TerminologyEntry string") from None
            try:
                out.append(Segment(s.name, mask, s.color, terminology))
            except ValueError as exc:  # the name or the mask's rank ("segment 'A': ...")
                raise RequestError(422, "input", str(exc)) from None
        return out


def mask_for(image_shape: tuple[int, int], mask: np.ndarray | None) -> np.ndarray | None:
    if mask is None:
        return None
    if mask.shape[-2:] != image_shape:
        raise RequestError(422, "input", f"the mask of shape {list(mask.shape)} does not match the "
                                         f"image's {list(image_shape)}")
    return mask

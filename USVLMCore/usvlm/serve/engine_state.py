"""What the engine keeps warm between requests: the Segmenter (model, image features, prompt
embeddings), the images clients uploaded (by content id, so a new prompt does not re-send pixels)
and the last results with their probability maps (so refine never re-runs the model)."""

from __future__ import annotations

import functools
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from usvlm.engine import Segmenter
from usvlm.io.geometry import Geometry
from usvlm.io.image import ImageInfo, USImage
from usvlm.serve.errors import RequestError
from usvlm.serve.jobs import JobContext
from usvlm.serve.requests import ClassifyCall, ImageMeta, RefineCall, SegmentCall, mask_for
from usvlm.session import InteractiveSession

T = TypeVar("T")


class ByteBoundedLRU(Generic[T]):
    """Least recently used entries go first once the total size passes `limit` (the newest entry
    always stays, whatever its size)."""

    def __init__(self, limit_bytes: int, max_entries: int) -> None:
        self.limit = limit_bytes
        self.max_entries = max_entries
        self._items: OrderedDict[str, tuple[T, int]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, value: T, nbytes: int) -> None:
        with self._lock:
            self._items[key] = (value, nbytes)
            self._items.move_to_end(key)
            total = sum(n for _, n in self._items.values())
            while len(self._items) > 1 and (total > self.limit or len(self._items) > self.max_entries):
                _, (_, n) = self._items.popitem(last=False)
                total -= n

    def get(self, key: str) -> T | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class StoredImage:
    pixels: np.ndarray
    rgb: bool
    cine: bool

    def with_geometry(self, meta: ImageMeta) -> USImage:
        geometry = Geometry.for_pixels(*meta.spacing, calibrated=meta.calibrated)
        return USImage(self.pixels, geometry, ImageInfo(path=meta.name, format="engine"),
                       is_rgb=self.rgb, is_cine=self.cine)


@dataclass
class StoredResult:
    session: InteractiveSession
    image: str  # content id of the image it was made from
    lock: threading.Lock = field(default_factory=threading.Lock)


# -- replies ---------------------------------------------------------------------------------------

@dataclass
class SegmentReply:
    result: str
    image: str
    frames: list[int]
    segments: list[dict[str, Any]]  # summaries (usvlm.report) + index and terminology
    masks: list[np.ndarray]  # bool, (H, W) or (T, H, W) for the segmented frames
    timings_ms: dict[str, float]

    def header(self) -> dict[str, Any]:
        return {"result": self.result, "image": self.image, "frames": self.frames,
                "segments": self.segments, "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()}}

    def arrays(self) -> list[tuple[str, np.ndarray, str]]:
        return [(f"mask{i}", m, "bits") for i, m in enumerate(self.masks)]


@dataclass
class ClassifyReply:
    image: str
    probabilities: dict[str, float]

    def header(self) -> dict[str, Any]:
        return {"image": self.image, "probabilities": self.probabilities}

    def arrays(self) -> list[tuple[str, np.ndarray, str]]:
        return []


def _segment_entry(index: int, summary: dict[str, Any], terminology: str) -> dict[str, Any]:
    return {"index": index, **summary, "terminology": terminology}


class EngineState:
    def __init__(self, segmenter: Segmenter, *, prompt_dir: str | None = None,
                 image_store_mb: float = 1024, result_store_mb: float = 2048) -> None:
        from usvlm.text.banks import default_banks, load_banks
        from usvlm.text.resolve import PromptResolver

        self.segmenter = segmenter
        banks = load_banks(prompt_dir) if prompt_dir else default_banks()
        self.resolver = PromptResolver(banks)
        self.images: ByteBoundedLRU[StoredImage] = ByteBoundedLRU(int(image_store_mb * 1024**2), 64)
        self.results: ByteBoundedLRU[StoredResult] = ByteBoundedLRU(int(result_store_mb * 1024**2), 32)

    # -- images ------------------------------------------------------------------------------------
    def store_image(self, meta: ImageMeta, pixels: np.ndarray, data: memoryview) -> str:
        from usvlm.serve.requests import image_id

        key = image_id(pixels.dtype.str, pixels.shape, meta.rgb, meta.cine, data)
        self.images.put(key, StoredImage(pixels, meta.rgb, meta.cine), pixels.nbytes)
        return key

    def stored_image(self, meta: ImageMeta) -> tuple[str, USImage]:
        stored = self.images.get(meta.id) if meta.id else None
        if stored is None:
            raise RequestError(409, "unknown_image", "the engine no longer holds this image; send its pixels")
        if (stored.rgb, stored.cine) != (meta.rgb, meta.cine):
            raise RequestError(422, "input", "rgb/cine differ from the stored image's")
        return meta.id, stored.with_geometry(meta)  # type: ignore[return-value]

    # -- jobs (worker thread) ----------------------------------------------------------------------
    def _use_organ(self, organ: str | None) -> None:
        self.resolver.banks.bank_id(organ)  # an unknown organ is a one-line InputError
        self.segmenter.resolver = functools.partial(self.resolver.resolve, organ=organ)

    def segment(self, call: SegmentCall, image_key: str, image: USImage, ctx: JobContext) -> SegmentReply:
        from usvlm.postprocess import PostprocessOptions
        from usvlm.report import summarize_result

        started = time.perf_counter()
        self._use_organ(call.organ)
        o = call.options
        base = PostprocessOptions(threshold=self.segmenter.model.threshold)
        options = o.settings(base).options(with_point=False)
        frames = "all" if call.frames == "all" else list(call.frames)
        output = self.segmenter.segment(image, list(call.prompts), frames=frames, options=options,
                                        progress=ctx.progress, cancel=ctx.cancel)
        summaries = []
        for result in output.results:  # measuring and classifying: stages of their own
            ctx.cancel.check()
            summaries.append(summarize_result(result, output, self.segmenter if call.classify else None,
                                              measure=call.measure))
        ctx.cancel.check()
        session = InteractiveSession()
        session.measure = call.measure
        session.set_output(output, summaries)
        if o.point is not None:  # a click: the component under it, as refine does
            session.refine_all(o.settings(options))
        result_id = secrets.token_hex(8)
        nbytes = sum(r.probability.nbytes + r.mask.nbytes for r in output.results)
        self.results.put(result_id, StoredResult(session, image_key), nbytes)
        reply = self._reply(result_id, image_key, session, range(len(output.results)))
        reply.timings_ms["job_ms"] = (time.perf_counter() - started) * 1e3  # all the engine's work
        return reply

    def refine(self, call: RefineCall) -> SegmentReply:
        """Post-processing only (threshold, hole filling, smallest area, the region under a point)
        from the cached probability maps; runs beside the worker (no model)."""
        started = time.perf_counter()
        stored = self.results.get(call.result)
        if stored is None:
            raise RequestError(404, "unknown_result", "the engine no longer holds this result; "
                                                      "segment again")
        with stored.lock:
            session = stored.session
            session.measure = call.measure
            count = len(session.output.results)  # type: ignore[union-attr]
            if call.index is not None and call.index >= count:
                raise RequestError(422, "input", f"result has {count} segment(s); index {call.index} is out of range")
            indices = range(count) if call.index is None else [call.index]
            for i in indices:
                current = session.output.results[i].options  # type: ignore[union-attr]
                session.refine(i, call.options.settings(current))
            reply = self._reply(call.result, stored.image, session, indices)
        reply.timings_ms = {"job_ms": (time.perf_counter() - started) * 1e3}
        return reply

    def classify(self, call: ClassifyCall, image_key: str, image: USImage, mask: np.ndarray | None,
                 ctx: JobContext) -> ClassifyReply:
        mask = mask_for(image.frame_shape, mask)
        if mask is not None and not mask.any():
            raise RequestError(422, "input", "mask is empty (no pixel of the finding to classify)")
        ctx.cancel.check()
        probs = self.segmenter.classify(image, mask, zero_shot=call.zero_shot, frame=call.frame)
        return ClassifyReply(image_key, probs)

    @staticmethod
    def _reply(result_id: str, image_key: str, session: InteractiveSession, indices: Any) -> SegmentReply:
        output = session.output
        assert output is not None
        segments, masks = [], []
        for i in indices:
            r = output.results[i]
            segments.append(_segment_entry(i, session.summaries[i], r.prompt.terminology.to_slicer_string()))
            masks.append(r.mask)
        return SegmentReply(result_id, image_key, list(output.frames), segments, masks,
                            dict(output.timings_ms))

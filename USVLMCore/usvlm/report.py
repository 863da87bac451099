"""Plain summaries of a segmentation: what the CLI prints as JSON and the Slicer results panel shows."""

from __future__ import annotations

from typing import Any

import numpy as np

from usvlm.engine import PromptResult, SegmentationOutput, Segmenter
from usvlm.io.segmentation import Segment
from usvlm.io.volume_arrays import frames_to_volume_array
from usvlm.measure import measure_mask


def to_segments(output: SegmentationOutput) -> list[Segment]:
    """One segment per prompt (name, colour, terminology from the resolved prompt), with masks on
    the whole image: a run on some frames of a cine leaves the other frames empty."""
    image = output.image

    def whole(mask: np.ndarray) -> np.ndarray:
        if not image.is_cine or len(output.frames) == image.frames:
            return mask
        return frames_to_volume_array(mask, output.frames, image.frames).astype(bool)

    return [Segment(r.prompt.name, whole(r.mask), r.prompt.color, r.prompt.terminology)
            for r in output.results]


def _grey(output: SegmentationOutput) -> np.ndarray:
    image = output.image.grey()
    return image.as_frames()[output.frames] if image.is_cine else image.pixels[np.newaxis]


def summarize_result(result: PromptResult, output: SegmentationOutput,
                     segmenter: Segmenter | None = None, *, measure: bool = True) -> dict[str, Any]:
    """Name, score, measurements on the frame where the finding is largest, per-frame areas, and
    (with a segmenter whose model classifies) benign/malignant probabilities inside the mask.
    `measure` False leaves out the measurements and per-frame areas (about 0.3 s per 640 x 480
    mask: too slow while a slider moves)."""
    image = output.image
    masks = result.mask if result.mask.ndim == 3 else result.mask[np.newaxis]
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    best = int(np.argmax(areas))
    summary: dict[str, Any] = {
        "prompt": result.prompt.text,
        "name": result.prompt.name,
        "matched_by": result.prompt.matched_by,
        "color": list(result.prompt.color),
        "score": round(result.score, 4),
        "empty": not bool(areas.any()),
        "frame": output.frames[best],
    }
    spacing = (image.geometry.spacing_x, image.geometry.spacing_y)
    if measure:
        summary["measurements"] = measure_mask(masks[best], spacing, calibrated=image.geometry.calibrated,
                                               image=_grey(output)[best]).to_dict()
    summary["options"] = result.options.to_dict()
    if measure and len(masks) > 1:
        pixel_area = spacing[0] * spacing[1] if image.geometry.calibrated else 1.0
        summary["area_per_frame"] = [round(float(a) * pixel_area, 3) for a in areas]
    if segmenter is not None and segmenter.model.cls_head is not None and areas.any():
        summary["classification"] = segmenter.classify(
            image, masks[best], frame=output.frames[best] if image.is_cine else 0)
    return summary


def summarize(output: SegmentationOutput, segmenter: Segmenter | None = None) -> dict[str, Any]:
    image = output.image
    return {
        "file": image.info.path,
        "frames": output.frames,
        "spacing_mm": {"x": image.geometry.spacing_x, "y": image.geometry.spacing_y},
        "calibrated": image.geometry.calibrated,
        "segments": [summarize_result(r, output, segmenter) for r in output.results],
        "timings_ms": {k: round(v, 2) for k, v in output.timings_ms.items()},
    }

"""From a `USImage` to the model input, and from model output back to the image grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from usvlm.errors import InputError
from usvlm.io.image import USImage
from usvlm.preprocess._arrays import luminance, unit_frames
from usvlm.preprocess.fov import FieldOfView, field_of_view_from_frames, search_region
from usvlm.preprocess.letterbox import LetterboxTransform, Mode
from usvlm.preprocess.overlays import overlay_mask, suppress_overlays


@dataclass
class PreparedImage:
    """The model input of one image and what is needed to map results back onto it."""

    pixels: np.ndarray  # float32 in [0, 1]: (T, S, S) grey or (T, S, S, 3)
    transform: LetterboxTransform
    fov: FieldOfView
    overlays: np.ndarray | None  # (T, H, W) bool: annotation pixels that were painted over

    @property
    def frames(self) -> int:
        return int(self.pixels.shape[0])

    def to_image(self, maps: Any, mode: Mode = "bilinear") -> np.ndarray:
        """Model-space maps (S, S) / (N, S, S) (numpy or torch) -> (H, W) / (N, H, W) float32,
        zero outside the field of view."""
        back = self.transform.inverse(maps, mode)
        back *= self.fov.mask
        return back


def prepare(image: USImage, size: int, *, suppress: bool = True, keep_rgb: bool = False,
            pad_value: float = 0.0) -> PreparedImage:
    """Model input of `image`: grey (or RGB with `keep_rgb`, grey images then repeated to three
    channels), annotations painted over, black outside the field of view, cropped to it and
    letterboxed to size x size."""
    if not isinstance(image, USImage):
        raise InputError(None, f"prepare() needs a USImage, got {type(image).__name__}")
    frames = unit_frames(image)  # checks shape, emptiness, NaN
    grey = luminance(frames, image.is_rgb)
    fov = field_of_view_from_frames(grey, search_region(image))
    transform = LetterboxTransform.compute(image.frame_shape, size, fov.box, pad_value)
    colour = keep_rgb and image.is_rgb
    work = frames if colour else grey
    overlays = None
    if suppress:
        overlays = overlay_mask(frames, image.is_rgb, fov.box)
        work = suppress_overlays(work, overlays, support=fov.mask)
    if work is image.pixels:  # never change the caller's image (unit_frames copies; be sure)
        work = work.copy()
    work *= fov.mask[..., np.newaxis] if colour else fov.mask  # in place: no second cine-sized array
    if keep_rgb and not colour:
        work = np.repeat(work[..., np.newaxis], 3, axis=-1)
    return PreparedImage(transform.forward(work), transform, fov, overlays)

"""Quick-look PNG: segment outlines in their colours over the (grey or colour) image."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation
from skimage import io as skio
from skimage.segmentation import find_boundaries

from usvlm.errors import OutputError
from usvlm.io.atomic import atomic_output
from usvlm.io.image import USImage
from usvlm.io.segmentation import Segment, stacked_frames


def default_frame(segments: Sequence[Segment]) -> int:
    """The first frame where any segment has a pixel (0 when all are empty)."""
    occupied = stacked_frames(segments).any(axis=(1, 2, 3))
    return int(np.argmax(occupied)) if occupied.any() else 0


def _display_rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) pixels as uint8 RGB; other dtypes are stretched to their range."""
    if pixels.dtype != np.uint8:
        p = pixels.astype(np.float64)
        lo, hi = float(p.min()), float(p.max())
        scaled = (p - lo) / (hi - lo) * 255 if hi > lo else np.zeros(p.shape)
        pixels = np.rint(scaled).astype(np.uint8)
    return pixels if pixels.ndim == 3 else np.repeat(pixels[..., np.newaxis], 3, axis=-1)


def render_overlay(image: USImage, segments: Sequence[Segment], frame: int | None = None,
                   thickness: int = 1) -> np.ndarray:
    """(H, W, 3) uint8 image of one frame with each segment's outline drawn in its colour."""
    stack = stacked_frames(segments)
    if stack.shape[:3] != (image.frames, *image.frame_shape):
        raise ValueError(f"masks of shape {stack.shape[:3]} do not match the image "
                         f"({image.frames} frames of {image.frame_shape})")
    frame = default_frame(segments) if frame is None else frame
    if not 0 <= frame < image.frames:
        raise ValueError(f"frame {frame} out of range (image has {image.frames})")
    rgb = _display_rgb(image.frame(frame).pixels).copy()
    for index, segment in enumerate(segments):
        outline = find_boundaries(stack[frame, ..., index], mode="inner")
        if thickness > 1:
            outline = binary_dilation(outline, structure=np.ones((thickness, thickness), bool))
        rgb[outline] = np.rint(np.asarray(segment.color) * 255).astype(np.uint8)
    return rgb


def write_overlay_png(path: str | os.PathLike[str], image: USImage, segments: Sequence[Segment],
                      frame: int | None = None, thickness: int = 1) -> Path:
    """Write the overlay of `frame` (default: the first frame with a mask) as a PNG."""
    if not str(path).lower().endswith(".png"):
        raise OutputError(path, "overlay file name must end with .png")
    rgb = render_overlay(image, segments, frame=frame, thickness=thickness)
    with atomic_output(path) as tmp:  # the temporary file keeps the .png suffix that picks the format
        skio.imsave(tmp, rgb, check_contrast=False)
    return Path(path)

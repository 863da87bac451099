"""Burned-in annotations inside the scan area: find them and paint them over.

Scanners draw text, caliper crosses, depth ticks and markers into the pixels. They differ from
tissue in ways speckle never shows together: they are much brighter than their surroundings,
one or two pixels thin, drawn in one colour with step edges (speckle grains are blurred by the
point spread function and vary in brightness; bright reflectors and calcifications are compact
blobs), or they are coloured in a grey image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from usvlm.errors import InputError
from usvlm.io.image import USImage
from usvlm.preprocess._arrays import Box, check_pixels, luminance, to_unit_float, unit_frames
from usvlm.preprocess.fov import FieldOfView

# Bright strokes: at least this bright, and this much brighter than the local background
# (a 5x5 grey opening removes every structure thinner than 5 pixels).
_MIN_BRIGHTNESS = 0.6
_MIN_CONTRAST = 0.3
_STROKE_WIDTH = 5
# A stroke component must span this many pixels and have at most this fraction of pixels with
# all 8 neighbours in the component (thin lines have none, blobs many).
_MIN_EXTENT = 4
_MAX_INTERIOR = 0.25
# Drawn strokes have a step edge on every pixel (mean drop to the darkest neighbour) and one
# colour (spread of values); blurred speckle grains and reflectors have neither.
_MIN_EDGE = 0.33
_MAX_SPREAD = 0.06
# Coloured pixels: chroma (max - min channel) at least this, unless the image is mostly colour
# (a tinted grey map), where colour says nothing.
_MIN_CHROMA = 0.15
_MAX_COLOUR_FRACTION = 0.5

_IN_FRAME = np.zeros((3, 3, 3), dtype=bool)  # 8-connectivity within a frame, none across frames
_IN_FRAME[1] = True


def detect_overlays(image_or_frame: USImage | np.ndarray, fov: FieldOfView | None = None) -> np.ndarray:
    """Bool mask of burned-in annotations inside the bounding box of `fov`.

    A `USImage` gives (H, W), or (T, H, W) for a cine; an array is one frame, (H, W) or (H, W, 3).
    """
    if isinstance(image_or_frame, USImage):
        frames, rgb, source = unit_frames(image_or_frame), image_or_frame.is_rgb, image_or_frame.info.path
        single = not image_or_frame.is_cine
    else:
        check_pixels(image_or_frame)
        rgb = image_or_frame.ndim == 3 and image_or_frame.shape[-1] == 3
        if image_or_frame.ndim != 2 + int(rgb):
            raise InputError(None, f"expected one frame (H, W) or (H, W, 3), got shape {image_or_frame.shape}")
        frames, source, single = to_unit_float(image_or_frame)[np.newaxis], None, True
    shape = frames.shape[1:3]
    if fov is not None and fov.shape != shape:
        raise InputError(source, f"field of view of shape {fov.shape} does not fit an image of {shape}")
    box = fov.box if fov is not None else (0, 0, shape[1] - 1, shape[0] - 1)
    mask = overlay_mask(frames, rgb, box)
    return mask[0] if single else mask


def overlay_mask(frames: np.ndarray, rgb: bool, box: Box) -> np.ndarray:
    """(T, H, W) overlay mask of float frames (T, H, W[, 3]) in [0, 1], inside `box` only.

    Frame by frame (strokes never connect across frames), so the temporaries are those of one
    frame, not of the whole cine."""
    x0, y0, x1, y1 = box
    crop = frames[:, y0:y1 + 1, x0:x1 + 1]
    # Colour marks count only when the loop as a whole is mostly grey.
    colour = rgb and _colour_fraction(crop) <= _MAX_COLOUR_FRACTION
    mask = np.zeros(frames.shape[:3], dtype=bool)
    for t in range(crop.shape[0]):
        found = _bright_strokes(luminance(crop[t:t + 1], rgb))
        if colour:
            found |= _chroma(crop[t:t + 1]) >= _MIN_CHROMA
        # One pixel more covers the anti-aliased rim that the thresholds miss.
        mask[t:t + 1, y0:y1 + 1, x0:x1 + 1] = ndimage.binary_dilation(found, _IN_FRAME)
    return mask


def _bright_strokes(grey: np.ndarray) -> np.ndarray:
    """Thin, bright, sharp-edged structures in (T, H, W) grey frames."""
    # Two 3x3 erosions make the 5x5 one of the opening; the first also gives the edge drop.
    eroded = ndimage.grey_erosion(grey, size=(1, 3, 3))
    background = ndimage.grey_dilation(ndimage.grey_erosion(eroded, size=(1, 3, 3)),
                                       size=(1, _STROKE_WIDTH, _STROKE_WIDTH))
    seeds = (grey >= _MIN_BRIGHTNESS) & (grey - background >= _MIN_CONTRAST)
    labels, count = ndimage.label(seeds, _IN_FRAME)
    if count == 0:
        return seeds
    # Per-component statistics over the seed pixels only (few, so this stays fast).
    where = np.nonzero(seeds)
    lab = labels[where]
    value = grey[where]
    # Drop to the darkest 8-neighbour: large on every pixel of a stroke, small inside blurred grains.
    drop = value - eroded[where]
    inner = ndimage.binary_erosion(seeds, _IN_FRAME)[where]
    n = np.bincount(lab, minlength=count + 1).astype(np.float64)
    n[0] = 1.0
    mean = np.bincount(lab, value, count + 1) / n
    spread = np.sqrt(np.maximum(np.bincount(lab, value * value, count + 1) / n - mean * mean, 0.0))
    edge = np.bincount(lab, drop, count + 1) / n
    interior = np.bincount(lab, inner, count + 1) / n
    extent = np.maximum(_span(lab, where[1], count), _span(lab, where[2], count))
    drawn = ((extent >= _MIN_EXTENT) & (interior <= _MAX_INTERIOR)
             & (edge >= _MIN_EDGE) & (spread <= _MAX_SPREAD))
    drawn[0] = False
    return drawn[labels]


def _span(labels: np.ndarray, coord: np.ndarray, count: int) -> np.ndarray:
    """Per label, max - min + 1 of `coord` (0 for absent labels)."""
    low = np.full(count + 1, np.iinfo(np.int64).max)
    high = np.full(count + 1, -1)
    np.minimum.at(low, labels, coord)
    np.maximum.at(high, labels, coord)
    return np.maximum(high - low + 1, 0)


def _chroma(rgb: np.ndarray) -> np.ndarray:
    return rgb.max(axis=-1) - rgb.min(axis=-1)


def _colour_fraction(rgb: np.ndarray) -> float:
    """Fraction of coloured pixels of (T, H, W, 3) frames (counted frame by frame)."""
    coloured = sum(int(np.count_nonzero(_chroma(frame) >= _MIN_CHROMA)) for frame in rgb)
    return coloured / max(rgb.shape[0] * rgb.shape[1] * rgb.shape[2], 1)


def suppress_overlays(pixels: np.ndarray, mask: np.ndarray, *, support: np.ndarray | None = None) -> np.ndarray:
    """`pixels` with the `mask`ed ones filled from their unmasked neighbours.

    pixels: (H, W), (H, W, C), (T, H, W) or (T, H, W, C); mask: (H, W) for all frames or
    (T, H, W). Only pixels in `support` ((H, W), e.g. the field of view) lend their values, so
    the black outside a fan does not bleed in. The fill is a normalised convolution at growing
    scales (the mean of the valid neighbours in a box, whose cost does not grow with its size):
    fast and smooth, which is what a thin annotation's few pixels need. Returns the input's
    shape and dtype.
    """
    check_pixels(pixels)
    single = mask.ndim == 2 and pixels.shape[:2] == mask.shape
    frames = pixels[np.newaxis] if single else pixels
    if mask.ndim == 2 and not single and frames.shape[1:3] == mask.shape:
        mask = np.broadcast_to(mask, frames.shape[:3])  # one mask for every frame
    masks = mask[np.newaxis] if single else mask
    if frames.shape[:3] != masks.shape or frames.ndim not in (3, 4):
        raise InputError(None, f"overlay mask of shape {mask.shape} does not fit pixels of shape {pixels.shape}")
    if not masks.any():
        return pixels.copy()
    channels = frames.ndim == 4
    out = frames.astype(np.float32)  # a copy
    valid = ~masks if support is None else ~masks & support
    todo = masks.copy()
    rows, cols = np.flatnonzero(todo.any(axis=(0, 2))), np.flatnonzero(todo.any(axis=(0, 1)))
    for width in (3, 5, 9, 17, 33, 65, 129):
        # Work on the box around what is left to fill, with room for the filter.
        m = width // 2 + 1
        ys = slice(max(rows[0] - m, 0), rows[-1] + m + 1)
        xs = slice(max(cols[0] - m, 0), cols[-1] + m + 1)
        ok = valid[:, ys, xs].astype(np.float32)
        weight = ndimage.uniform_filter(ok, (1, width, width), mode="constant")
        part = out[:, ys, xs]
        if channels:
            total = ndimage.uniform_filter(part * ok[..., np.newaxis], (1, width, width, 1), mode="constant")
            mean = total / np.maximum(weight, 1e-6)[..., np.newaxis]
        else:
            mean = ndimage.uniform_filter(part * ok, (1, width, width), mode="constant") / np.maximum(weight, 1e-6)
        # Fill where enough valid neighbours are near; the rest waits for a wider window.
        ready = todo[:, ys, xs] & (weight > (0.2 if width < 129 else 1e-6))
        part[ready] = mean[ready]
        todo[:, ys, xs] &= ~ready
        if not todo.any():
            break
        rows, cols = np.flatnonzero(todo.any(axis=(0, 2))), np.flatnonzero(todo.any(axis=(0, 1)))
    out[todo] = 0.0  # no valid pixel anywhere near: nothing better to put there
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    out = out.astype(pixels.dtype, copy=False)
    return out[0] if single else out

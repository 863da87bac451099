"""One phantom image with its labels: geometry -> tissue -> lesions -> echoes -> display -> overlays.

With `config.variety` (VARIETY_CONFIG) every stage also draws from the wider ranges of
config.VarietyRanges; without it (SPEC_CONFIG) the random draws, and so the images, are v1's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .config import DEFAULT_CONFIG, ORGANS, PROBES, PhantomConfig, uniform
from .formation import beam_envelope, log_compress, sample_acquisition, vary_acquisition
from .overlays import draw_overlays
from .probe import ProbeGeometry, sample_geometry
from .structures import (KINDS, ORGAN_KINDS, Lesion, Patch, fill, fits_outline, fits_roughly,
                         rasterize, reach_px, sample_lesion)
from .tissue import Background, make_background

GENERATOR = "USVLM-Phantom v1"
VERSION = "1.1.0"     # 1.1: the variety (domain randomisation, VARIETY_CONFIG); phased arrays


@dataclass
class PhantomSample:
    image: np.ndarray                   # uint8 (H, W)
    masks: list[np.ndarray]             # one bool (H, W) per structure, non-overlapping
    structures: list[dict]              # class, malignancy, description, attributes, bbox, area_px
    parts: list[dict[str, np.ndarray]]  # per structure: named sub-regions (hilum, halo, ...)
    organ: str
    probe: str
    spacing_mm: float
    depth_mm: float
    width_mm: float
    seed: int
    index: int
    fov_mask: np.ndarray                # bool (H, W): inside the imaged field
    overlay_mask: np.ndarray            # bool (H, W): burned-in overlay pixels
    overlay_boxes: list[dict]           # {kind, box: [x0, y0, x1, y1) , text?}
    geometry: dict = field(default_factory=dict)
    acquisition: dict = field(default_factory=dict)
    layers: list[dict] = field(default_factory=list)
    envelope: np.ndarray | None = None  # debug: envelope before log compression (image grid)

    @property
    def has_overlay(self) -> bool:
        return bool(self.overlay_boxes)


def _check_choice(value, allowed: Sequence[str], name: str) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _place_lesions(kinds: Sequence[str], background: Background, zone: str,
                   geometry: ProbeGeometry, rng: np.random.Generator, config: PhantomConfig,
                   large: bool = False) -> list[tuple[Lesion, Patch]]:
    """Rejection-sample lesion positions inside the zone, without overlapping earlier masks.

    A lesion that keeps failing shrinks; the first one always finds a place (or the zone is
    empty, which the layer ranges rule out).
    """
    allowed = background.zones[zone] & ndimage.binary_erosion(geometry.fov_mask, iterations=3)
    if config.variety is not None:
        return _place_varied(kinds, background, allowed, geometry, rng, config, large)
    occupied = np.zeros(geometry.shape, bool)
    placed: list[tuple[Lesion, Patch]] = []
    for number, kind in enumerate(kinds):
        lesion = sample_lesion(kind, rng, config.structures, background.reference_echo)
        attempts = 60 if number == 0 else 15
        for attempt in range(attempts):
            if attempt and attempt % 3 == 0 and max(lesion.width_mm, lesion.height_mm) > 2.5:
                lesion = lesion.scaled(0.85)
            free = allowed & ~occupied
            candidates = np.flatnonzero(free)
            if candidates.size == 0:
                break
            center = divmod(int(candidates[rng.integers(candidates.size)]), geometry.shape[1])
            if not fits_roughly(lesion, center, geometry, free):
                continue
            patch = rasterize(lesion, center, geometry)
            if patch is None:
                continue
            window = patch.window
            if (patch.mask & ~allowed[window]).any() or (patch.mask & occupied[window]).any():
                continue
            occupied[window] |= patch.mask
            fill(lesion, patch, geometry, rng, config.structures)
            placed.append((lesion, patch))
            break
    return placed


def _clearance(free: np.ndarray, axis: int) -> np.ndarray:
    """Cells from each cell to the nearest non-free cell (or the border) along `axis`, the
    nearer side of the two."""
    n = free.shape[axis]
    index = np.arange(n).reshape((-1, 1) if axis == 0 else (1, -1))
    blocked = np.where(free, -1, index)
    before = index - np.maximum.accumulate(blocked, axis=axis)
    blocked_rev = np.where(np.flip(free, axis), -1, index)
    after = np.flip(index - np.maximum.accumulate(blocked_rev, axis=axis), axis)
    return np.minimum(before, after)


def _extents(lesion: Lesion, spacing_mm: float) -> tuple[float, float, float]:
    """(inscribed radius of the smallest possible outline, half extents of the unperturbed
    ellipse along the image column and along the row), in px: what should be free around a
    centre."""
    shrink = 0.9 * max(1 - sum(abs(amp) for _, amp, _ in lesion.harmonics), 0.3)
    a, b = lesion.width_mm / 2 / spacing_mm, lesion.height_mm / 2 / spacing_mm
    c, s = math.cos(lesion.tilt), math.sin(lesion.tilt)
    vertical = 1 / math.sqrt((s / a) ** 2 + (c / b) ** 2)
    horizontal = 1 / math.sqrt((c / a) ** 2 + (s / b) ** 2)
    return shrink * min(a, b), 0.95 * vertical, 0.95 * horizontal


def _place_varied(kinds: Sequence[str], background: Background, allowed: np.ndarray,
                  geometry: ProbeGeometry, rng: np.random.Generator, config: PhantomConfig,
                  large: bool) -> list[tuple[Lesion, Patch]]:
    """Placement for the variety, built for large lesions: centres are drawn only where the free
    zone is deep enough (distance and vertical / horizontal clearance maps on a coarse grid) for
    the lesion's smallest outline; a lesion that fits nowhere, or keeps failing, shrinks.
    `large`: the first lesion is drawn to cover a share of the field of view."""
    variety = config.variety
    s = geometry.spacing_mm
    fov_area_mm2 = float(geometry.fov_mask.sum()) * s * s
    step = max(1, min(geometry.shape) // 64)
    occupied = np.zeros(geometry.shape, bool)
    placed: list[tuple[Lesion, Patch]] = []
    for number, kind in enumerate(kinds):
        area = uniform(rng, variety.large_area_fraction) * fov_area_mm2 if large and number == 0 else None
        lesion = sample_lesion(kind, rng, config.structures, background.reference_echo, variety, area)
        free = allowed & ~occupied
        coarse = free[::step, ::step]
        if not coarse.any():
            break
        depth_px = ndimage.distance_transform_edt(coarse) * step
        column_px, row_px = _clearance(coarse, 0) * step, _clearance(coarse, 1) * step
        template, attempts, at_this_size = None, 0, 0
        while attempts < (80 if number == 0 else 30):
            radius, vertical, horizontal = _extents(lesion, s)
            candidates = np.flatnonzero((depth_px >= radius) & (column_px >= vertical)
                                        & (row_px >= horizontal))
            if candidates.size == 0 or at_this_size == 6:
                if max(lesion.width_mm, lesion.height_mm) * 0.9 < 1.5:
                    break
                lesion, template, at_this_size = lesion.scaled(0.9), None, 0
                continue
            attempts += 1
            at_this_size += 1
            row, col = divmod(int(candidates[rng.integers(candidates.size)]), coarse.shape[1])
            center = (row * step, col * step)
            if not fits_outline(lesion, center, geometry, free):
                continue
            if geometry.kind == "convex":      # the lesion turns with the skin: rasterise here
                patch = rasterize(lesion, center, geometry, dtype=np.float32)
            else:                              # the same mask everywhere: rasterise once, move it
                if template is None:
                    half = reach_px(lesion, s)
                    template = rasterize(lesion, (half, half), geometry, (2 * half + 1,) * 2,
                                         dtype=np.float32)
                    if template is None:
                        break
                patch = template.moved(center, geometry.shape)
            if patch is None:
                continue
            window = patch.window
            if (patch.mask & ~allowed[window]).any() or (patch.mask & occupied[window]).any():
                continue
            occupied[window] |= patch.mask
            fill(lesion, patch, geometry, rng, config.structures)
            placed.append((lesion, patch))
            break
    return placed


def _posterior_attenuation(items: list[tuple[np.ndarray, float]], geometry: ProbeGeometry
                           ) -> np.ndarray | None:
    """Extra attenuation (dB per beam-grid pixel) inside lesions with a posterior feature.

    Spread evenly over the lesion so that the beam through its thickest part loses (or gains)
    exactly the lesion's posterior dB; thinner paths near its sides get proportionally less.
    """
    if not items:
        return None
    labels = np.zeros(geometry.shape, np.float32)
    for number, (mask, _) in enumerate(items, start=1):
        labels[mask] = number
    labels = np.rint(geometry.to_beam(labels, order=0))      # one resampling for all lesions
    excess = np.zeros(geometry.beam_shape, np.float32)
    for number, (_, posterior_db) in enumerate(items, start=1):
        beam_mask = labels == number
        thickest = int(beam_mask.sum(axis=0).max())
        if thickest:
            excess[beam_mask] -= np.float32(posterior_db / thickest)
    return excess


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def generate_sample(seed: int, index: int, *, size: int | tuple[int, int] | None = None,
                    organ: str | None = None, probe: str | None = None,
                    kinds: Sequence[str] | None = None, config: PhantomConfig = DEFAULT_CONFIG,
                    return_envelope: bool = False) -> PhantomSample:
    """Generate phantom `index` of the series `seed`; the same pair gives the same bits.

    size: image side (square) or (rows, columns); None draws 256-640 px sides.
    kinds: lesion kinds to include (keys of `structures.KINDS`), default drawn for the organ.
    """
    _check_choice(organ, ORGANS, "organ")
    _check_choice(probe, PROBES, "probe")
    for kind in kinds or ():
        _check_choice(kind, tuple(KINDS), "kind")
    rng = np.random.default_rng([seed, index])
    variety = config.variety
    geometry = sample_geometry(rng, size, probe, config.geometry, variety)
    if organ is None:
        organ = str(ORGANS[rng.integers(len(ORGANS))]) if not kinds else next(
            o for o in ORGANS if set(kinds) <= set(ORGAN_KINDS[o][0]))
    organ_kinds, weights, zone = ORGAN_KINDS[organ]
    if kinds is None:
        count = int(rng.integers(config.structures.count[0], config.structures.count[1] + 1))
        p = np.asarray(weights, float) / sum(weights)
        kinds = [str(k) for k in rng.choice(organ_kinds, size=count, p=p)]
    elif not set(kinds) <= set(organ_kinds):
        raise ValueError(f"kinds {sorted(set(kinds) - set(organ_kinds))} do not occur in {organ}")

    large = variety is not None and rng.random() < variety.large_probability
    background = make_background(organ, geometry, rng, config, room=large)
    acquisition = sample_acquisition(rng, config.formation, geometry.beam_range_mm)
    if variety is not None:
        acquisition = vary_acquisition(acquisition, rng, variety)
    placed = _place_lesions(kinds, background, zone, geometry, rng, config, large)

    echo = background.echo.copy()
    masks, structures, parts, posterior = [], [], [], []
    taken = np.zeros(geometry.shape, bool)
    for lesion, patch in placed:
        region = echo[patch.window]
        if patch.alpha is None:
            region[patch.mask] = patch.echo[patch.mask]
        else:   # soft margin: blend, but never into a lesion placed before
            alpha = np.where(taken[patch.window] & ~patch.mask, np.float32(0), patch.alpha)
            region += (patch.echo - region) * alpha
        taken[patch.window] |= patch.mask
        mask = patch.full(patch.mask, geometry.shape)
        masks.append(mask)
        parts.append({name: patch.full(part, geometry.shape) for name, part in patch.parts.items()})
        structures.append({"class": lesion.class_name, "malignancy": lesion.malignancy,
                           "kind": lesion.kind, "description": lesion.describe(),
                           "attributes": dict(lesion.attributes), "bbox": _bbox(mask),
                           "area_px": int(mask.sum())})
        if lesion.posterior_db:
            posterior.append((mask, lesion.posterior_db))

    envelope = geometry.to_image(beam_envelope(
        geometry.to_beam(echo), geometry, acquisition, config.formation, rng,
        background.reference_echo, _posterior_attenuation(posterior, geometry)))
    image = log_compress(envelope, acquisition, background.reference_echo)
    image[~geometry.fov_mask] = 0

    if rng.random() < config.overlay_probability:
        lesions = np.logical_or.reduce(masks) if masks else np.zeros(geometry.shape, bool)
        overlays = draw_overlays(image, lesions, geometry, organ, acquisition.to_dict(), rng)
        overlay_mask, boxes = overlays.mask, overlays.boxes
    else:
        overlay_mask, boxes = np.zeros(geometry.shape, bool), []

    return PhantomSample(
        image=image, masks=masks, structures=structures, parts=parts, organ=organ,
        probe=geometry.kind, spacing_mm=geometry.spacing_mm, depth_mm=geometry.depth_mm,
        width_mm=geometry.width_mm, seed=int(seed), index=int(index),
        fov_mask=geometry.fov_mask.copy(), overlay_mask=overlay_mask, overlay_boxes=boxes,
        geometry=geometry.to_dict(), acquisition=acquisition.to_dict(), layers=background.layers,
        envelope=envelope if return_envelope else None)

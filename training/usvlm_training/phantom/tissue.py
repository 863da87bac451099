"""Organ backgrounds: layered echogenicity maps (breast, thyroid, neck) with low-frequency texture.

Layers follow the skin, i.e. they are defined in (along-skin, depth-below-skin) coordinates, so
they bend with a convex probe's face. Each background also says where lesions may sit (zones).
With the variety on, each layer's echo is jittered, the texture ranges are wider, and a background
can leave room for a large lesion (thinner fat, thicker gland / thyroid lobe, less muscle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .config import PhantomConfig, uniform
from .probe import ProbeGeometry


def _interp_matrix(n_out: int, n_in: int, step: float) -> np.ndarray:
    """Linear-interpolation weights (n_out x n_in) from a coarse grid of pitch `step` fine pixels."""
    pos = np.clip((np.arange(n_out) + 0.5) / step - 0.5, 0, n_in - 1)
    low = np.minimum(pos.astype(int), n_in - 2) if n_in > 1 else np.zeros(n_out, int)
    frac = (pos - low).astype(np.float32)
    out = np.zeros((n_out, n_in), np.float32)
    out[np.arange(n_out), low] = 1 - frac
    if n_in > 1:
        out[np.arange(n_out), low + 1] += frac
    return out


def smooth_noise(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise, zero mean, unit std (float32).

    Smoothing is done on a grid ~sigma/2 coarser and interpolated up: a full-resolution filter
    with sigma of tens of pixels would cost more than the whole speckle simulation.
    """
    step = max(1.0, sigma_px / 2)
    coarse_shape = (math.ceil(shape[0] / step) + 1, math.ceil(shape[1] / step) + 1)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32),
                                     sigma_px / step, mode="reflect")
    fine = _interp_matrix(shape[0], coarse_shape[0], step) @ coarse \
        @ _interp_matrix(shape[1], coarse_shape[1], step).T
    fine -= fine.mean()
    return fine / max(float(fine.std()), 1e-6)


def _wavy_boundary(lateral: np.ndarray, depth0: float, amplitude: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Depth (mm) of a gently undulating tissue interface at each pixel's along-skin position."""
    grid = np.linspace(float(lateral.min()) - 1, float(lateral.max()) + 1, 64)
    profile = np.zeros_like(grid)
    for _ in range(2):
        wavelength = rng.uniform(10, 40)
        profile += np.sin(2 * np.pi * grid / wavelength + rng.uniform(0, 2 * np.pi))
    return depth0 + amplitude / 2 * np.interp(lateral, grid, profile)


@dataclass
class Background:
    echo: np.ndarray                      # echogenicity e(x, z) in [0, 1], float32
    zones: dict[str, np.ndarray]          # where lesions may sit, by zone name
    reference_echo: float                 # main tissue echogenicity: the display gain targets it
    layers: list[dict] = field(default_factory=list)   # (name, echo, top mm) for the metadata


class _Layers:
    """Builds a map by painting layers from the skin down."""

    def __init__(self, geometry: ProbeGeometry, rng: np.random.Generator,
                 jitter_db: float = 0.0) -> None:
        self.rng = rng
        self.jitter_db = jitter_db
        self.lateral, self.depth = geometry.tissue_coords
        self.spacing = geometry.spacing_mm
        self.echo = np.zeros(geometry.shape, np.float32)
        self.meta: list[dict] = []
        self.masks: dict[str, np.ndarray] = {}

    def paint(self, name: str, echo: float, top_mm: float, wave_mm: float = 0.0,
              striation: float = 0.0) -> float:
        """Layer from `top_mm` (undulating by `wave_mm`) down to whatever is painted next.

        Returns the layer's echo (jittered when the variety asks for it)."""
        if self.jitter_db:
            echo = float(echo * 10 ** (self.rng.uniform(-self.jitter_db, self.jitter_db) / 20))
        top = _wavy_boundary(self.lateral, top_mm, wave_mm, self.rng) if wave_mm else top_mm
        inside = self.depth >= top
        value = np.full(self.echo.shape, echo, np.float32)
        if striation:
            # Muscle: thin bright fascicle lines parallel to the skin.
            period = self.rng.uniform(1.0, 2.0)
            phase = self.rng.uniform(0, 2 * np.pi)
            wave = np.cos(2 * np.pi * self.depth / period + phase
                          + 0.3 * np.sin(2 * np.pi * self.lateral / self.rng.uniform(15, 40)))
            value += striation * np.maximum(wave, 0) ** 4
        self.echo[inside] = value[inside]
        for other in self.masks.values():
            other &= ~inside
        self.masks[name] = inside.copy()
        self.meta.append({"name": name, "echo": round(echo, 3), "top_mm": round(top_mm, 2)})
        return echo

    def line(self, echo: float, at_mm: float, thickness_mm: float) -> None:
        """A thin bright interface (fascia) at a depth."""
        band = np.abs(self.depth - at_mm) <= thickness_mm / 2
        self.echo[band] = np.maximum(self.echo[band], echo)

    def zone(self, name: str, margin_mm: float) -> np.ndarray:
        return ndimage.binary_erosion(self.masks[name],
                                      iterations=max(1, round(margin_mm / self.spacing)))


def _breast(layers: _Layers, rng: np.random.Generator, depth: float, room: bool = False
            ) -> tuple[dict, float]:
    skin = uniform(rng, (1.0, 2.0))
    fat = skin + uniform(rng, (1.0, 4.0) if room else (3.0, 8.0))
    gland_echo = uniform(rng, (0.6, 0.72))
    layers.paint("skin", uniform(rng, (0.85, 0.95)), 0.0)
    layers.paint("fat", uniform(rng, (0.3, 0.42)), skin)
    gland_echo = layers.paint("gland", gland_echo, fat, wave_mm=uniform(rng, (1.0, 3.0)))
    if rng.random() < (0.25 if room else 0.6):
        muscle = uniform(rng, (0.88, 0.95) if room else (0.78, 0.92)) * depth
        layers.paint("muscle", uniform(rng, (0.4, 0.5)), muscle, striation=0.3)
        layers.line(uniform(rng, (0.8, 0.9)), muscle, uniform(rng, (0.4, 0.8)))
    return {"gland": layers.zone("gland", 1.0)}, gland_echo


def _thyroid(layers: _Layers, rng: np.random.Generator, depth: float, room: bool = False
             ) -> tuple[dict, float]:
    skin = uniform(rng, (1.0, 1.5))
    fat = skin + uniform(rng, (1.0, 3.0))
    strap = fat + uniform(rng, (1.5, 3.0) if room else (2.0, 5.0))
    lobe_echo = uniform(rng, (0.62, 0.75))
    # A large nodule enlarges its lobe.
    lobe_bottom = strap + (min(uniform(rng, (18.0, 32.0)), 0.9 * depth - strap) if room
                           else min(uniform(rng, (12.0, 20.0)), 0.8 * depth - strap))
    layers.paint("skin", uniform(rng, (0.85, 0.95)), 0.0)
    layers.paint("fat", uniform(rng, (0.3, 0.4)), skin)
    layers.paint("strap muscle", uniform(rng, (0.4, 0.5)), fat, striation=0.25)
    lobe_echo = layers.paint("thyroid", lobe_echo, strap, wave_mm=uniform(rng, (0.5, 1.5)))
    layers.line(uniform(rng, (0.75, 0.85)), strap, 0.4)
    layers.paint("deep muscle", uniform(rng, (0.38, 0.48)), lobe_bottom, wave_mm=1.5, striation=0.2)
    return {"thyroid": layers.zone("thyroid", 0.6)}, lobe_echo


def _neck(layers: _Layers, rng: np.random.Generator, depth: float, room: bool = False
          ) -> tuple[dict, float]:
    skin = uniform(rng, (1.0, 2.0))
    fat = skin + uniform(rng, (1.0, 3.0) if room else (2.0, 5.0))
    muscle_bottom = fat + uniform(rng, (2.5, 5.0) if room else (5.0, 10.0))
    deep_echo = uniform(rng, (0.52, 0.62))
    layers.paint("skin", uniform(rng, (0.85, 0.95)), 0.0)
    layers.paint("fat", uniform(rng, (0.3, 0.4)), skin)
    layers.paint("muscle", uniform(rng, (0.4, 0.5)), fat, wave_mm=1.0, striation=0.3)
    deep_echo = layers.paint("deep tissue", deep_echo, muscle_bottom,
                             wave_mm=uniform(rng, (1.0, 3.0)))
    layers.line(uniform(rng, (0.75, 0.85)), muscle_bottom, 0.5)
    return {"deep": layers.zone("deep tissue", 1.0)}, deep_echo


_ORGANS = {"breast": _breast, "thyroid": _thyroid, "neck": _neck}


def make_background(organ: str, geometry: ProbeGeometry, rng: np.random.Generator,
                    config: PhantomConfig, room: bool = False) -> Background:
    """The organ's layered echogenicity; `room` (variety only): leave room for a large lesion."""
    variety = config.variety
    layers = _Layers(geometry, rng, variety.layer_jitter_db if variety else 0.0)
    builder = _ORGANS[organ]
    zones, reference = (builder(layers, rng, geometry.beam_range_mm, room) if room
                        else builder(layers, rng, geometry.beam_range_mm))
    sigma_mm, amplitude = ((config.texture_sigma_mm, config.texture_amplitude) if variety is None
                           else (variety.texture_sigma_mm, variety.texture_amplitude))
    sigma_px = uniform(rng, sigma_mm) / geometry.spacing_mm
    texture = smooth_noise(geometry.shape, sigma_px, rng)
    echo = layers.echo * (1 + uniform(rng, amplitude) * texture)
    fov = geometry.fov_mask
    zones = {name: zone & fov for name, zone in zones.items()}
    return Background(np.clip(echo, 0, 1).astype(np.float32), zones, reference, layers.meta)

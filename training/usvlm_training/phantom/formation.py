"""Image formation: speckle, attenuation with TGC, log compression (USVLM-Phantom v1).

Speckle is simulated in complex baseband (IQ), which is equivalent to, and much cheaper than,
an RF simulation followed by |hilbert|: the RF pulse is a Gaussian-enveloped cosine
g(t) cos(2 pi f0 t); its analytic signal is g(t) exp(i 2 pi f0 t) (g is narrowband), so after
demodulation at f0 the pulse is the real Gaussian g, and |analytic RF| = |IQ|. Complex Gaussian
scatterers on every pixel, scaled by the echogenicity, are convolved with that baseband PSF
(axial Gaussian x lateral Gaussian that widens away from the focus). A linear filter of complex
Gaussian noise is complex Gaussian, so the envelope |IQ| in uniform tissue is exactly Rayleigh
(fully developed speckle, mean / std = 1.91) as long as the PSF spans >= 2 scatterers.

The variety (config.VarietyRanges, `vary_acquisition`) departs from that on purpose: sparse
scatterers (a few per resolution cell: K-distributed, pre-Rayleigh speckle), compounded frames
(smoother, Nakagami m > 1 like), wider or narrower PSFs along each axis (speckle size and
anisotropy), random smooth TGC curves with occasional bad ones, a darker side (poor contact), and
display maps (dynamic range, gain, gamma, speckle-reduction smoothing). Every such field of
`Acquisition` defaults to the v1 behaviour.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from .config import FormationRanges, VarietyRanges, log_uniform, uniform
from .probe import ProbeGeometry

# E[20 log10 R] for a Rayleigh envelope with E[R^2] = 1: -10 log10(e) * Euler's gamma.
RAYLEIGH_LOG_MEAN_DB = -10 * math.log10(math.e) * 0.5772156649

# E[20 log10 R] relative to Rayleigh (same E[R^2]), measured by simulation with Gaussian PSFs:
# sparse scatterers (per resolution cell 2 pi sigma_a sigma_l) lower it, averaged frames raise it.
# The display gain uses it, so that reference tissue still lands near its grey level.
_SPARSE_LOG_OFFSET = ((1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0),
                      (-3.8, -1.35, -0.7, -0.3, -0.15, -0.1, -0.08))
_COMPOUND_LOG_OFFSET = (0.0, 0.0, 1.3, 1.7, 1.9)       # by number of frames


@dataclass(frozen=True)
class Acquisition:
    frequency_mhz: float
    fractional_bandwidth: float
    f_number: float
    focus_mm: float
    depth_of_field_mm: float
    attenuation_db_cm_mhz: float
    residual_tgc_db: tuple[float, float]     # net gain trend: linear and quadratic terms at full depth
    dynamic_range_db: float
    background_grey: float                   # display gain: where reference tissue lands
    noise_above_floor_db: float
    # ----- variety (defaults: USVLM-Phantom v1)
    axial_scale: float = 1.0                 # PSF sigma factors: speckle size and anisotropy
    lateral_scale: float = 1.0
    scatterers_per_cell: float = 0.0         # 0: a scatterer on every pixel (fully developed)
    compounding: int = 1                     # frames averaged (envelopes)
    tgc_knots_db: tuple[float, ...] = ()     # smooth TGC error curve, knots evenly over depth
    dropout: tuple[float, ...] = ()          # (side -1 left / +1 right, share of lines, dB)
    grey_gamma: float = 1.0                  # display map: S-curve exponent around the tissue grey
    smoothing_px: float = 0.0                # speckle-reduction filter on the display

    def to_dict(self) -> dict:
        out = {}
        for key, value in asdict(self).items():
            if key in _VARIETY_DEFAULTS and value == _VARIETY_DEFAULTS[key]:
                continue                     # v1 metadata stays as it was
            out[key] = [round(v, 4) for v in value] if isinstance(value, tuple) else round(value, 4)
        return out


_VARIETY_DEFAULTS = {"axial_scale": 1.0, "lateral_scale": 1.0, "scatterers_per_cell": 0.0,
                     "compounding": 1, "tgc_knots_db": (), "dropout": (), "grey_gamma": 1.0,
                     "smoothing_px": 0.0}


def sample_acquisition(rng: np.random.Generator, ranges: FormationRanges, depth_mm: float
                       ) -> Acquisition:
    # Residual trend a x + b x^2 with |a| + |b| <= the allowed residual, so |trend| stays within it.
    linear = uniform(rng, (-1.0, 1.0)) * ranges.residual_tgc_db
    quadratic = uniform(rng, (-1.0, 1.0)) * (ranges.residual_tgc_db - abs(linear))
    return Acquisition(
        frequency_mhz=uniform(rng, ranges.frequency_mhz),
        fractional_bandwidth=uniform(rng, ranges.fractional_bandwidth),
        f_number=uniform(rng, ranges.f_number),
        focus_mm=uniform(rng, ranges.focus_fraction) * depth_mm,
        depth_of_field_mm=uniform(rng, ranges.depth_of_field_mm),
        attenuation_db_cm_mhz=uniform(rng, ranges.attenuation_db_cm_mhz),
        residual_tgc_db=(round(linear, 4), round(quadratic, 4)),
        dynamic_range_db=uniform(rng, ranges.dynamic_range_db),
        background_grey=uniform(rng, ranges.background_grey),
        noise_above_floor_db=uniform(rng, ranges.noise_above_floor_db),
    )


def vary_acquisition(acq: Acquisition, rng: np.random.Generator, variety: VarietyRanges
                     ) -> Acquisition:
    """The v1 acquisition with the variety's wider ranges and its extra effects drawn."""
    knots = rng.uniform(-1.0, 1.0, int(rng.integers(variety.tgc_knots[0], variety.tgc_knots[1] + 1)))
    knots *= uniform(rng, variety.tgc_ripple_db)
    if rng.random() < variety.bad_tgc_probability:
        # A band too dark or too bright (one knot, sometimes with its neighbour).
        at = int(rng.integers(knots.size))
        offset = uniform(rng, variety.bad_tgc_db) * (1 if rng.random() < 0.4 else -1)
        knots[at] += offset
        if rng.random() < 0.5:
            knots[min(at + 1, knots.size - 1)] += offset
    dropout = ()
    if rng.random() < variety.dropout_probability:
        dropout = (-1.0 if rng.random() < 0.5 else 1.0, uniform(rng, variety.dropout_width),
                   uniform(rng, variety.dropout_db))
    sparse = rng.random() < variety.sparse_probability
    compound = rng.random() < variety.compounding_probability
    smooth = rng.random() < variety.smoothing_probability
    return dataclasses.replace(
        acq,
        frequency_mhz=uniform(rng, variety.frequency_mhz),
        attenuation_db_cm_mhz=uniform(rng, variety.attenuation_db_cm_mhz),
        dynamic_range_db=uniform(rng, variety.dynamic_range_db),
        background_grey=uniform(rng, variety.background_grey),
        noise_above_floor_db=uniform(rng, variety.noise_above_floor_db),
        axial_scale=log_uniform(rng, variety.axial_psf_scale),
        lateral_scale=log_uniform(rng, variety.lateral_psf_scale),
        scatterers_per_cell=log_uniform(rng, variety.scatterers_per_cell) if sparse else 0.0,
        compounding=int(rng.integers(variety.compounding_frames[0],
                                     variety.compounding_frames[1] + 1)) if compound else 1,
        tgc_knots_db=tuple(round(float(k), 4) for k in knots),
        dropout=dropout,
        grey_gamma=log_uniform(rng, variety.grey_gamma),
        smoothing_px=uniform(rng, variety.smoothing_px) if smooth else 0.0,
    )


def speckle_log_offset_db(acq: Acquisition) -> float:
    """E[20 log10 envelope] of this acquisition's speckle minus that of Rayleigh speckle."""
    offset = 0.0
    if acq.scatterers_per_cell:
        offset += float(np.interp(acq.scatterers_per_cell, *_SPARSE_LOG_OFFSET))
    if acq.compounding > 1:
        offset += _COMPOUND_LOG_OFFSET[min(acq.compounding, len(_COMPOUND_LOG_OFFSET) - 1)]
    return offset


def pulse_sigma_mm(acq: Acquisition, c_m_s: float) -> float:
    """Axial std (mm, in depth) of the two-way pulse envelope g."""
    sigma_f = acq.fractional_bandwidth * acq.frequency_mhz * 1e6 / (2 * math.sqrt(2 * math.log(2)))
    sigma_t = 1 / (2 * math.pi * sigma_f)
    return c_m_s * sigma_t / 2 * 1e3      # depth = c t / 2


def rf_pulse(acq: Acquisition, depth_mm: np.ndarray, c_m_s: float = 1540.0) -> np.ndarray:
    """The RF pulse g(z) cos(2 pi z / (lambda / 2)) along depth; documents the baseband model."""
    wavelength_mm = c_m_s / (acq.frequency_mhz * 1e6) * 1e3
    sigma = pulse_sigma_mm(acq, c_m_s)
    return np.exp(-depth_mm ** 2 / (2 * sigma ** 2)) * np.cos(4 * np.pi * depth_mm / wavelength_mm)


def psf_sigmas_px(acq: Acquisition, geometry: ProbeGeometry, ranges: FormationRanges
                  ) -> tuple[float, np.ndarray]:
    """Axial sigma (px) and per-row lateral sigma (in scan lines) of the baseband PSF."""
    c = ranges.speed_of_sound_m_s
    floor = ranges.min_sigma_px
    axial = math.hypot(pulse_sigma_mm(acq, c) / geometry.spacing_mm, floor)
    wavelength_mm = c / (acq.frequency_mhz * 1e6) * 1e3
    focal_sigma = wavelength_mm * acq.f_number / (2 * math.sqrt(2 * math.log(2)))
    widening = np.sqrt(1 + ((geometry.beam_depth_mm - acq.focus_mm) / acq.depth_of_field_mm) ** 2)
    lateral_mm = focal_sigma * np.minimum(widening, ranges.max_widening)
    lateral = np.hypot(lateral_mm / geometry.line_spacing_mm, floor)
    return axial, lateral.astype(np.float32)


def _gaussian_transfer(n: int, sigma: np.ndarray) -> np.ndarray:
    """DFT-domain Gaussian filters of unit energy (sum |h|^2 = 1): keeps E|IQ|^2 = e^2."""
    freq = sfft.fftfreq(n).astype(np.float32)
    sigma = np.atleast_1d(np.asarray(sigma, np.float32))[:, None]
    transfer = np.exp(-2 * np.pi ** 2 * (sigma * freq) ** 2)
    energy = np.mean(transfer ** 2, axis=-1, keepdims=True)
    return (transfer / np.sqrt(energy)).astype(np.float32)


def speckle_iq(echo: np.ndarray, axial_px: float, lateral_px: np.ndarray,
               rng: np.random.Generator, density: float = 1.0) -> np.ndarray:
    """Complex Gaussian scatterers with amplitude ~ echo, convolved with the baseband PSF (IQ).

    density < 1: only that share of the pixels holds a scatterer (stronger, so E|s|^2 = echo^2):
    few scatterers per resolution cell give K-distributed, pre-Rayleigh speckle.
    """
    rows, lines = echo.shape
    normal = rng.standard_normal((2, rows, lines), dtype=np.float32)
    iq = np.empty((rows, lines), np.complex64)
    amplitude = echo * np.float32(1 / math.sqrt(2))        # E|s|^2 = echo^2
    if density < 1.0:
        amplitude = amplitude * ((rng.random((rows, lines), dtype=np.float32) < density)
                                 * np.float32(1 / math.sqrt(density)))
    iq.real = normal[0] * amplitude
    iq.imag = normal[1] * amplitude
    # FFT convolution, zero-padded by the kernel reach so nothing wraps around (no scatterers
    # above the skin, beside the field or below it). Axial first, then lateral per row, since the
    # lateral width depends on depth.
    n_axial = sfft.next_fast_len(rows + math.ceil(4 * axial_px))
    spectrum = sfft.fft(iq, n=n_axial, axis=0)
    spectrum *= _gaussian_transfer(n_axial, np.float32(axial_px))[0][:, None]
    iq = sfft.ifft(spectrum, axis=0)[:rows]
    n_lateral = sfft.next_fast_len(lines + math.ceil(4 * float(lateral_px.max())))
    spectrum = sfft.fft(iq, n=n_lateral, axis=1)
    spectrum *= _gaussian_transfer(n_lateral, lateral_px)
    return sfft.ifft(spectrum, axis=1)[:, :lines]


def depth_gain_db(acq: Acquisition, depth_mm: np.ndarray, full_depth_mm: float) -> np.ndarray:
    """Net gain after attenuation and TGC at each depth: the TGC leaves a residual trend."""
    loss = 2 * acq.attenuation_db_cm_mhz * acq.frequency_mhz * depth_mm / 10   # round trip
    x = depth_mm / full_depth_mm
    linear, quadratic = acq.residual_tgc_db
    tgc = loss + linear * x + quadratic * x ** 2
    if acq.tgc_knots_db:
        tgc = tgc + smooth_curve(acq.tgc_knots_db, x)
    return (tgc - loss).astype(np.float32)


def smooth_curve(knots: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """Through `knots` evenly spaced on [0, 1], smoothstep between them (flat at each knot)."""
    values = np.asarray(knots, np.float64)
    if values.size == 1:
        return np.full_like(x, values[0], dtype=np.float64)
    pos = np.clip(x, 0.0, 1.0) * (values.size - 1)
    low = np.minimum(pos.astype(int), values.size - 2)
    t = pos - low
    weight = t * t * (3 - 2 * t)
    return values[low] * (1 - weight) + values[low + 1] * weight


def lateral_gain_db(acq: Acquisition, lines: int) -> np.ndarray | None:
    """Gain across the scan lines: a darker side where the probe lost contact (or None)."""
    if not acq.dropout:
        return None
    side, width, depth_db = acq.dropout
    position = (np.arange(lines) + 0.5) / lines
    from_edge = position if side < 0 else 1 - position
    return (-depth_db * np.clip(1 - from_edge / width, 0, 1) ** 2).astype(np.float32)


def display_top_db(acq: Acquisition, reference_echo: float) -> float:
    """Envelope level (dB re e = 1) shown as white: puts reference tissue at background_grey."""
    reference_db = 20 * math.log10(reference_echo) + RAYLEIGH_LOG_MEAN_DB
    offset = speckle_log_offset_db(acq)
    if offset:
        reference_db += offset
    return reference_db + acq.dynamic_range_db * (1 - acq.background_grey / 255)


def beam_envelope(echo: np.ndarray, geometry: ProbeGeometry, acq: Acquisition,
                  ranges: FormationRanges, rng: np.random.Generator, reference_echo: float,
                  excess_db: np.ndarray | None = None) -> np.ndarray:
    """Envelope on the beam grid from an echogenicity map on the beam grid.

    `excess_db` is extra attenuation per beam-grid pixel (dB, negative for fluid): its running
    sum along each beam gives posterior enhancement or shadowing below a lesion.
    """
    axial, lateral = psf_sigmas_px(acq, geometry, ranges)
    if acq.axial_scale != 1.0 or acq.lateral_scale != 1.0:
        axial, lateral = axial * acq.axial_scale, (lateral * acq.lateral_scale).astype(np.float32)
    if geometry.kind == "phased":
        # Near the sector's tip the lines crowd together: a beam there covers many of them.
        lateral = np.minimum(lateral, np.float32(geometry.beam_shape[1] / 8))
    density = 1.0
    if acq.scatterers_per_cell:
        cell_px = 2 * math.pi * axial * float(np.median(lateral))
        density = min(1.0, acq.scatterers_per_cell / cell_px)
    gain_db = depth_gain_db(acq, geometry.beam_depth_mm, geometry.beam_range_mm)[:, None]
    if excess_db is not None:
        gain_db = gain_db - np.cumsum(excess_db, axis=0, dtype=np.float32)
    lateral_db = lateral_gain_db(acq, echo.shape[1])
    if lateral_db is not None:
        gain_db = gain_db + lateral_db[None, :]
    gain = (10 ** (gain_db / 20)).astype(np.float32)
    # Electronic noise at the bottom of the display, amplified by the TGC with depth.
    floor_db = display_top_db(acq, reference_echo) - acq.dynamic_range_db
    noise_db = (floor_db + acq.noise_above_floor_db
                + ranges.noise_depth_gain_db * geometry.beam_depth_mm / geometry.beam_range_mm)
    noise_amp = (10 ** (noise_db / 20) / math.sqrt(2)).astype(np.float32)[:, None]
    envelope = None
    for _ in range(acq.compounding):
        iq = speckle_iq(echo, axial, lateral, rng, density)
        iq *= gain
        normal = rng.standard_normal((2,) + echo.shape, dtype=np.float32)
        iq.real += normal[0] * noise_amp
        iq.imag += normal[1] * noise_amp
        envelope = np.abs(iq) if envelope is None else envelope + np.abs(iq)
    return envelope if acq.compounding == 1 else envelope / np.float32(acq.compounding)


def grey_curve(grey: np.ndarray, middle: float, gamma: float) -> np.ndarray:
    """Display map through (0, 0), (middle, middle) and (255, 255): a power on each side of the
    tissue grey, so gamma > 1 steepens the contrast around the tissue (an S-curve) and < 1
    flattens it, while the gain (where tissue lands) stays as set."""
    low = middle * (np.minimum(grey, middle) / middle) ** gamma
    high = 255 - (255 - middle) * ((255 - np.maximum(grey, middle)) / (255 - middle)) ** gamma
    return np.where(grey <= middle, low, high)


def log_compress(envelope: np.ndarray, acq: Acquisition, reference_echo: float) -> np.ndarray:
    """Envelope -> uint8 through a logarithmic map of the dynamic range (gain set by the top)."""
    top = display_top_db(acq, reference_echo)
    db = 20 * np.log10(np.maximum(envelope, 1e-12))
    grey = (db - (top - acq.dynamic_range_db)) * (255 / acq.dynamic_range_db)
    if acq.grey_gamma != 1.0 or acq.smoothing_px:
        grey = np.clip(grey, 0, 255)
        if acq.smoothing_px:
            grey = ndimage.gaussian_filter(grey, acq.smoothing_px, mode="nearest")
        if acq.grey_gamma != 1.0:
            grey = grey_curve(grey, acq.background_grey, acq.grey_gamma)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)

"""Image formation: speckle, attenuation with TGC, log compression (USVLM-Phantom v1).

Speckle is simulated in complex baseband (IQ), which is equivalent to, and much cheaper than,
an RF simulation followed by |hilbert|: the RF pulse is a Gaussian-enveloped cosine
g(t) cos(2 pi f0 t); its analytic signal is g(t) exp(i 2 pi f0 t) (g is narrowband), so after
demodulation at f0 the pulse is the real Gaussian g, and |analytic RF| = |IQ|. Complex Gaussian
scatterers on every pixel, scaled by the echogenicity, are convolved with that baseband PSF
(axial Gaussian x lateral Gaussian that widens away from the focus). A linear filter of complex
Gaussian noise is complex Gaussian, so the envelope |IQ| in uniform tissue is exactly Rayleigh
(fully developed speckle, mean / std = 1.91) as long as the PSF spans >= 2 scatterers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import fft as sfft

from .config import FormationRanges, uniform
from .probe import ProbeGeometry

# E[20 log10 R] for a Rayleigh envelope with E[R^2] = 1: -10 log10(e) * Euler's gamma.
RAYLEIGH_LOG_MEAN_DB = -10 * math.log10(math.e) * 0.5772156649


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

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else round(v, 4)) for k, v in asdict(self).items()}


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
               rng: np.random.Generator) -> np.ndarray:
    """Complex Gaussian scatterers with amplitude ~ echo, convolved with the baseband PSF (IQ)."""
    rows, lines = echo.shape
    normal = rng.standard_normal((2, rows, lines), dtype=np.float32)
    iq = np.empty((rows, lines), np.complex64)
    amplitude = echo * np.float32(1 / math.sqrt(2))        # E|s|^2 = echo^2
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
    return (tgc - loss).astype(np.float32)


def display_top_db(acq: Acquisition, reference_echo: float) -> float:
    """Envelope level (dB re e = 1) shown as white: puts reference tissue at background_grey."""
    reference_db = 20 * math.log10(reference_echo) + RAYLEIGH_LOG_MEAN_DB
    return reference_db + acq.dynamic_range_db * (1 - acq.background_grey / 255)


def beam_envelope(echo: np.ndarray, geometry: ProbeGeometry, acq: Acquisition,
                  ranges: FormationRanges, rng: np.random.Generator, reference_echo: float,
                  excess_db: np.ndarray | None = None) -> np.ndarray:
    """Envelope on the beam grid from an echogenicity map on the beam grid.

    `excess_db` is extra attenuation per beam-grid pixel (dB, negative for fluid): its running
    sum along each beam gives posterior enhancement or shadowing below a lesion.
    """
    axial, lateral = psf_sigmas_px(acq, geometry, ranges)
    iq = speckle_iq(echo, axial, lateral, rng)
    gain_db = depth_gain_db(acq, geometry.beam_depth_mm, geometry.beam_range_mm)[:, None]
    if excess_db is not None:
        gain_db = gain_db - np.cumsum(excess_db, axis=0, dtype=np.float32)
    iq *= (10 ** (gain_db / 20)).astype(np.float32)
    # Electronic noise at the bottom of the display, amplified by the TGC with depth.
    floor_db = display_top_db(acq, reference_echo) - acq.dynamic_range_db
    noise_db = (floor_db + acq.noise_above_floor_db
                + ranges.noise_depth_gain_db * geometry.beam_depth_mm / geometry.beam_range_mm)
    noise_amp = (10 ** (noise_db / 20) / math.sqrt(2)).astype(np.float32)[:, None]
    normal = rng.standard_normal((2,) + echo.shape, dtype=np.float32)
    iq.real += normal[0] * noise_amp
    iq.imag += normal[1] * noise_amp
    return np.abs(iq)


def log_compress(envelope: np.ndarray, acq: Acquisition, reference_echo: float) -> np.ndarray:
    """Envelope -> uint8 through a logarithmic map of the dynamic range (gain set by the top)."""
    top = display_top_db(acq, reference_echo)
    db = 20 * np.log10(np.maximum(envelope, 1e-12))
    grey = (db - (top - acq.dynamic_range_db)) * (255 / acq.dynamic_range_db)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)

"""Parameter ranges of USVLM-Phantom v1 (see PHANTOM.md); every random draw is taken from here."""

from __future__ import annotations

from dataclasses import dataclass, field

Range = tuple[float, float]

ORGANS = ("breast", "thyroid", "neck")
PROBES = ("linear", "convex")


@dataclass(frozen=True)
class GeometryRanges:
    depth_mm: Range = (30.0, 60.0)
    width_mm: Range = (30.0, 50.0)
    spacing_mm: Range = (0.08, 0.25)
    side_px: tuple[int, int] = (256, 640)
    convex_radius_mm: Range = (20.0, 40.0)
    convex_angle_deg: Range = (50.0, 70.0)
    convex_probability: float = 0.35


@dataclass(frozen=True)
class FormationRanges:
    speed_of_sound_m_s: float = 1540.0
    frequency_mhz: Range = (5.0, 12.0)
    fractional_bandwidth: Range = (0.5, 0.8)   # -6 dB bandwidth / centre frequency
    f_number: Range = (1.5, 2.5)               # lateral FWHM at focus = wavelength * F#
    focus_fraction: Range = (0.35, 0.7)        # focal depth / imaging depth
    depth_of_field_mm: Range = (8.0, 15.0)     # depth over which the beam widens by sqrt(2)
    max_widening: float = 3.0
    # A display grid coarser than the pulse cannot show it sharper than about a pixel: the
    # scanner low-pass filters before resampling. Also keeps >= 2 scatterers per resolution cell.
    min_sigma_px: float = 0.75
    attenuation_db_cm_mhz: Range = (0.5, 0.75)
    residual_tgc_db: float = 3.0               # |net gain trend| after TGC, at full depth
    dynamic_range_db: Range = (45.0, 65.0)
    background_grey: Range = (100.0, 140.0)    # display gain: where reference tissue lands
    noise_above_floor_db: Range = (0.0, 6.0)   # electronic noise vs the bottom of the display
    noise_depth_gain_db: float = 6.0           # TGC amplifies noise with depth


@dataclass(frozen=True)
class StructureRanges:
    count: tuple[int, int] = (1, 3)
    cyst_echo: Range = (0.015, 0.03)
    cyst_size_mm: Range = (4.0, 14.0)
    cyst_ratio: Range = (1.0, 1.9)              # width / height
    enhancement_db: Range = (3.0, 6.0)
    benign_echo: Range = (0.3, 0.5)
    benign_size_mm: Range = (7.0, 20.0)
    benign_ratio: Range = (1.3, 2.2)            # width / height (parallel)
    benign_enhancement_db: Range = (1.0, 3.0)
    malignant_echo: Range = (0.1, 0.3)
    malignant_size_mm: Range = (7.0, 18.0)
    malignant_ratio: Range = (1.0, 1.6)         # height / width (not parallel)
    harmonic_amplitude: Range = (0.15, 0.35)    # irregular margin, fraction of the radius
    spikes: tuple[int, int] = (6, 16)
    spike_length: Range = (0.2, 0.6)            # fraction of the radius
    shadow_db: Range = (6.0, 15.0)
    calcification_px: tuple[int, int] = (2, 6)
    heterogeneity: Range = (0.25, 0.45)         # relative echo fluctuation of heterogeneous lesions
    node_long_mm: Range = (8.0, 20.0)
    node_benign_ratio: Range = (2.1, 3.2)       # long / short axis
    node_malignant_ratio: Range = (1.0, 1.45)
    node_cortex_echo: Range = (0.15, 0.3)
    node_hilum_echo: Range = (0.75, 0.9)
    nodule_size_mm: Range = (5.0, 14.0)
    nodule_benign_ratio: Range = (1.2, 2.0)     # width / height
    nodule_malignant_ratio: Range = (1.1, 1.6)  # height / width
    nodule_hypo_echo: Range = (0.38, 0.5)
    nodule_halo_mm: Range = (0.3, 0.7)
    nodule_halo_echo: Range = (0.06, 0.15)


@dataclass(frozen=True)
class PhantomConfig:
    geometry: GeometryRanges = field(default_factory=GeometryRanges)
    formation: FormationRanges = field(default_factory=FormationRanges)
    structures: StructureRanges = field(default_factory=StructureRanges)
    texture_sigma_mm: Range = (2.0, 5.0)
    texture_amplitude: Range = (0.06, 0.14)
    overlay_probability: float = 0.5


DEFAULT_CONFIG = PhantomConfig()


def uniform(rng, bounds: Range) -> float:
    """One draw from [low, high) as a Python float (keeps metadata JSON-friendly)."""
    return float(rng.uniform(bounds[0], bounds[1]))

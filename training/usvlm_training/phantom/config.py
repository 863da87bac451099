"""Parameter ranges of USVLM-Phantom v1 (see PHANTOM.md); every random draw is taken from here.

Two layers: the nominal v1 ranges of the specification (GeometryRanges, FormationRanges,
StructureRanges and the texture fields), and `VarietyRanges`, a wider domain randomisation on top
of them (speckle statistics, gain / TGC / display maps, lesion contrast, size and shape, probe
geometries), so that a model trained on these phantoms does not learn this one renderer.

- `VARIETY_CONFIG`: the nominal ranges widened by the variety; what training data should use.
- `SPEC_CONFIG` (variety None): exactly the v1 images; the same (seed, index) gives the same bits
  as before the variety existed.
- `DEFAULT_CONFIG`: still SPEC_CONFIG, because tests elsewhere (Testing/test_evaluate.py) pin the
  contents of particular default phantoms (which structures image 000003 of seed 3 holds). Once
  those pin SPEC_CONFIG, DEFAULT_CONFIG = VARIETY_CONFIG is the one-line switch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

Range = tuple[float, float]

ORGANS = ("breast", "thyroid", "neck")
PROBES = ("linear", "convex", "phased")


@dataclass(frozen=True)
class GeometryRanges:
    depth_mm: Range = (30.0, 60.0)
    width_mm: Range = (30.0, 50.0)
    spacing_mm: Range = (0.08, 0.25)
    side_px: tuple[int, int] = (256, 640)
    convex_radius_mm: Range = (20.0, 40.0)
    convex_angle_deg: Range = (50.0, 70.0)
    convex_probability: float = 0.35
    # Phased-array sector (only when asked for by name, or drawn by the variety): a small virtual
    # apex radius (the sector's tip), a wide opening angle; tissue layers stay flat.
    phased_radius_mm: Range = (1.0, 4.0)
    phased_angle_deg: Range = (60.0, 90.0)


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
class VarietyRanges:
    """Domain randomisation beyond the nominal v1 ranges (PHANTOM.md).

    Where a field names a range the nominal config also has (texture, frequency, dynamic range,
    gain, ...), the variety's range replaces it.

    A model trained on one renderer learns its speckle, its gain and its lesion contrasts; these
    ranges make the renderer vary so that a model has to learn the lesions instead. Contrasts are
    amplitude ratios (dB) of a lesion to the tissue it sits in (the organ's reference layer).
    "log" ranges are drawn log-uniformly.
    """
    # ----- probe geometry
    probe_weights: tuple[float, float, float] = (0.45, 0.35, 0.20)  # linear, convex, phased
    convex_radius_mm: Range = (10.0, 60.0)       # microconvex .. abdominal curvilinear
    convex_angle_deg: Range = (40.0, 90.0)
    convex_fit: float = 0.92                     # the fan's face fits in this share of the width
    partial_field_probability: float = 0.3       # linear: field narrower / shallower than the image
    field_fraction: Range = (0.65, 1.0)          # of the image width / depth
    # ----- tissue
    texture_sigma_mm: Range = (1.0, 8.0)
    texture_amplitude: Range = (0.02, 0.25)
    layer_jitter_db: float = 2.0                 # each tissue layer's echo, +-
    # ----- speckle
    frequency_mhz: Range = (3.0, 15.0)
    axial_psf_scale: Range = (0.8, 2.2)          # log; speckle size and anisotropy
    lateral_psf_scale: Range = (0.8, 2.5)        # log
    sparse_probability: float = 0.4              # K-distributed (pre-Rayleigh) speckle
    scatterers_per_cell: Range = (1.0, 20.0)     # log; per resolution cell (2 pi sigma_a sigma_l)
    compounding_probability: float = 0.2         # averaged frames: Nakagami m > 1 like speckle
    compounding_frames: tuple[int, int] = (2, 3)
    smoothing_probability: float = 0.3           # scanner speckle reduction on the display
    smoothing_px: Range = (0.4, 1.2)
    # ----- gain, TGC, display
    background_grey: Range = (65.0, 180.0)       # display gain: where reference tissue lands
    dynamic_range_db: Range = (35.0, 80.0)
    grey_gamma: Range = (0.6, 1.6)               # log; display map: S-curve exponent around the
                                                 # tissue grey (formation.grey_curve)
    noise_above_floor_db: Range = (-6.0, 12.0)
    attenuation_db_cm_mhz: Range = (0.3, 1.0)
    tgc_knots: tuple[int, int] = (4, 8)          # random smooth depth curve through these knots
    tgc_ripple_db: Range = (0.0, 4.0)            # each knot +- this
    bad_tgc_probability: float = 0.12            # one or two knots far off: a dark / bright band
    bad_tgc_db: Range = (6.0, 14.0)
    dropout_probability: float = 0.1             # poor contact: one side of the field darker
    dropout_db: Range = (6.0, 20.0)
    dropout_width: Range = (0.1, 0.35)           # share of the scan lines
    # ----- lesions
    large_probability: float = 0.25              # the first lesion is large: ...
    large_area_fraction: Range = (0.12, 0.45)    # ... this share of the field of view
    small_probability: float = 0.15              # a lesion is small: ...
    small_size_mm: Range = (2.0, 5.0)            # ... this long axis
    size_mm: Range = (4.0, 32.0)                 # log; long axis otherwise
    iso_contrast_db: Range = (-3.0, -1.5)        # near-isoechoic (described "isoechoic")
    hyper_contrast_db: Range = (2.0, 6.0)
    hypo_contrast_db: Range = (-12.0, -3.0)
    marked_contrast_db: Range = (-22.0, -8.0)    # "markedly hypoechoic"
    anechoic_contrast_db: Range = (-38.0, -20.0)
    edge_mm: Range = (0.0, 2.0)                  # soft transition across the margin
    halo_probability: float = 0.6                # benign thyroid nodules (else no halo)
    halo_mm: Range = (0.3, 1.5)
    halo_contrast_db: Range = (-22.0, -5.0)
    rim_probability: float = 0.2                 # breast masses: a hypo- or echogenic rim
    enhancement_db: Range = (2.0, 9.0)
    shadow_db: Range = (3.0, 18.0)
    no_posterior_probability: float = 0.2        # cysts / malignant masses without their feature
    harmonic_amplitude: Range = (0.08, 0.45)     # irregular margins
    lobulation: Range = (0.05, 0.15)             # gently lobulated
    spikes: tuple[int, int] = (4, 20)
    spike_length: Range = (0.15, 0.8)
    heterogeneity_sigma_mm: Range = (0.4, 2.0)


@dataclass(frozen=True)
class PhantomConfig:
    geometry: GeometryRanges = field(default_factory=GeometryRanges)
    formation: FormationRanges = field(default_factory=FormationRanges)
    structures: StructureRanges = field(default_factory=StructureRanges)
    texture_sigma_mm: Range = (2.0, 5.0)
    texture_amplitude: Range = (0.06, 0.14)
    overlay_probability: float = 0.5
    variety: VarietyRanges | None = None          # None: the nominal v1 ranges only


SPEC_CONFIG = PhantomConfig()                 # the nominal v1 ranges, bit for bit as before
VARIETY_CONFIG = PhantomConfig(variety=VarietyRanges())
DEFAULT_CONFIG = SPEC_CONFIG                  # see the module docstring before switching


def uniform(rng, bounds: Range) -> float:
    """One draw from [low, high) as a Python float (keeps metadata JSON-friendly)."""
    return float(rng.uniform(bounds[0], bounds[1]))


def log_uniform(rng, bounds: Range) -> float:
    """One draw, uniform in log between positive bounds."""
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))

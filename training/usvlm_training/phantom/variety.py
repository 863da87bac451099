"""Lesions drawn from the variety's wider ranges (config.VarietyRanges).

The same classes and the same description vocabulary as v1, but: contrast to the surrounding
tissue from near-isoechoic (about -1 to -3 dB, described "isoechoic") through hypo- and markedly
hypoechoic to anechoic, a few hyperechoic; sizes from a few mm up to a target share of the field
of view; lobulated, irregular, microlobulated and spiculated margins, soft (indistinct) or sharp;
any orientation the class allows; halos and rims present or not; posterior enhancement and
shadowing of varying strength, or none. The description always follows what was drawn.
"""

from __future__ import annotations

import math

import numpy as np

from .config import StructureRanges, VarietyRanges, log_uniform, uniform
from .structures import Lesion, _harmonics, _shape_word


def _echo(context: float, contrast_db: float) -> float:
    return float(np.clip(context * 10 ** (contrast_db / 20), 0.005, 1.0))


def _size(rng: np.random.Generator, v: VarietyRanges, ratio: float,
          target_area_mm2: float | None) -> float:
    """Long axis (mm) of a lesion whose long / short axis is `ratio`."""
    if target_area_mm2:
        return math.sqrt(4 * target_area_mm2 * ratio / math.pi)
    if rng.random() < v.small_probability:
        return uniform(rng, v.small_size_mm)
    return log_uniform(rng, v.size_mm)


def _posterior(db: float) -> str:
    """What a reader would call the posterior feature (weak ones are not mentioned)."""
    if db >= 2.0:
        return "posterior acoustic enhancement"
    if db <= -2.0:
        return "posterior acoustic shadowing"
    return "none"


def _soft_contrast(rng: np.random.Generator, v: VarietyRanges, iso: float, hyper: float
                   ) -> tuple[float, str]:
    """Contrast (dB) and echo word of a benign solid lesion: iso-, hyper- or hypoechoic."""
    u = rng.random()
    if u < iso:
        return uniform(rng, v.iso_contrast_db), "isoechoic"
    if u < iso + hyper:
        return uniform(rng, v.hyper_contrast_db), "hyperechoic"
    return uniform(rng, v.hypo_contrast_db), "hypoechoic"


def _cyst(rng, r: StructureRanges, v: VarietyRanges, context: float, area) -> Lesion:
    ratio = uniform(rng, (1.0, 2.0))
    size = _size(rng, v, ratio, area)
    contrast = uniform(rng, v.anechoic_contrast_db)
    posterior = (uniform(rng, (0.0, 1.5)) if rng.random() < v.no_posterior_probability
                 else uniform(rng, v.enhancement_db))
    return Lesion("cyst", size, size / ratio, _echo(context, contrast),
                  tilt=uniform(rng, (-0.35, 0.35)), posterior_db=posterior,
                  edge_mm=uniform(rng, (0.0, 0.3)),
                  attributes={"shape": _shape_word(ratio), "margin": "circumscribed",
                              "orientation": "parallel", "echo pattern": "anechoic",
                              "posterior": _posterior(posterior), "contrast_db": round(contrast, 2)})


def _benign_mass(rng, r: StructureRanges, v: VarietyRanges, context: float, area) -> Lesion:
    ratio = uniform(rng, (1.1, 2.6))
    size = _size(rng, v, ratio, area)
    contrast, word = _soft_contrast(rng, v, 0.3, 0.07)
    lobulated = rng.random() < 0.4
    heterogeneous = rng.random() < 0.2
    u = rng.random()
    posterior = (uniform(rng, (1.0, 5.0)) if u < 0.3 else -uniform(rng, (2.0, 5.0)) if u < 0.38
                 else 0.0)
    rim = rng.random() < v.rim_probability
    attributes = {"shape": "gently lobulated" if lobulated else "oval",
                  "margin": "circumscribed", "orientation": "parallel",
                  "echo pattern": f"{'heterogeneous' if heterogeneous else 'homogeneous'} {word}",
                  "halo": "thin hypoechoic halo" if rim else "none",
                  "posterior": _posterior(posterior), "contrast_db": round(contrast, 2)}
    return Lesion("benign mass", size, size / ratio, _echo(context, contrast),
                  tilt=uniform(rng, (-0.35, 0.35)),
                  heterogeneity=uniform(rng, (0.05, 0.2)) if heterogeneous else 0.0,
                  texture_mm=uniform(rng, v.heterogeneity_sigma_mm),
                  harmonics=_harmonics(rng, uniform(rng, v.lobulation), (2, 4), 2) if lobulated else [],
                  posterior_db=posterior,
                  halo_mm=uniform(rng, (0.3, 1.0)) if rim else 0.0,
                  halo_echo=_echo(context, uniform(rng, v.halo_contrast_db)) if rim else 0.0,
                  edge_mm=uniform(rng, (0.0, 0.6)), attributes=attributes)


def _margin_words(irregular: bool, spiculated: bool, micro: bool, edge_mm: float) -> list[str]:
    return ((["irregular"] if irregular else []) + (["spiculated"] if spiculated else [])
            + (["microlobulated"] if micro else []) + (["indistinct"] if edge_mm >= 1.0 else []))


def _malignant_mass(rng, r: StructureRanges, v: VarietyRanges, context: float, area) -> Lesion:
    ratio = uniform(rng, (1.0, 1.7))                    # height / width
    size = _size(rng, v, ratio, area)
    marked = rng.random() < 0.7
    contrast = uniform(rng, v.marked_contrast_db if marked else (-8.0, -3.0))
    style = int(rng.integers(3))  # 0 irregular, 1 spiculated, 2 both
    irregular, spiculated = style != 1, style != 0
    micro = rng.random() < 0.2
    harmonics = _harmonics(rng, uniform(rng, v.harmonic_amplitude), (2, 8), 3) if irregular else []
    if micro:
        harmonics += _harmonics(rng, uniform(rng, (0.03, 0.06)), (10, 18), 2)
    spikes = [(float(rng.uniform(0, 2 * np.pi)), uniform(rng, v.spike_length))
              for _ in range(int(rng.integers(v.spikes[0], v.spikes[1] + 1)))] if spiculated else []
    edge = uniform(rng, v.edge_mm)
    rim = rng.random() < v.rim_probability
    posterior = (uniform(rng, (-1.5, 1.5)) if rng.random() < v.no_posterior_probability
                 else -uniform(rng, v.shadow_db))
    calcified = rng.random() < 0.5
    attributes = {"shape": "irregular" if irregular else _shape_word(ratio),
                  "margin": ", ".join(_margin_words(irregular, spiculated, micro, edge)),
                  "orientation": "not parallel" + (", taller-than-wide" if ratio >= 1.1 else ""),
                  "echo pattern": "heterogeneous " + ("markedly hypoechoic" if marked else "hypoechoic"),
                  "halo": "echogenic halo" if rim else "none",
                  "posterior": _posterior(posterior),
                  "calcifications": "microcalcifications" if calcified else "none",
                  "contrast_db": round(contrast, 2)}
    return Lesion("malignant mass", size / ratio, size, _echo(context, contrast),
                  tilt=uniform(rng, (-0.6, 0.6)), heterogeneity=uniform(rng, (0.1, 0.6)),
                  texture_mm=uniform(rng, v.heterogeneity_sigma_mm), harmonics=harmonics,
                  spikes=spikes, posterior_db=posterior,
                  calcifications=int(rng.integers(3, 10)) if calcified else 0,
                  halo_mm=uniform(rng, (0.5, 2.0)) if rim else 0.0,
                  halo_echo=_echo(context, uniform(rng, (1.0, 6.0))) if rim else 0.0,
                  edge_mm=edge, attributes=attributes)


def _lymph_node(rng, r: StructureRanges, v: VarietyRanges, context: float, area,
                malignant: bool) -> Lesion:
    ratio = uniform(rng, (1.0, 1.5) if malignant else (1.8, 3.5))
    long_axis = _size(rng, v, ratio, area)
    if malignant:
        contrast = uniform(rng, (-18.0, -4.0))
        return Lesion("malignant lymph node", long_axis, long_axis / ratio, _echo(context, contrast),
                      tilt=uniform(rng, (-0.5, 0.5)), heterogeneity=uniform(rng, (0.1, 0.5)),
                      texture_mm=uniform(rng, v.heterogeneity_sigma_mm),
                      edge_mm=uniform(rng, (0.0, 0.8)),
                      attributes={"shape": "round", "margin": "circumscribed",
                                  "echo pattern": "heterogeneous hypoechoic",
                                  "hilum": "no fatty hilum", "contrast_db": round(contrast, 2)})
    contrast = uniform(rng, (-16.0, -3.0))
    return Lesion("benign lymph node", long_axis, long_axis / ratio, _echo(context, contrast),
                  tilt=uniform(rng, (-0.5, 0.5)),
                  hilum_echo=_echo(context, uniform(rng, (1.0, 5.0))),
                  edge_mm=uniform(rng, (0.0, 0.4)),
                  attributes={"shape": "oval", "margin": "circumscribed", "orientation": "parallel",
                              "echo pattern": "hypoechoic", "hilum": "echogenic fatty hilum",
                              "contrast_db": round(contrast, 2)})


def _thyroid_nodule(rng, r: StructureRanges, v: VarietyRanges, context: float, area,
                    malignant: bool) -> Lesion:
    if malignant:
        tall = rng.random() < 0.7
        ratio = uniform(rng, (1.1, 1.8) if tall else (1.15, 1.6))
        size = _size(rng, v, ratio, area)
        contrast = uniform(rng, (-22.0, -4.0))
        calcified = rng.random() < 0.7
        edge = uniform(rng, (0.0, 1.5))
        posterior = -uniform(rng, (2.0, 10.0)) if rng.random() < 0.3 else 0.0
        width, height = (size / ratio, size) if tall else (size, size / ratio)
        return Lesion("malignant thyroid nodule", width, height, _echo(context, contrast),
                      tilt=uniform(rng, (-0.25, 0.25)), heterogeneity=uniform(rng, (0.05, 0.3)),
                      texture_mm=uniform(rng, v.heterogeneity_sigma_mm),
                      harmonics=_harmonics(rng, uniform(rng, (0.08, 0.4)), (3, 8), 3),
                      calcifications=int(rng.integers(4, 12)) if calcified else 0,
                      posterior_db=posterior, edge_mm=edge,
                      attributes={"shape": "irregular",
                                  "margin": ", ".join(_margin_words(True, False, False, edge)),
                                  "orientation": "taller-than-wide" if tall else "wider-than-tall",
                                  "echo pattern": ("markedly hypoechoic" if contrast <= -8
                                                   else "hypoechoic"),
                                  "posterior": _posterior(posterior),
                                  "calcifications": "microcalcifications" if calcified else "none",
                                  "contrast_db": round(contrast, 2)})
    ratio = uniform(rng, (1.15, 2.2))
    size = _size(rng, v, ratio, area)
    halo = rng.random() < v.halo_probability
    contrast, word = _soft_contrast(rng, v, 0.4, 0.1)
    if word == "isoechoic" and halo:
        contrast = uniform(rng, (v.iso_contrast_db[0], -0.3))   # the halo shows where it is
    elif word == "isoechoic" and rng.random() < 0.25:
        contrast = -contrast                                    # a touch brighter
    heterogeneous = rng.random() < 0.25
    posterior = uniform(rng, (1.0, 4.0)) if rng.random() < 0.2 else 0.0
    return Lesion("benign thyroid nodule", size, size / ratio, _echo(context, contrast),
                  tilt=uniform(rng, (-0.25, 0.25)),
                  heterogeneity=uniform(rng, (0.05, 0.25)) if heterogeneous else 0.0,
                  texture_mm=uniform(rng, v.heterogeneity_sigma_mm),
                  halo_mm=uniform(rng, v.halo_mm) if halo else 0.0,
                  halo_echo=_echo(context, uniform(rng, v.halo_contrast_db)) if halo else 0.0,
                  posterior_db=posterior, edge_mm=uniform(rng, (0.0, 0.6)),
                  attributes={"shape": "oval", "margin": "smooth", "orientation": "wider-than-tall",
                              "echo pattern": ("heterogeneous " if heterogeneous else "") + word,
                              "halo": "thin hypoechoic halo" if halo else "none",
                              "posterior": _posterior(posterior),
                              "contrast_db": round(contrast, 2)})


_SAMPLERS = {
    "cyst": _cyst,
    "benign mass": _benign_mass,
    "malignant mass": _malignant_mass,
    "benign lymph node": lambda *a: _lymph_node(*a, False),
    "malignant lymph node": lambda *a: _lymph_node(*a, True),
    "benign thyroid nodule": lambda *a: _thyroid_nodule(*a, False),
    "malignant thyroid nodule": lambda *a: _thyroid_nodule(*a, True),
}


def sample_varied_lesion(kind: str, rng: np.random.Generator, ranges: StructureRanges,
                         variety: VarietyRanges, context_echo: float,
                         target_area_mm2: float | None = None) -> Lesion:
    """A lesion of `kind` from the variety's ranges; contrasts are relative to `context_echo`."""
    return _SAMPLERS[kind](rng, ranges, variety, context_echo, target_area_mm2)

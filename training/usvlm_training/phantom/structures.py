"""Lesions: class attributes -> shape (mask), echo pattern, posterior feature and description.

A lesion's boundary is a star-shaped curve in normalised ellipse coordinates,
rho <= 1 + sum_k a_k cos(k psi + phi_k), plus optional thin spikes; everything is rasterised
in a small patch around the lesion, never on the whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .config import StructureRanges, uniform
from .probe import ProbeGeometry
from .tissue import smooth_noise

# kind -> (class name, malignancy, noun used in the description)
KINDS: dict[str, tuple[str, str, str]] = {
    "cyst": ("cyst", "benign", "cyst"),
    "benign mass": ("benign mass", "benign", "mass"),
    "malignant mass": ("malignant mass", "malignant", "mass"),
    "benign lymph node": ("lymph node", "benign", "lymph node"),
    "malignant lymph node": ("lymph node", "malignant", "lymph node"),
    "benign thyroid nodule": ("thyroid nodule", "benign", "thyroid nodule"),
    "malignant thyroid nodule": ("thyroid nodule", "malignant", "thyroid nodule"),
}

# organ -> (kinds, relative frequency, zone the lesion must lie in)
ORGAN_KINDS: dict[str, tuple[tuple[str, ...], tuple[float, ...], str]] = {
    "breast": (("cyst", "benign mass", "malignant mass"), (1, 1, 1), "gland"),
    "thyroid": (("benign thyroid nodule", "malignant thyroid nodule", "cyst"), (2, 2, 1), "thyroid"),
    "neck": (("benign lymph node", "malignant lymph node"), (1, 1), "deep"),
}


@dataclass
class Lesion:
    kind: str
    width_mm: float                 # axis along the skin, before margin perturbation
    height_mm: float                # axis perpendicular to the skin
    echo: float                     # mean echogenicity inside
    tilt: float = 0.0               # radians, relative to the skin
    heterogeneity: float = 0.0      # relative std of the internal echo
    harmonics: list[tuple[int, float, float]] = field(default_factory=list)  # (k, amp, phase)
    spikes: list[tuple[float, float]] = field(default_factory=list)          # (angle, length)
    posterior_db: float = 0.0       # > 0 enhancement, < 0 shadowing, below the lesion
    calcifications: int = 0
    hilum_echo: float = 0.0         # > 0: echogenic hilum (benign lymph node)
    halo_mm: float = 0.0
    halo_echo: float = 0.0
    edge_mm: float = 0.0            # > 0: soft margin, the echo blends into the tissue over it
    texture_mm: float = 0.0         # > 0: grain of the internal heterogeneity (else v1's 0.7 mm)
    attributes: dict = field(default_factory=dict)

    @property
    def class_name(self) -> str:
        return KINDS[self.kind][0]

    @property
    def malignancy(self) -> str:
        return KINDS[self.kind][1]

    def describe(self) -> str:
        return describe(self.attributes, KINDS[self.kind][2])

    def scaled(self, factor: float) -> "Lesion":
        """The same lesion, smaller (placement retries when it does not fit)."""
        copy = Lesion(**{**self.__dict__, "attributes": dict(self.attributes)})
        copy.width_mm *= factor
        copy.height_mm *= factor
        copy.attributes["size_mm"] = round(max(copy.width_mm, copy.height_mm), 2)
        return copy


def describe(attributes: dict, noun: str) -> str:
    """E.g. "irregular, spiculated, not parallel, markedly hypoechoic mass with posterior acoustic
    shadowing and microcalcifications"."""
    leading = []
    for key in ("shape", "margin", "orientation"):
        for word in attributes.get(key, "").split(", "):
            if word and word not in leading:
                leading.append(word)
    features = [attributes[key] for key in ("hilum", "halo", "posterior", "calcifications")
                if attributes.get(key) not in (None, "", "none")]
    text = ", ".join(leading + [f"{attributes['echo pattern']} {noun}"])
    with_ = [f for f in features if not f.startswith("no ")]
    without = [f[3:] for f in features if f.startswith("no ")]
    clauses = ([("with " + " and ".join(with_))] if with_ else []) + \
        ([("without " + " and ".join(without))] if without else [])
    return " ".join([text] + clauses)


def _harmonics(rng: np.random.Generator, total: float, ks: tuple[int, int], count: int
               ) -> list[tuple[int, float, float]]:
    """Random boundary harmonics whose largest radial excursion is `total` (fraction of radius)."""
    terms = [(int(rng.integers(ks[0], ks[1] + 1)), float(rng.uniform(0.5, 1.0)),
              float(rng.uniform(0, 2 * np.pi))) for _ in range(count)]
    psi = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    peak = np.abs(sum(a * np.cos(k * psi + p) for k, a, p in terms)).max()
    return [(k, a * total / peak, p) for k, a, p in terms]


def _shape_word(ratio: float) -> str:
    return "round" if ratio < 1.15 else "oval"


def _cyst(rng, r: StructureRanges, context: float) -> Lesion:
    size, ratio = uniform(rng, r.cyst_size_mm), uniform(rng, r.cyst_ratio)
    return Lesion("cyst", size, size / ratio, uniform(rng, r.cyst_echo),
                  tilt=uniform(rng, (-0.15, 0.15)), posterior_db=uniform(rng, r.enhancement_db),
                  attributes={"shape": _shape_word(ratio), "margin": "circumscribed",
                              "orientation": "parallel", "echo pattern": "anechoic",
                              "posterior": "posterior acoustic enhancement"})


def _benign_mass(rng, r: StructureRanges, context: float) -> Lesion:
    size, ratio = uniform(rng, r.benign_size_mm), uniform(rng, r.benign_ratio)
    lobulated = rng.random() < 0.4
    enhancement = rng.random() < 0.3
    return Lesion("benign mass", size, size / ratio, uniform(rng, r.benign_echo),
                  tilt=uniform(rng, (-0.15, 0.15)),
                  harmonics=_harmonics(rng, uniform(rng, (0.05, 0.09)), (2, 4), 2) if lobulated else [],
                  posterior_db=uniform(rng, r.benign_enhancement_db) if enhancement else 0.0,
                  attributes={"shape": "gently lobulated" if lobulated else "oval",
                              "margin": "circumscribed", "orientation": "parallel",
                              "echo pattern": "homogeneous hypoechoic",
                              "posterior": "posterior acoustic enhancement" if enhancement else "none"})


def _malignant_mass(rng, r: StructureRanges, context: float) -> Lesion:
    size, ratio = uniform(rng, r.malignant_size_mm), uniform(rng, r.malignant_ratio)
    style = int(rng.integers(3))  # 0 irregular, 1 spiculated, 2 both
    irregular, spiculated = style != 1, style != 0
    calcified = rng.random() < 0.5
    margins = (["irregular"] if irregular else []) + (["spiculated"] if spiculated else [])
    spikes = [(float(rng.uniform(0, 2 * np.pi)), uniform(rng, r.spike_length))
              for _ in range(int(rng.integers(r.spikes[0], r.spikes[1] + 1)))] if spiculated else []
    return Lesion("malignant mass", size / ratio, size, uniform(rng, r.malignant_echo),
                  tilt=uniform(rng, (-0.3, 0.3)), heterogeneity=uniform(rng, r.heterogeneity),
                  harmonics=_harmonics(rng, uniform(rng, r.harmonic_amplitude), (3, 8), 3)
                  if irregular else [],
                  spikes=spikes, posterior_db=-uniform(rng, r.shadow_db),
                  calcifications=int(rng.integers(3, 10)) if calcified else 0,
                  attributes={"shape": "irregular" if irregular else _shape_word(ratio),
                              "margin": ", ".join(margins),
                              "orientation": "not parallel" + (", taller-than-wide" if ratio >= 1.1 else ""),
                              "echo pattern": "heterogeneous markedly hypoechoic",
                              "posterior": "posterior acoustic shadowing",
                              "calcifications": "microcalcifications" if calcified else "none"})


def _lymph_node(rng, r: StructureRanges, context: float, malignant: bool) -> Lesion:
    long_axis = uniform(rng, r.node_long_mm)
    if malignant:
        ratio = uniform(rng, r.node_malignant_ratio)
        return Lesion("malignant lymph node", long_axis, long_axis / ratio,
                      uniform(rng, r.node_cortex_echo), tilt=uniform(rng, (-0.3, 0.3)),
                      heterogeneity=uniform(rng, r.heterogeneity),
                      attributes={"shape": "round", "margin": "circumscribed",
                                  "echo pattern": "heterogeneous hypoechoic",
                                  "hilum": "no fatty hilum"})
    ratio = uniform(rng, r.node_benign_ratio)
    return Lesion("benign lymph node", long_axis, long_axis / ratio, uniform(rng, r.node_cortex_echo),
                  tilt=uniform(rng, (-0.2, 0.2)), hilum_echo=uniform(rng, r.node_hilum_echo),
                  attributes={"shape": "oval", "margin": "circumscribed", "orientation": "parallel",
                              "echo pattern": "hypoechoic", "hilum": "echogenic fatty hilum"})


def _thyroid_nodule(rng, r: StructureRanges, context: float, malignant: bool) -> Lesion:
    size = uniform(rng, r.nodule_size_mm)
    if malignant:
        ratio = uniform(rng, r.nodule_malignant_ratio)
        return Lesion("malignant thyroid nodule", size / ratio, size, uniform(rng, r.malignant_echo),
                      tilt=uniform(rng, (-0.2, 0.2)), heterogeneity=uniform(rng, (0.1, 0.25)),
                      harmonics=_harmonics(rng, uniform(rng, r.harmonic_amplitude), (3, 8), 3),
                      calcifications=int(rng.integers(4, 12)),
                      attributes={"shape": "irregular", "margin": "irregular",
                                  "orientation": "taller-than-wide",
                                  "echo pattern": "markedly hypoechoic",
                                  "calcifications": "microcalcifications"})
    ratio = uniform(rng, r.nodule_benign_ratio)
    iso = rng.random() < 0.5
    echo = context * uniform(rng, (0.92, 1.02)) if iso else uniform(rng, r.nodule_hypo_echo)
    return Lesion("benign thyroid nodule", size, size / ratio, echo, tilt=uniform(rng, (-0.15, 0.15)),
                  halo_mm=uniform(rng, r.nodule_halo_mm), halo_echo=uniform(rng, r.nodule_halo_echo),
                  attributes={"shape": "oval", "margin": "smooth", "orientation": "wider-than-tall",
                              "echo pattern": "isoechoic" if iso else "hypoechoic",
                              "halo": "thin hypoechoic halo"})


_SAMPLERS = {
    "cyst": _cyst,
    "benign mass": _benign_mass,
    "malignant mass": _malignant_mass,
    "benign lymph node": lambda rng, r, c: _lymph_node(rng, r, c, False),
    "malignant lymph node": lambda rng, r, c: _lymph_node(rng, r, c, True),
    "benign thyroid nodule": lambda rng, r, c: _thyroid_nodule(rng, r, c, False),
    "malignant thyroid nodule": lambda rng, r, c: _thyroid_nodule(rng, r, c, True),
}


def sample_lesion(kind: str, rng: np.random.Generator, ranges: StructureRanges,
                  context_echo: float, variety=None, target_area_mm2: float | None = None
                  ) -> Lesion:
    """Draw a lesion of `kind`; `context_echo` is the surrounding tissue (for isoechoic ones).

    With `variety` (config.VarietyRanges) the lesion is drawn from the wider ranges instead, and
    `target_area_mm2` asks for a large one of about that area.
    """
    if variety is not None:
        from .variety import sample_varied_lesion
        lesion = sample_varied_lesion(kind, rng, ranges, variety, context_echo, target_area_mm2)
    else:
        lesion = _SAMPLERS[kind](rng, ranges, context_echo)
    lesion.attributes["size_mm"] = round(max(lesion.width_mm, lesion.height_mm), 2)
    lesion.attributes["echogenicity"] = round(lesion.echo, 4)
    if lesion.posterior_db:
        lesion.attributes["posterior_db"] = round(lesion.posterior_db, 2)
    return lesion


@dataclass
class Patch:
    """A rasterised lesion: everything is local to `window` (a pair of slices into the image)."""
    window: tuple[slice, slice]
    mask: np.ndarray
    coords: dict[str, np.ndarray]                  # normalised lesion coordinates, for `fill`
    echo: np.ndarray | None = None
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    alpha: np.ndarray | None = None                # soft margin: blend weight of `echo` (0..1)

    def full(self, local: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, local.dtype)
        out[self.window] = local
        return out

    def moved(self, center: tuple[int, int], shape: tuple[int, int]) -> "Patch | None":
        """This patch, rasterised around the middle of its own window, centred on `center` of an
        image of `shape` (a lesion that does not turn with the skin is the same everywhere);
        None if part of the mask would fall outside the image."""
        half_r, half_c = self.mask.shape[0] // 2, self.mask.shape[1] // 2
        r0, c0 = center[0] - half_r, center[1] - half_c
        rows = slice(max(r0, 0), min(r0 + self.mask.shape[0], shape[0]))
        cols = slice(max(c0, 0), min(c0 + self.mask.shape[1], shape[1]))
        local = (slice(rows.start - r0, rows.stop - r0), slice(cols.start - c0, cols.stop - c0))
        mask = self.mask[local]
        if rows.stop - rows.start < 3 or cols.stop - cols.start < 3 or mask.sum() != self.area:
            return None
        return Patch((rows, cols), mask, {k: v[local] for k, v in self.coords.items()})

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def fits_roughly(lesion: Lesion, center: tuple[int, int], geometry: ProbeGeometry,
                 free: np.ndarray, points: int = 12) -> bool:
    """Cheap pre-check before `rasterize`: points just inside the smallest possible boundary
    must all lie on free pixels."""
    shrink = 0.9 * max(1 - sum(abs(amp) for _, amp, _ in lesion.harmonics), 0.3)
    a = lesion.width_mm / 2 * shrink / geometry.spacing_mm
    b = lesion.height_mm / 2 * shrink / geometry.spacing_mm
    theta = lesion.tilt + geometry.skin_angle(*center)
    psi = np.linspace(0, 2 * np.pi, points, endpoint=False)
    u, v = a * np.cos(psi), b * np.sin(psi)
    rows = np.rint(center[0] - u * math.sin(theta) + v * math.cos(theta)).astype(int)
    cols = np.rint(center[1] + u * math.cos(theta) + v * math.sin(theta)).astype(int)
    inside = (rows >= 0) & (rows < free.shape[0]) & (cols >= 0) & (cols < free.shape[1])
    return bool(inside.all() and free[rows, cols].all())


def fits_outline(lesion: Lesion, center: tuple[int, int], geometry: ProbeGeometry,
                 free: np.ndarray, points: int = 48) -> bool:
    """Stricter pre-check than `fits_roughly`: points on the perturbed boundary itself and the
    spike tips must all lie on free pixels (rasterising a large lesion costs far more)."""
    s = geometry.spacing_mm
    a, b = lesion.width_mm / 2, lesion.height_mm / 2
    theta = lesion.tilt + geometry.skin_angle(*center)
    psi = np.linspace(0, 2 * np.pi, points, endpoint=False)
    radius = np.ones(points)
    for k, amp, phase in lesion.harmonics:
        radius += amp * np.cos(k * psi + phase)
    if lesion.spikes:
        angles = np.array([angle for angle, _ in lesion.spikes])
        tips = np.ones(angles.size)
        for k, amp, phase in lesion.harmonics:
            tips += amp * np.cos(k * angles + phase)
        tips *= 1 + np.array([length for _, length in lesion.spikes])
        psi, radius = np.concatenate([psi, angles]), np.concatenate([radius, tips])
    u, v = 0.97 * radius * np.cos(psi), 0.97 * radius * np.sin(psi)
    dx = (a * u * math.cos(theta) + b * v * math.sin(theta)) / s
    dy = (-a * u * math.sin(theta) + b * v * math.cos(theta)) / s
    rows, cols = np.rint(center[0] + dy).astype(int), np.rint(center[1] + dx).astype(int)
    inside = (rows >= 0) & (rows < free.shape[0]) & (cols >= 0) & (cols < free.shape[1])
    return bool(inside.all() and free[rows, cols].all())


def reach_px(lesion: Lesion, spacing_mm: float) -> int:
    """Half the side of the window a lesion is rasterised in (px)."""
    a, b = lesion.width_mm / 2, lesion.height_mm / 2
    reach = 1 + sum(abs(amp) for _, amp, _ in lesion.harmonics) + max(
        (length for _, length in lesion.spikes), default=0)
    half = math.ceil(max(a, b) * reach / spacing_mm) + 2
    if lesion.edge_mm:
        half += math.ceil(lesion.edge_mm / spacing_mm)
    return half


def rasterize(lesion: Lesion, center: tuple[int, int], geometry: ProbeGeometry,
              bounds: tuple[int, int] | None = None, dtype=np.float64) -> Patch | None:
    """Mask of a lesion centred on a pixel (echo and parts come later, in `fill`); None if tiny.

    bounds: the grid it is clipped to (default: the image); dtype: of the coordinates (v1 used
    float64; float32 is twice as fast for the variety's large lesions)."""
    s = geometry.spacing_mm
    a, b = lesion.width_mm / 2, lesion.height_mm / 2
    half = reach_px(lesion, s)
    bounds = bounds or geometry.shape
    r0, c0 = center
    rows = slice(max(r0 - half, 0), min(r0 + half + 1, bounds[0]))
    cols = slice(max(c0 - half, 0), min(c0 + half + 1, bounds[1]))
    if rows.stop - rows.start < 3 or cols.stop - cols.start < 3:
        return None
    dy = ((np.arange(rows.start, rows.stop) - r0) * s)[:, None].astype(dtype, copy=False)
    dx = ((np.arange(cols.start, cols.stop) - c0) * s)[None, :].astype(dtype, copy=False)
    theta = lesion.tilt + geometry.skin_angle(r0, c0)
    # Normalised coordinates: the unperturbed lesion is the unit circle.
    un = (dx * math.cos(theta) - dy * math.sin(theta)) / a      # along the skin
    vn = (dx * math.sin(theta) + dy * math.cos(theta)) / b      # away from the skin
    rho, psi = np.hypot(un, vn), np.arctan2(vn, un)
    boundary = np.ones_like(psi)
    for k, amp, phase in lesion.harmonics:
        boundary += amp * np.cos(k * psi + phase)
    body = rho <= boundary
    mean_radius = (a + b) / 2
    widest = 1 + sum(abs(amp) for _, amp, _ in lesion.harmonics)
    for angle, length in lesion.spikes:
        # Thin tapering spike along direction `angle`: distance to its axis and position along it.
        # Only evaluated in a box around the spike's axis (it is thin and the window is large).
        box = _spike_box(angle, widest * (1 + length), max(0.8 * s, 0.2) / mean_radius,
                         a, b, theta, s, (r0 - rows.start, c0 - cols.start), body.shape)
        if box is None:
            continue
        u, v, rb = un[box], vn[box], rho[box] / boundary[box]
        across = np.abs(v * math.cos(angle) - u * math.sin(angle)) * mean_radius
        ahead = u * math.cos(angle) + v * math.sin(angle) > 0
        t = (rb - 1) / length
        half_width = max(0.8 * s, 0.2) * (1 - np.clip(t, 0, 1))
        body[box] |= ahead & (t >= -0.2) & (t <= 1) & (across <= half_width)
    if body.sum() < 9:
        return None
    return Patch((rows, cols), body, {"rho": rho / boundary, "un": un, "vn": vn})


def _spike_box(angle: float, along: float, across: float, a: float, b: float, theta: float,
               s: float, center: tuple[int, int], shape: tuple[int, int]
               ) -> tuple[slice, slice] | None:
    """Window rows / columns (a bounding box, 2 px margin) of the normalised-coordinate strip
    0 <= along-axis <= `along`, |across-axis| <= `across` in direction `angle`."""
    ca, sa = math.cos(angle), math.sin(angle)
    corners_u = np.array([0, along, along, 0]) * ca - np.array([-across, -across, across, across]) * sa
    corners_v = np.array([0, along, along, 0]) * sa + np.array([-across, -across, across, across]) * ca
    # Normalised (u, v) -> offsets in pixels: the inverse of the map in `rasterize`.
    dx = (a * corners_u * math.cos(theta) + b * corners_v * math.sin(theta)) / s
    dy = (-a * corners_u * math.sin(theta) + b * corners_v * math.cos(theta)) / s
    r_lo, r_hi = max(int(math.floor(center[0] + dy.min())) - 2, 0), int(math.ceil(center[0] + dy.max())) + 3
    c_lo, c_hi = max(int(math.floor(center[1] + dx.min())) - 2, 0), int(math.ceil(center[1] + dx.max())) + 3
    r_hi, c_hi = min(r_hi, shape[0]), min(c_hi, shape[1])
    if r_lo >= r_hi or c_lo >= c_hi:
        return None
    return slice(r_lo, r_hi), slice(c_lo, c_hi)


def fill(lesion: Lesion, patch: Patch, geometry: ProbeGeometry, rng: np.random.Generator,
         ranges: StructureRanges) -> None:
    """Echo values and named parts (halo, hilum, calcifications) of a placed lesion."""
    s = geometry.spacing_mm
    body = patch.mask
    rel, un, vn = patch.coords["rho"], patch.coords["un"], patch.coords["vn"]
    echo = np.full(body.shape, lesion.echo, np.float32)
    if lesion.heterogeneity:
        grain = max((lesion.texture_mm or 0.7) / s, 1.5)
        echo *= 1 + lesion.heterogeneity * smooth_noise(body.shape, grain, rng)
    if lesion.halo_mm:
        halo = body & (rel >= 1 - lesion.halo_mm / ((lesion.width_mm + lesion.height_mm) / 4))
        echo[halo] = lesion.halo_echo
        patch.parts["halo"] = halo
        if lesion.edge_mm:
            echo[~body] = lesion.halo_echo      # the soft margin fades from the halo outwards
    if lesion.hilum_echo:
        # Eccentric echogenic centre, elongated along the node's long axis.
        scale_u, scale_v = rng.uniform(0.45, 0.6), rng.uniform(0.28, 0.4)
        shift = rng.uniform(-0.15, 0.15)
        hilum = body & (np.hypot(un / scale_u, (vn - shift) / scale_v) <= 1)
        echo[hilum] = lesion.hilum_echo * (1 + 0.08 * smooth_noise(body.shape, 1.5, rng)[hilum])
        patch.parts["hilum"] = hilum
    if lesion.calcifications:
        dots = _calcifications(body & (rel <= 0.75), lesion.calcifications, rng, ranges)
        echo[dots] = 1.0
        patch.parts["calcifications"] = dots
    patch.echo = np.clip(echo, 0.005, 1.0)
    if lesion.edge_mm:
        # Signed distance to the margin along the ray from the centre (mm, > 0 inside): the echo
        # is half-way between lesion and tissue on the mask's boundary.
        a, b = lesion.width_mm / 2, lesion.height_mm / 2
        radius_mm = np.hypot(un * a, vn * b)
        inside_mm = radius_mm * (1 / np.maximum(rel, 1e-3) - 1)
        alpha = np.clip(0.5 + inside_mm / lesion.edge_mm, 0.0, 1.0)
        alpha[body] = np.maximum(alpha[body], 0.6)       # spikes stay visible
        alpha[~body] = np.minimum(alpha[~body], 0.45)
        patch.alpha = alpha.astype(np.float32)


def _calcifications(inner: np.ndarray, count: int, rng: np.random.Generator,
                    ranges: StructureRanges) -> np.ndarray:
    """Bright dots of 2-6 px diameter at random points of the lesion's inner part."""
    dots = np.zeros(inner.shape, bool)
    candidates = np.flatnonzero(inner)
    if candidates.size == 0:
        return dots
    yy, xx = np.ogrid[:inner.shape[0], :inner.shape[1]]
    for flat in rng.choice(candidates, size=min(count, candidates.size), replace=False):
        y, x = divmod(int(flat), inner.shape[1])
        diameter = int(rng.integers(ranges.calcification_px[0], ranges.calcification_px[1] + 1))
        cy, cx = y + (diameter % 2 == 0) * 0.5, x + (diameter % 2 == 0) * 0.5
        dots |= (yy - cy) ** 2 + (xx - cx) ** 2 <= (diameter / 2) ** 2
    return dots & inner

"""Burned-in scanner overlays: preset / date text, a depth scale, caliper crosses.

They sit in a band along the border of the field of view, inside it (pixels outside a convex fan
stay 0), and never on a lesion: every element is placed only where a box clear of all (dilated)
masks exists, otherwise it is left out. The text carries no personal data: organ, probe model,
acquisition settings and a date.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .probe import ProbeGeometry

# 3 x 5 pixel glyphs (rows separated by spaces), enough for presets, dates and numbers.
_GLYPHS = {
    "A": ".#. #.# ### #.# #.#", "B": "##. #.# ##. #.# ##.", "C": ".## #.. #.. #.. .##",
    "D": "##. #.# #.# #.# ##.", "E": "### #.. ##. #.. ###", "F": "### #.. ##. #.. #..",
    "G": ".## #.. #.# #.# .##", "H": "#.# #.# ### #.# #.#", "I": "### .#. .#. .#. ###",
    "J": "..# ..# ..# #.# .#.", "K": "#.# #.# ##. #.# #.#", "L": "#.. #.. #.. #.. ###",
    "M": "#.# ### ### #.# #.#", "N": "##. #.# #.# #.# #.#", "O": ".#. #.# #.# #.# .#.",
    "P": "##. #.# ##. #.. #..", "Q": ".#. #.# #.# ##. .##", "R": "##. #.# ##. #.# #.#",
    "S": ".## #.. .#. ..# ##.", "T": "### .#. .#. .#. .#.", "U": "#.# #.# #.# #.# ###",
    "V": "#.# #.# #.# #.# .#.", "W": "#.# #.# ### ### #.#", "X": "#.# #.# .#. #.# #.#",
    "Y": "#.# #.# .#. .#. .#.", "Z": "### ..# .#. #.. ###", "0": "### #.# #.# #.# ###",
    "1": ".#. ##. .#. .#. ###", "2": "##. ..# .#. #.. ###", "3": "##. ..# .#. ..# ##.",
    "4": "#.# #.# ### ..# ..#", "5": "### #.. ##. ..# ##.", "6": ".## #.. ### #.# ###",
    "7": "### ..# .#. .#. .#.", "8": "### #.# ### #.# ###", "9": "### #.# ### ..# ##.",
    "-": "... ... ### ... ...", ".": "... ... ... ... .#.", ":": "... .#. ... .#. ...",
    "/": "..# ..# .#. #.. #..", " ": "... ... ... ... ...",
}
_FONT = {ch: np.array([[c == "#" for c in row] for row in g.split()], bool)
         for ch, g in _GLYPHS.items()}

_PROBE_MODELS = {"linear": ("L12-5", "L15-7", "L9-3", "L14-6"), "convex": ("C5-1", "C6-2", "C9-4"),
                 "phased": ("P4-2", "S5-1", "P7-3")}


def text_bitmap(text: str, scale: int = 1) -> np.ndarray:
    """Boolean bitmap of upper-case text in the 3 x 5 font, one blank column between glyphs."""
    columns = []
    for ch in text.upper():
        columns += [_FONT.get(ch, _FONT[" "]), np.zeros((5, 1), bool)]
    bitmap = np.concatenate(columns[:-1], axis=1)
    return np.kron(bitmap, np.ones((scale, scale), bool)) if scale > 1 else bitmap


def _cross(arm: int) -> np.ndarray:
    cross = np.zeros((2 * arm + 1, 2 * arm + 1), bool)
    cross[arm, :] = cross[:, arm] = True
    return cross


@dataclass
class Overlays:
    mask: np.ndarray                              # burned-in pixels
    boxes: list[dict] = field(default_factory=list)   # {kind, text?, box: [x0, y0, x1, y1)}

    @property
    def present(self) -> bool:
        return bool(self.boxes)


class _Placer:
    """Finds free boxes: inside the field of view, clear of masks and of earlier elements."""

    def __init__(self, fov: np.ndarray, lesions: np.ndarray, margin_px: int) -> None:
        blocked = ~fov | ndimage.binary_dilation(lesions, iterations=margin_px)
        self.fov = fov
        self.shape = fov.shape
        self.blocked = blocked
        self.integral = np.pad(blocked.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32),
                               ((1, 0), (1, 0)))
        self.mask = np.zeros(fov.shape, bool)
        self.boxes: list[dict] = []

    def free(self, r: int, c: int, h: int, w: int) -> bool:
        if r < 0 or c < 0 or r + h > self.shape[0] or c + w > self.shape[1]:
            return False
        ii = self.integral
        if ii[r + h, c + w] - ii[r, c + w] - ii[r + h, c] + ii[r, c]:
            return False
        return not self.mask[max(r - 2, 0):r + h + 2, max(c - 2, 0):c + w + 2].any()

    def stamp(self, bitmap: np.ndarray, r: int, c: int) -> None:
        self.mask[r:r + bitmap.shape[0], c:c + bitmap.shape[1]] |= bitmap

    def record(self, kind: str, box: tuple[int, int, int, int], **extra) -> None:
        self.boxes.append({"kind": kind, "box": [int(v) for v in box], **extra})

    def place(self, bitmap: np.ndarray, rng: np.random.Generator, band: float, kind: str,
              tries: int = 40, **extra) -> bool:
        """Put a bitmap somewhere in the top or bottom border band of the field."""
        h, w = bitmap.shape
        rows = np.flatnonzero(self.fov.any(axis=1))
        if rows.size == 0:
            return False
        top, bottom = int(rows[0]), int(rows[-1])
        depth = max(int(band * (bottom - top)), h + 2)
        for _ in range(tries):
            r = top + 1 + int(rng.integers(0, max(depth - h, 1)))
            if rng.random() < 0.5:
                r = bottom - h - int(rng.integers(0, max(depth - h, 1)))
            c = int(rng.integers(1, max(self.shape[1] - w - 1, 2)))
            if self.free(r, c, h, w):
                self.stamp(bitmap, r, c)
                self.record(kind, (c, r, c + w, r + h), **extra)
                return True
        return False


def _depth_scale(placer: _Placer, geometry: ProbeGeometry, rng: np.random.Generator,
                 scale: int) -> None:
    """Ticks every 5 mm (longer every 10 mm, labelled in cm) along one side of the field."""
    s = geometry.spacing_mm
    fov = geometry.fov_mask
    right = rng.random() < 0.5
    drawn = np.zeros(fov.shape, bool)
    for mm in range(5, int(geometry.depth_mm) + 1, 5):
        row = int(round(mm / s - 0.5))
        if row >= fov.shape[0] - 1 or not fov[row].any():
            continue
        inside = np.flatnonzero(fov[row])
        length = (6 if mm % 10 == 0 else 3) * scale
        c = int(inside[-1]) - 1 - length if right else int(inside[0]) + 2
        r = row - (scale // 2)
        tick = np.ones((scale, length), bool)
        if not placer.free(r, c, scale, length):
            continue
        placer.stamp(tick, r, c)
        drawn[r:r + scale, c:c + length] = True
        if mm % 10 == 0:
            label = text_bitmap(str(mm // 10), scale)
            lc = c - label.shape[1] - scale if right else c + length + scale
            lr = row - label.shape[0] // 2
            if placer.free(lr, lc, *label.shape):
                placer.stamp(label, lr, lc)
                drawn[lr:lr + label.shape[0], lc:lc + label.shape[1]] |= label
    if drawn.any():
        rows, cols = np.flatnonzero(drawn.any(1)), np.flatnonzero(drawn.any(0))
        placer.record("depth scale", (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))


def draw_overlays(image: np.ndarray, lesions: np.ndarray, geometry: ProbeGeometry, organ: str,
                  info: dict, rng: np.random.Generator) -> Overlays:
    """Burn overlays into `image` (in place) and return where they are."""
    scale = 1 if min(geometry.shape) < 400 else 2
    placer = _Placer(geometry.fov_mask, lesions, margin_px=3)
    model = str(rng.choice(_PROBE_MODELS[geometry.kind]))
    date = f"20{rng.integers(20, 27)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
    preset = f"{organ.upper()} {model}"
    # One line if it fits, else preset and date as separate elements.
    if not placer.place(text_bitmap(f"{preset} {date}", scale), rng, 0.15, "text",
                        text=f"{preset} {date}"):
        placer.place(text_bitmap(preset, scale), rng, 0.15, "text", text=preset)
        placer.place(text_bitmap(date, scale), rng, 0.15, "text", text=date)
    if rng.random() < 0.6:
        settings = f"{info['frequency_mhz']:.1f}MHZ DR{info['dynamic_range_db']:.0f}"
        placer.place(text_bitmap(settings, scale), rng, 0.15, "text", text=settings)
    if rng.random() < 0.8:
        _depth_scale(placer, geometry, rng, scale)
    for _ in range(int(rng.integers(0, 3))):
        placer.place(_cross(int(rng.integers(2, 5)) * scale), rng, 0.12, "caliper")
    image[placer.mask] = int(rng.integers(190, 256))
    return Overlays(placer.mask, placer.boxes)

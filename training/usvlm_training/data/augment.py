"""Ultrasound augmentation of an image and its masks, seeded and deterministic.

Geometry: random resized crop and horizontal flip, applied alike to image, masks and the support
(where the image shows tissue: inside the field of view, off the letterbox padding). Vertical
flip is off by default: depth runs down the image, shadows and enhancement fall below lesions,
attenuation grows with depth; a flipped image is not an ultrasound image.
Intensity, on the image only and only inside the support (outside stays black, as the
preprocessing leaves it): gain, contrast, gamma, a smooth gain ramp along depth (a different
attenuation / time-gain compensation), multiplicative speckle-like noise (mean 1, gamma or
Rayleigh distributed, the statistics of speckle rather than additive Gaussian noise) and blur.

Images are float in [0, 1] (the model input); numpy arrays or torch tensors, (H, W) or (C, H, W);
masks (H, W) or (N, H, W). Results have the input's type and layout.

Presets (`augment_preset`): "default" (`AugmentConfig()`, what phantom training has always used,
unchanged draws), "real" (`AugmentConfig.real()`, opt-in for real images: harder crops that keep
the structure mostly in view, small rotations, wider gain / contrast / gamma, stronger speckle and
blur) and "none". Burned-in callipers, marks and text of real images are left as they are: the
engine sees them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import ndimage

Range = tuple[float, float]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges; `AugmentConfig.none()` changes nothing."""

    crop_p: float = 0.8
    crop_scale: Range = (0.6, 1.0)  # fraction of the image area kept
    crop_ratio: Range = (3 / 4, 4 / 3)  # width / height of the crop, relative to the image's
    hflip_p: float = 0.5
    vflip_p: float = 0.0  # never by default: depth has a direction
    intensity_p: float = 0.8
    gain_db: Range = (-3.0, 3.0)
    contrast: Range = (0.8, 1.25)
    gamma: Range = (0.75, 1.35)
    depth_p: float = 0.5
    depth_gain_db: Range = (-6.0, 6.0)  # gain at the bottom relative to the top
    speckle_p: float = 0.5
    speckle: Literal["gamma", "rayleigh"] = "gamma"
    speckle_strength: Range = (0.05, 0.3)  # mix of noise into the multiplier
    speckle_looks: Range = (2.0, 8.0)  # shape of the gamma distribution (more looks: less noise)
    blur_p: float = 0.3
    blur_sigma: Range = (0.3, 1.0)  # pixels
    # Zoom out, in place of the crop: a box larger than the image (area ratio), the outside
    # padded black and outside the field of view, as the letterbox pads. Crops only ever zoom
    # in; without this, structures smaller in the model input than in training are missed.
    zoom_out_p: float = 0.25
    zoom_out_scale: Range = (1.0, 2.0)
    # Off by default (phantom training unchanged); on in `real()`.
    rotate_p: float = 0.0
    rotate_deg: float = 12.0  # at most, either way, about the centre of the crop; corners padded black
    # A crop keeping less than this share of the masks' area is moved (then grown) to take them
    # in; 0: crops ignore the masks.
    crop_keep: float = 0.0

    @classmethod
    def none(cls) -> "AugmentConfig":
        return cls(crop_p=0.0, hflip_p=0.0, vflip_p=0.0, intensity_p=0.0, depth_p=0.0,
                   speckle_p=0.0, blur_p=0.0, zoom_out_p=0.0, rotate_p=0.0)

    @classmethod
    def real(cls) -> "AugmentConfig":
        """Stronger augmentation for real images (opt-in): crops down to 35 % of the area that
        keep 90 % of the structure, rotations up to 12 degrees, gain +-6 dB, wider contrast and
        gamma, stronger speckle and blur, and zoom-out now and then."""
        return cls(crop_p=0.8, crop_scale=(0.35, 1.0), crop_keep=0.9, hflip_p=0.5, intensity_p=0.9,
                   gain_db=(-6.0, 6.0), contrast=(0.7, 1.4), gamma=(0.6, 1.6), depth_p=0.5,
                   speckle_p=0.5, speckle_strength=(0.05, 0.4), blur_p=0.3, blur_sigma=(0.3, 1.5),
                   zoom_out_p=0.15, zoom_out_scale=(1.0, 1.8), rotate_p=0.5, rotate_deg=12.0)


AUGMENT_PRESETS = ("default", "real", "none")


def augment_preset(name: str) -> AugmentConfig:
    """"default" (phantom training's), "real" (stronger, for real images) or "none"."""
    presets = {"default": AugmentConfig, "real": AugmentConfig.real, "none": AugmentConfig.none}
    if name not in presets:
        raise ValueError(f"augmentation preset must be one of {', '.join(AUGMENT_PRESETS)}, got {name!r}")
    return presets[name]()


@dataclass
class Augmented:
    image: Any
    masks: Any
    support: Any
    params: dict[str, Any] = field(default_factory=dict)  # what was applied, for logs and tests


def _to_numpy(x: Any) -> tuple[np.ndarray, Any]:
    if hasattr(x, "detach"):  # a torch tensor; torch is imported only when one is given
        return x.detach().cpu().numpy(), x
    return np.asarray(x), None


def _like(arr: np.ndarray, ref: Any) -> Any:
    if ref is None:
        return arr
    import torch

    return torch.from_numpy(np.ascontiguousarray(arr)).to(dtype=ref.dtype, device=ref.device)


def _draw(rng: np.random.Generator, config: AugmentConfig, shape: tuple[int, int]) -> dict[str, Any]:
    """All random choices, drawn in a fixed order whatever the probabilities, so one setting
    does not reshuffle the others."""
    u = rng.random(8)
    h, w = shape
    scale, log_ratio = rng.uniform(*config.crop_scale), rng.uniform(*np.log(config.crop_ratio))
    ch = min(h, np.sqrt(scale / np.exp(log_ratio)) * h)
    cw = min(w, np.sqrt(scale * np.exp(log_ratio)) * w)
    top, left = rng.uniform(0, h - ch), rng.uniform(0, w - cw)
    params: dict[str, Any] = {
        "crop": (float(top), float(left), float(ch), float(cw)) if u[0] < config.crop_p else None,
        "hflip": bool(u[1] < config.hflip_p), "vflip": bool(u[2] < config.vflip_p),
        "gain_db": float(rng.uniform(*config.gain_db)), "contrast": float(rng.uniform(*config.contrast)),
        "gamma": float(np.exp(rng.uniform(*np.log(config.gamma)))),
        "depth_gain_db": float(rng.uniform(*config.depth_gain_db)),
        "depth_shape": float(rng.uniform(0.6, 1.6)),
        "speckle_strength": float(rng.uniform(*config.speckle_strength)),
        "speckle_looks": float(rng.uniform(*config.speckle_looks)),
        "speckle_seed": int(rng.integers(2**31)),
        "blur_sigma": float(rng.uniform(*config.blur_sigma)),
    }
    params["intensity"] = bool(u[3] < config.intensity_p)
    params["depth"] = bool(u[4] < config.depth_p)
    params["speckle"] = bool(u[5] < config.speckle_p)
    params["blur"] = bool(u[6] < config.blur_p)
    # Drawn last, so the draws above stay what they were before zoom-out existed.
    zoom = float(rng.uniform(*config.zoom_out_scale))
    zh, zw = np.sqrt(zoom) * h, np.sqrt(zoom) * w
    ztop, zleft = rng.uniform(h - zh, 0.0), rng.uniform(w - zw, 0.0)
    params["zoom_out"] = bool(rng.random() < config.zoom_out_p and zoom > 1.0)
    if params["zoom_out"]:
        params["crop"] = (float(ztop), float(zleft), float(zh), float(zw))
    # Drawn after zoom-out, so the draws above stay what they were before rotation existed.
    angle = float(rng.uniform(-config.rotate_deg, config.rotate_deg))
    params["rotate"] = bool(rng.random() < config.rotate_p and config.rotate_deg > 0)
    params["angle"] = angle if params["rotate"] else 0.0
    return params


def _keep_in_view(crop: tuple[float, float, float, float], masks: np.ndarray, keep: float
                  ) -> tuple[tuple[float, float, float, float], bool]:
    """The crop box (top, left, height, width), moved onto the masks' union when it keeps less
    than `keep` of its area, then grown (up to the image) when moving is not enough."""
    union = masks.any(axis=0) if len(masks) else np.zeros((1, 1), bool)
    if keep <= 0 or not union.any():
        return crop, False
    h, w = union.shape
    rows, cols = np.nonzero(union)

    def kept(box: tuple[float, float, float, float]) -> float:
        t, l, bh, bw = box
        inside = (rows >= t) & (rows + 1 <= t + bh) & (cols >= l) & (cols + 1 <= l + bw)
        return float(inside.mean())

    if kept(crop) >= keep:
        return crop, False
    r0, r1, c0, c1 = rows.min(), rows.max() + 1.0, cols.min(), cols.max() + 1.0
    _, _, ch, cw = crop
    for grow in (False, True):
        if grow:  # the structure is larger than the box: take it in, the shape of the box kept
            factor = min(max((r1 - r0) / ch, (c1 - c0) / cw, 1.0) * 1.05, h / ch, w / cw)
            ch, cw = ch * factor, cw * factor
        top = float(np.clip((r0 + r1) / 2 - ch / 2, 0.0, h - ch))
        left = float(np.clip((c0 + c1) / 2 - cw / 2, 0.0, w - cw))
        box = (top, left, float(ch), float(cw))
        if kept(box) >= keep:
            break
    return box, True


def _resample(stack: np.ndarray, crop: tuple[float, float, float, float] | None, hflip: bool,
              vflip: bool, angle: float = 0.0) -> np.ndarray:
    """(K, H, W) float -> the crop (top, left, height, width) scaled back to (H, W), turned by
    `angle` degrees about its centre (in image space: a rotation, not a shear), flipped."""
    k, h, w = stack.shape
    if angle:
        top, left, ch, cw = crop if crop is not None else (0.0, 0.0, float(h), float(w))
        rows = top + (np.arange(h) + 0.5) * ch / h - 0.5
        cols = left + (np.arange(w) + 0.5) * cw / w - 0.5
        r, c = np.meshgrid(rows, cols, indexing="ij")
        cy, cx = top + ch / 2 - 0.5, left + cw / 2 - 0.5
        cos, sin = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        grid = np.stack([cy + cos * (r - cy) - sin * (c - cx), cx + sin * (r - cy) + cos * (c - cx)])
        # what turns in from outside the image is black, outside the field of view, no structure
        stack = np.stack([ndimage.map_coordinates(s, grid, order=1, mode="constant", cval=0.0)
                          for s in stack])
    elif crop is not None:
        top, left, ch, cw = crop
        # output pixel centre v maps to top + (v + 0.5) * ch / h - 0.5, as the letterbox does
        rows = top + (np.arange(h) + 0.5) * ch / h - 0.5
        cols = left + (np.arange(w) + 0.5) * cw / w - 0.5
        grid = np.stack(np.meshgrid(rows, cols, indexing="ij"))
        # A box reaching outside the image (zoom-out) is padded with zeros: black, no structure,
        # outside the field of view; inside it, edge pixels are repeated.
        outside = min(top, left) < -1e-6 or top + ch > h + 1e-6 or left + cw > w + 1e-6
        mode = "constant" if outside else "nearest"
        stack = np.stack([ndimage.map_coordinates(s, grid, order=1, mode=mode, cval=0.0)
                          for s in stack])
    if hflip:
        stack = stack[:, :, ::-1]
    if vflip:
        stack = stack[:, ::-1, :]
    return stack


def _intensity(image: np.ndarray, support: np.ndarray, p: dict[str, Any], config: AugmentConfig
               ) -> np.ndarray:
    """(C, H, W) in [0, 1] -> the same, changed only where `support` (H, W) is true."""
    out = image.astype(np.float32, copy=True)
    inside = support > 0.5
    if p["intensity"]:
        out *= 10 ** (p["gain_db"] / 20)
        mean = float(out[:, inside].mean()) if inside.any() else 0.5
        out = (out - mean) * p["contrast"] + mean
        out = np.clip(out, 0.0, 1.0) ** p["gamma"]
    if p["depth"]:
        z = np.linspace(0.0, 1.0, out.shape[1], dtype=np.float32) ** p["depth_shape"]
        out *= (10 ** (p["depth_gain_db"] * z / 20))[np.newaxis, :, np.newaxis]
    if p["speckle"]:
        noise_rng = np.random.default_rng(p["speckle_seed"])
        if config.speckle == "rayleigh":  # Rayleigh with mean 1
            noise = noise_rng.rayleigh(np.sqrt(2 / np.pi), out.shape[1:])
        else:  # gamma with mean 1 and variance 1 / looks (multi-look speckle intensity)
            noise = noise_rng.gamma(p["speckle_looks"], 1 / p["speckle_looks"], out.shape[1:])
        out *= (1 - p["speckle_strength"] + p["speckle_strength"] * noise).astype(np.float32)
    if p["blur"]:
        out = np.stack([ndimage.gaussian_filter(c, p["blur_sigma"]) for c in out])
    return np.clip(out, 0.0, 1.0) * inside


def augment_image(image: Any, masks: Any = None, *, seed: Any = 0, config: AugmentConfig | None = None,
            support: Any = None) -> Augmented:
    """Augment `image` and `masks` alike. `seed`: an int, a sequence of ints or a numpy Generator;
    the same seed gives the same result. `support` (H, W): where intensity changes apply
    (default: everywhere)."""
    config = config or AugmentConfig()
    img, img_ref = _to_numpy(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (C, H, W), got shape {img.shape}")
    hw = img.shape[-2:]
    chw = img.reshape(-1, *hw).astype(np.float32)
    msk, msk_ref = _to_numpy(masks) if masks is not None else (np.zeros((0, *hw), bool), None)
    stack_masks = msk.reshape(-1, *hw)
    if msk.shape[-2:] != hw:
        raise ValueError(f"masks of shape {msk.shape} do not match the image of shape {img.shape}")
    sup, sup_ref = _to_numpy(support) if support is not None else (np.ones(hw, np.float32), None)

    rng = np.random.default_rng(seed)
    params = _draw(rng, config, hw)
    if params["crop"] is not None and not params["zoom_out"] and config.crop_keep > 0:
        params["crop"], params["crop_moved"] = _keep_in_view(params["crop"], stack_masks != 0,
                                                             config.crop_keep)
    n_img = chw.shape[0]
    stack = np.concatenate([chw, stack_masks.astype(np.float32), sup.reshape(1, *hw).astype(np.float32)])
    stack = _resample(stack, params["crop"], params["hflip"], params["vflip"], params["angle"])
    new_img, new_masks, new_sup = stack[:n_img], stack[n_img:-1] >= 0.5, stack[-1] >= 0.5
    new_img = _intensity(new_img, new_sup, params, config)

    out_masks = new_masks.reshape(msk.shape).astype(msk.dtype) if masks is not None else None
    return Augmented(image=_like(new_img.reshape(img.shape).astype(np.float32), img_ref),
                     masks=_like(out_masks, msk_ref) if masks is not None else None,
                     support=_like(new_sup.astype(np.float32) if support is None
                                   else new_sup.astype(sup.dtype), sup_ref),
                     params=params)

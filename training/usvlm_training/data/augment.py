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

    @classmethod
    def none(cls) -> "AugmentConfig":
        return cls(crop_p=0.0, hflip_p=0.0, vflip_p=0.0, intensity_p=0.0, depth_p=0.0,
                   speckle_p=0.0, blur_p=0.0, zoom_out_p=0.0)


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
    return params


def _resample(stack: np.ndarray, crop: tuple[float, float, float, float] | None, hflip: bool,
              vflip: bool) -> np.ndarray:
    """(K, H, W) float -> the crop (top, left, height, width) scaled back to (H, W), flipped."""
    k, h, w = stack.shape
    if crop is not None:
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
    n_img = chw.shape[0]
    stack = np.concatenate([chw, stack_masks.astype(np.float32), sup.reshape(1, *hw).astype(np.float32)])
    stack = _resample(stack, params["crop"], params["hflip"], params["vflip"])
    new_img, new_masks, new_sup = stack[:n_img], stack[n_img:-1] >= 0.5, stack[-1] >= 0.5
    new_img = _intensity(new_img, new_sup, params, config)

    out_masks = new_masks.reshape(msk.shape).astype(msk.dtype) if masks is not None else None
    return Augmented(image=_like(new_img.reshape(img.shape).astype(np.float32), img_ref),
                     masks=_like(out_masks, msk_ref) if masks is not None else None,
                     support=_like(new_sup.astype(np.float32) if support is None
                                   else new_sup.astype(sup.dtype), sup_ref),
                     params=params)

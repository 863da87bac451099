"""Array layout between Slicer volume nodes and `USImage` (pure functions, tested outside Slicer).

`slicer.util.arrayFromVolume` gives [K, J, I] for scalar volumes and [K, J, I, C] for vector (RGB)
volumes. A 2D image is a volume with K = 1; a cine loaded as a volume has its frames along K.
"""

from __future__ import annotations

import numpy as np

from usvlm.errors import InputError
from usvlm.io.geometry import Geometry
from usvlm.io.image import ImageInfo, USImage


def image_from_volume_array(array: np.ndarray, ijk_to_ras: np.ndarray, *, is_vector: bool,
                            name: str | None = None, calibrated: bool) -> USImage:
    """A `USImage` from a volume node's array and IJK-to-RAS matrix. `calibrated` says whether the
    matrix's spacing was measured (no default: a placeholder 1 mm must never pass as one)."""
    array = np.asarray(array)
    expected = 4 if is_vector else 3
    if array.ndim != expected:
        raise InputError(name, f"volume array of shape {array.shape}: expected {expected} dimensions")
    if is_vector and array.shape[-1] != 3:
        raise InputError(name, f"vector volume with {array.shape[-1]} components; expected RGB (3)")
    frames = array.shape[0]
    pixels = array[0] if frames == 1 else array
    info = ImageInfo(path=name, format="slicer-volume", spacing_source="image_header",
                     photometric="RGB" if is_vector else "MONOCHROME2")
    return USImage(pixels=np.ascontiguousarray(pixels),
                   geometry=Geometry.from_ijk_to_ras(ijk_to_ras, calibrated=calibrated), info=info,
                   is_rgb=is_vector, is_cine=frames > 1)


def mask_to_volume_array(mask: np.ndarray) -> np.ndarray:
    """A (H, W) or (T, H, W) mask as the [K, J, I] uint8 array of a labelmap / segment."""
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[np.newaxis]
    if mask.ndim != 3:
        raise ValueError(f"mask must be (H, W) or (T, H, W), got {mask.shape}")
    return mask.astype(np.uint8)


def frames_to_volume_array(mask: np.ndarray, frames: list[int], total_frames: int) -> np.ndarray:
    """Masks of the segmented `frames` of an image with `total_frames` frames as the [K, J, I]
    uint8 array of the whole image: a run on one frame of a cine lands on that frame's slice."""
    stack = mask_to_volume_array(mask)
    if len(frames) != stack.shape[0]:
        raise ValueError(f"{stack.shape[0]} mask frame(s) for {len(frames)} segmented frame(s)")
    if list(frames) == list(range(total_frames)):
        return stack
    out = np.zeros((total_frames, *stack.shape[1:]), dtype=np.uint8)
    out[list(frames)] = stack
    return out

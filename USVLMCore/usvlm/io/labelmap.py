"""Labelmap volumes (NRRD, NIfTI, MHA through SimpleITK): segment n has label value n.

The labelmap is always written as a 3D volume (one slice for a 2D image) so the full geometry
(origin, direction, spacing) survives. Where segments overlap, the later segment wins: a labelmap
holds one label per voxel; use .seg.nrrd to keep overlaps.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from usvlm.errors import InputError
from usvlm.io.atomic import atomic_output
from usvlm.io.geometry import Geometry
from usvlm.io.segmentation import Segment, stacked_frames


def label_array(segments: Sequence[Segment]) -> np.ndarray:
    """(T, H, W) label values 1..N (0 = background), uint8 or uint16 as the count needs."""
    stack = stacked_frames(segments)
    dtype = np.uint8 if len(segments) < 256 else np.uint16
    labels = np.zeros(stack.shape[:3], dtype=dtype)
    for value in range(1, len(segments) + 1):
        labels[stack[..., value - 1]] = value
    return labels


def write_labelmap(path: str | os.PathLike[str], segments: Sequence[Segment], geometry: Geometry) -> Path:
    """Write a labelmap volume with the source geometry; the format follows the file name."""
    image = sitk.GetImageFromArray(label_array(segments))  # numpy [k, j, i] -> ITK (i, j, k)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin_lps)
    image.SetDirection(tuple(geometry.direction_lps.reshape(-1)))
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return Path(path)


def read_labelmap(path: str | os.PathLike[str]) -> tuple[np.ndarray, Geometry]:
    """Read a labelmap as a (T, H, W) array of label values and its geometry."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, f"not a readable labelmap ({str(exc).strip().splitlines()[-1]})") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, "a labelmap must be a 3D single-component volume")
    geometry = Geometry.from_lps(image.GetSpacing(), image.GetOrigin(),
                                 np.reshape(image.GetDirection(), (3, 3)))
    return sitk.GetArrayFromImage(image), geometry

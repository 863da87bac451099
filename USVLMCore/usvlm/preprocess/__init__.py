"""Preprocessing: field of view, overlay suppression and the invertible letterbox transform.

`prepare(image, size)` does all of it; the parts are public for the Slicer module and training.
"""

from usvlm.preprocess.fov import FieldOfView, detect_field_of_view, field_of_view_from_frames, search_region
from usvlm.preprocess.letterbox import LetterboxTransform
from usvlm.preprocess.overlays import detect_overlays, overlay_mask, suppress_overlays
from usvlm.preprocess.pipeline import PreparedImage, prepare

__all__ = [
    "FieldOfView", "LetterboxTransform", "PreparedImage", "detect_field_of_view", "detect_overlays",
    "field_of_view_from_frames", "overlay_mask", "prepare", "search_region", "suppress_overlays",
]

"""Task heads over backbone-independent features: multi-level patch features, image and text
embeddings. See `segmentation` (text-conditioned masks) and `classification`."""

from usvlm.model.heads.classification import (
    ClassificationHead,
    ClsHeadConfig,
    TemperatureScaler,
    ZeroShotClassifier,
)
from usvlm.model.heads.segmentation import SegHeadConfig, TextConditionedSegHead

__all__ = [
    "ClassificationHead",
    "ClsHeadConfig",
    "SegHeadConfig",
    "TemperatureScaler",
    "TextConditionedSegHead",
    "ZeroShotClassifier",
]

"""Training data: samples of three data set layouts, prompts, ultrasound augmentation, torch data
sets (in `torch_dataset`, imported on its own) and few-shot subsets."""

from .augment import AugmentConfig, Augmented, augment_image
from .fewshot import FEW_SHOT_RATIOS, few_shot
from .prompts import Prompt, PromptSampler
from .samples import (LABELS, UNKNOWN_LABEL, Sample, SampleSet, Structure, detect_layout, label_of,
                      load_mask, open_dataset)

__all__ = ["FEW_SHOT_RATIOS", "LABELS", "UNKNOWN_LABEL", "AugmentConfig", "Augmented", "Prompt",
           "PromptSampler", "Sample", "SampleSet", "Structure", "augment_image", "detect_layout",
           "few_shot", "label_of", "load_mask", "open_dataset"]

"""Training data: samples of four data set layouts, prompts, ultrasound augmentation, torch data
sets (in `torch_dataset`, imported on its own) and few-shot subsets."""

from .augment import AUGMENT_PRESETS, AugmentConfig, Augmented, augment_image, augment_preset
from .fewshot import FEW_SHOT_RATIOS, few_shot
from .prompts import Prompt, PromptSampler
from .samples import (LABELS, UNKNOWN_LABEL, Sample, SampleSet, Structure, detect_layout, label_of,
                      load_mask, merge_datasets, open_dataset, open_datasets)

__all__ = ["AUGMENT_PRESETS", "FEW_SHOT_RATIOS", "LABELS", "UNKNOWN_LABEL", "AugmentConfig", "Augmented",
           "Prompt", "PromptSampler", "Sample", "SampleSet", "Structure", "augment_image",
           "augment_preset", "detect_layout", "few_shot", "label_of", "load_mask", "merge_datasets",
           "open_dataset", "open_datasets"]

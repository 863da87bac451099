"""USVLM-Phantom v1: synthetic B-mode ultrasound images with lesion masks and descriptions.

    from usvlm_training.phantom import generate_sample
    sample = generate_sample(seed=0, index=3, size=256)
    sample.image, sample.masks, sample.structures[0]["description"]

Follows the USVLM-Phantom v1 specification (PHANTOM.md); `write_dataset` writes a labelled data set.
VARIETY_CONFIG widens the randomisation beyond the specification's nominal ranges (VarietyRanges:
speckle, gain / TGC, lesion contrast / size / shape, probe geometries) so that a model trained on
these phantoms generalises to other renderers: `write_dataset(..., config=VARIETY_CONFIG)`.
SPEC_CONFIG (for now also DEFAULT_CONFIG) gives the nominal v1 images.
"""

from .config import (DEFAULT_CONFIG, ORGANS, PROBES, SPEC_CONFIG, VARIETY_CONFIG, PhantomConfig,
                     VarietyRanges)
from .dataset import write_dataset
from .sample import GENERATOR, VERSION, PhantomSample, generate_sample
from .structures import KINDS

__all__ = ["DEFAULT_CONFIG", "GENERATOR", "KINDS", "ORGANS", "PROBES", "SPEC_CONFIG", "VARIETY_CONFIG",
           "VERSION", "PhantomConfig", "PhantomSample", "VarietyRanges", "generate_sample",
           "write_dataset"]

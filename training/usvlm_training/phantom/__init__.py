"""USVLM-Phantom v1: synthetic B-mode ultrasound images with lesion masks and descriptions.

    from usvlm_training.phantom import generate_sample
    sample = generate_sample(seed=0, index=3, size=256)
    sample.image, sample.masks, sample.structures[0]["description"]

Follows the USVLM-Phantom v1 specification (PHANTOM.md); `write_dataset` writes a labelled data set.
"""

from .config import DEFAULT_CONFIG, ORGANS, PROBES, PhantomConfig
from .dataset import write_dataset
from .sample import GENERATOR, VERSION, PhantomSample, generate_sample
from .structures import KINDS

__all__ = ["DEFAULT_CONFIG", "GENERATOR", "KINDS", "ORGANS", "PROBES", "VERSION", "PhantomConfig",
           "PhantomSample", "generate_sample", "write_dataset"]

"""The bundled default model: installed, loadable offline, and reproducing its golden masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.io

from usvlm.engine import Segmenter
from usvlm.io import read_image, read_seg_nrrd
from usvlm.model.registry import DEFAULT_MODEL_NAME, resolve_model
from usvlm.model.vlm import load_model

SAMPLES = Path(__file__).resolve().parents[1] / "Resources" / "Samples"
GOLDEN = SAMPLES / "phantom_breast_us_golden.seg.nrrd"
PROMPTS = ["breast mass", "cyst"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(resolve_model(None), device="cpu")


def test_default_model_is_installed_with_provenance():
    directory = resolve_model(None)
    assert directory.name == DEFAULT_MODEL_NAME
    model = load_model(directory)
    assert model.backbone.adapter_config.kind == "mona"
    assert model.cls_head is not None and model.class_names == ["benign", "malignant"]
    assert sum(f.stat().st_size for f in directory.iterdir()) < 20 * 1024**2  # small enough to commit


def test_golden_masks_on_the_bundled_sample(segmenter):
    """Regression: the core reproduces the stored masks (the Slicer self-test checks the same)."""
    output = segmenter.segment(read_image(SAMPLES / "phantom_breast_us.dcm"), PROMPTS)
    golden = read_seg_nrrd(GOLDEN).segments
    assert [s.name for s in golden] == [r.prompt.name for r in output.results]
    for result, stored in zip(output.results, golden):
        mask = stored.mask[0] if stored.mask.ndim == 3 else stored.mask
        assert dice(result.mask, mask) >= 0.99


def test_sample_mass_matches_its_phantom_ground_truth(segmenter):
    """Not a regression but quality: the mass of the (unseen) sample phantom is found."""
    output = segmenter.segment(read_image(SAMPLES / "phantom_breast_us.dcm"), "breast mass")
    truth = skimage.io.imread(SAMPLES / "phantom_breast_us_mask.png") > 0
    assert dice(output.results[0].mask, truth) >= 0.7


def test_sample_mass_is_classified_malignant(segmenter):
    truth = skimage.io.imread(SAMPLES / "phantom_breast_us_mask.png") > 0
    probs = segmenter.classify(read_image(SAMPLES / "phantom_breast_us.dcm"), truth)
    assert probs["malignant"] > 0.5  # the sample's mass is a malignant phantom mass

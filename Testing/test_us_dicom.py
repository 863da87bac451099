"""The project's own US DICOM writer (samples, fixtures) and the bundled sample."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import skimage.io

from usvlm.io import read_image
from usvlm_training.phantom import generate_sample
from usvlm_training.us_dicom import write_us_dicom

SAMPLES = Path(__file__).resolve().parents[1] / "Resources" / "Samples"


def _errors(dciodvfy: str, path: Path) -> list[str]:
    out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


@pytest.mark.parametrize("frames", [1, 4])
def test_phantom_as_us_dicom_reads_back_calibrated(tmp_path, dciodvfy, frames):
    sample = generate_sample(3, 1, size=256, probe="linear")
    pixels = np.stack([sample.image] * frames) if frames > 1 else sample.image
    path = write_us_dicom(tmp_path / "p.dcm", pixels, (sample.spacing_mm, sample.spacing_mm),
                          region=(0, 0, 255, 255), seed=3)
    assert _errors(dciodvfy, path) == []
    image = read_image(path)
    assert image.frames == frames and image.info.spacing_source == "ultrasound_region"
    assert image.geometry.spacing_x == pytest.approx(sample.spacing_mm)
    np.testing.assert_array_equal(image.as_frames()[0], sample.image)


def test_bundled_sample_is_calibrated_and_mask_fits():
    image = read_image(SAMPLES / "phantom_breast_us.dcm")
    mask = skimage.io.imread(SAMPLES / "phantom_breast_us_mask.png")
    assert image.geometry.calibrated and image.info.field_of_view_source == "ultrasound_region"
    assert mask.shape == image.frame_shape
    inside = image.pixels[mask > 0].mean()
    # The sample's first structure is a markedly hypoechoic (malignant) mass.
    assert inside < 0.7 * image.pixels[image.pixels > 0].mean()

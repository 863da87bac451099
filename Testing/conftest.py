"""Shared fixtures: the real ultrasound DICOM files that pydicom and pydicom-data ship, and a tiny
saved model for the tests that start a real engine process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

# Test runs must never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _data_store() -> Path:
    import data_store  # the pydicom-data package

    return Path(data_store.__file__).parent / "data"


def us_file(name: str) -> Path:
    """Path of a shipped US DICOM file by name (pydicom first, then pydicom-data)."""
    found = get_testdata_file(name)
    if found:
        return Path(found)
    path = _data_store() / name
    if not path.exists():
        raise FileNotFoundError(name)
    return path


# Every ultrasound file shipped by pydicom and pydicom-data: name -> (frames, rows, columns, rgb,
# spacing_source). Checked against the files' headers.
US_FILES = {
    "examples_ybr_color.dcm": (30, 240, 320, True, "ultrasound_region"),
    "examples_palette.dcm": (1, 350, 800, True, "ultrasound_region"),
    "examples_rgb_color.dcm": (1, 240, 320, True, "none"),
    "examples_jpeg2k.dcm": (1, 480, 640, True, "none"),
    "US1_UNCR.dcm": (1, 480, 640, True, "none"),
    "US1_UNCI.dcm": (1, 480, 640, True, "none"),
    "US1_J2KR.dcm": (1, 480, 640, True, "none"),
    "US1_J2KI.dcm": (1, 480, 640, True, "none"),
    "gdcm-US-ALOKA-16.dcm": (1, 480, 640, True, "ultrasound_region"),
    "gdcm-US-ALOKA-16_big.dcm": (1, 480, 640, True, "ultrasound_region"),
    "OBXXXX1A.dcm": (1, 600, 800, True, "ultrasound_region"),
    "OBXXXX1A_expb.dcm": (1, 600, 800, True, "ultrasound_region"),
    "OBXXXX1A_rle.dcm": (1, 600, 800, True, "ultrasound_region"),
    "OBXXXX1A_2frame.dcm": (2, 600, 800, True, "ultrasound_region"),
    "OBXXXX1A_expb_2frame.dcm": (2, 600, 800, True, "ultrasound_region"),
    "OBXXXX1A_rle_2frame.dcm": (2, 600, 800, True, "ultrasound_region"),
    "color3d_jpeg_baseline.dcm": (120, 480, 640, True, "ultrasound_region"),
    "JPGLosslessP14SV1_1s_1f_8b.dcm": (1, 768, 1024, False, "ultrasound_region"),
    "color-pl.dcm": (1, 120, 256, True, "none"),
    "color-px.dcm": (1, 120, 256, True, "none"),
    "ExplVR_BigEnd.dcm": (1, 60, 80, True, "none"),
}


@pytest.fixture
def dciodvfy() -> str:
    """Path of dicom3tools' validator; CI (USVLM_REQUIRE_DCIODVFY=1) fails rather than skips."""
    path = shutil.which("dciodvfy")
    if path is None:
        if os.environ.get("USVLM_REQUIRE_DCIODVFY"):
            pytest.fail("dciodvfy (Debian package dicom3tools) is required but not installed")
        pytest.skip("dciodvfy not installed (Debian package dicom3tools)")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:  # noqa: ANN001
    """A tiny model (random weights) saved as a real model directory, one per test module."""
    from models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")

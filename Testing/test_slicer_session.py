"""The engine's session (prompt choices, preview, live refine), Slicer volume layout, cohort export."""

from __future__ import annotations

import numpy as np
import pytest

from usvlm.engine import PromptResult, SegmentationOutput
from usvlm.errors import InputError
from usvlm.io.geometry import Geometry
from usvlm.io.image import USImage
from usvlm.io.volume_arrays import frames_to_volume_array, image_from_volume_array
from usvlm.postprocess import PostprocessOptions
from usvlm.session import (InteractiveSession, PixelPoint, RefineSettings, completions, model_summary,
                           organ_choices, preview_prompts, presets)
from usvlm.text.banks import default_banks
from usvlm.text.resolve import PromptResolver


# -- parameters, prompts -------------------------------------------------------------------------

def test_completions_presets_and_organs_come_from_the_banks():
    banks = default_banks()
    breast = banks.for_organ("breast")
    words = completions(banks, "breast")
    first = breast.structures[0]
    assert words[0] == first.name
    assert set(first.synonyms) <= set(words)
    assert len({w.casefold() for w in words}) == len(words)
    # Other organs' names still complete (the organ's bank first, then the others).
    thyroid_names = [s.name for s in banks.for_organ("thyroid").structures]
    assert words.index(thyroid_names[0]) > words.index(first.name)
    assert presets(banks, "breast") == [s.name for s in breast.structures]
    assert presets(banks, "") == [s.name for s in banks.for_organ(None).structures]
    ids = [organ_id for organ_id, _ in organ_choices(banks)]
    assert ids[0] == "generic" and set(ids) == set(banks.banks)


def test_preview_gives_name_colour_and_slicer_terminology():
    banks = default_banks()
    structure = banks.for_organ("breast").structures[0]
    synonym = structure.synonyms[0] if structure.synonyms else structure.name
    previews = preview_prompts(f"{synonym}; something never seen", banks, "breast")
    assert previews[0].name == structure.name
    assert previews[0].matched_by in ("exact", "synonym")
    assert previews[0].terminology == structure.terminology.to_slicer_string()
    assert previews[0].color == pytest.approx(structure.color)
    assert previews[1].matched_by == "none" and previews[1].name == "something never seen"
    assert "->" in previews[0].describe()


# -- Slicer array layout and geometry --------------------------------------------------------------

def _matrix(direction, spacing, origin):
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction, float) * np.asarray(spacing, float)
    m[:3, 3] = origin
    return m


ROTATED = [[0, -1, 0], [-1, 0, 0], [0, 0, 1]]  # axes swapped and flipped


@pytest.mark.parametrize("direction", [np.diag([-1, -1, 1]), np.eye(3), ROTATED])
def test_layouts_2d_rgb_cine(direction):
    m = _matrix(direction, (0.2, 0.3, 1.0), (10.0, -5.0, 3.0))
    grey = image_from_volume_array(np.zeros((1, 40, 60), np.uint8), m, is_vector=False, calibrated=True)
    assert (grey.rows, grey.columns, grey.frames, grey.is_rgb) == (40, 60, 1, False)
    rgb = image_from_volume_array(np.zeros((1, 40, 60, 3), np.uint8), m, is_vector=True, calibrated=True)
    assert rgb.is_rgb and rgb.pixels.shape == (40, 60, 3)
    cine = image_from_volume_array(np.zeros((5, 40, 60), np.uint8), m, is_vector=False, calibrated=True)
    assert cine.is_cine and cine.frames == 5
    np.testing.assert_allclose(cine.geometry.ijk_to_ras(), m, atol=1e-12)
    assert cine.geometry.spacing_x == pytest.approx(0.2) and cine.geometry.spacing_y == pytest.approx(0.3)


def test_mask_written_back_lines_up():
    mask = np.zeros((40, 60), bool)
    mask[5:9, 10:20] = True
    out = frames_to_volume_array(mask, [2], 4)
    assert out.shape == (4, 40, 60) and out.dtype == np.uint8
    assert out[2].sum() == mask.sum() and out.sum() == mask.sum()
    np.testing.assert_array_equal(out[2].astype(bool), mask)
    both = frames_to_volume_array(np.stack([mask, ~mask]), [0, 1], 2)
    np.testing.assert_array_equal(both[1].astype(bool), ~mask)
    assert frames_to_volume_array(mask, [0], 1).shape == (1, 40, 60)


# -- live refinement from cached probabilities ---------------------------------------------------

def _output(cine: bool = False) -> SegmentationOutput:
    """Two blobs: a strong one (left) and a weaker one (right), on a 0.5 mm grid."""
    yy, xx = np.mgrid[0:48, 0:64]
    prob = (0.9 * np.exp(-((xx - 16) ** 2 + (yy - 24) ** 2) / 40.0)
            + 0.7 * np.exp(-((xx - 48) ** 2 + (yy - 24) ** 2) / 40.0)).astype(np.float32)
    image = USImage(np.zeros((3, 48, 64) if cine else (48, 64), np.uint8),
                    Geometry.for_pixels(0.5, 0.5), is_cine=cine)
    prob = np.stack([prob] * 3) if cine else prob
    prompt = PromptResolver(default_banks())("cyst")
    options = PostprocessOptions(threshold=0.5)
    from usvlm.postprocess import postprocess

    fov = np.ones((48, 64), bool)
    result = PromptResult(prompt, prob, postprocess(prob, options, (0.5, 0.5), fov), options)
    return SegmentationOutput(image, [0, 1, 2] if cine else [0], [result], fov)


def test_refine_threshold_click_and_summary():
    from usvlm.report import summarize_result

    output = _output()
    session = InteractiveSession()
    session.set_output(output, [summarize_result(r, output) for r in output.results], ["Segment_1"])
    largest = session.refine(0, RefineSettings(threshold=0.5)).mask
    assert largest[24, 16] and not largest[24, 48]  # keep-largest: the strong blob
    clicked = session.refine(0, RefineSettings(threshold=0.5, point=PixelPoint(48, 24, 0))).mask
    assert clicked[24, 48] and not clicked[24, 16]  # the blob under the click
    lower = session.refine(0, RefineSettings(threshold=0.2, point=PixelPoint(48, 24, 0))).mask
    assert lower.sum() > clicked.sum()
    assert session.summaries[0]["measurements"]["area"] == pytest.approx(lower.sum() * 0.25)
    assert session.refine(0, RefineSettings(threshold=0.5, min_area_mm2=1e6)).mask.sum() == 0


def test_refine_click_on_a_cine_frame_only():
    output = _output(cine=True)
    session = InteractiveSession(output)
    mask = session.refine(0, RefineSettings(threshold=0.5, point=PixelPoint(48, 24, 1))).mask
    assert mask[1, 24, 48] and not mask[1, 24, 16]  # clicked frame: the component under the click
    assert mask[0, 24, 16] and not mask[0, 24, 48]  # other frames: the largest
    with pytest.raises(InputError, match="frame"):
        InteractiveSession(_output(cine=False)).refine(0, RefineSettings(point=PixelPoint(1, 1, 2)))
    with pytest.raises(InputError, match="run a prompt"):
        InteractiveSession().refine(0, RefineSettings())


def test_model_summary():
    text = model_summary({"name": "usvlm-default", "backbone": {"id": "ViT-B-16"},
                          "adapter": {"type": "mona"}, "provenance": {"dataset": "phantom"},
                          "metrics": {"val_dice": 0.8123}})
    assert "ViT-B-16" in text and "mona" in text and "phantom" in text and "0.812" in text
    assert "no validation metrics" in model_summary({"name": "x"})


# -- cohort export -------------------------------------------------------------------------------

def test_add_to_cohort_is_read_by_training(tmp_path):
    from usvlm.cohort import add_to_cohort
    from usvlm.io import read_image, read_seg_nrrd
    from usvlm.io.image import ImageInfo
    from usvlm.io.segmentation import Segment

    pixels = np.random.default_rng(0).integers(0, 255, (2, 40, 50), dtype=np.uint8)
    info = ImageInfo(path="/data/DOE^JANE/1.2.840.1234.dcm", dicom_header={"PatientName": "DOE^JANE"})
    image = USImage(pixels, Geometry.for_pixels(0.2, 0.25), info, is_cine=True)
    mask = np.zeros((2, 40, 50), bool)
    mask[1, 10:20, 5:25] = True
    seg = add_to_cohort(tmp_path, image, [Segment("Cyst", mask, (0.1, 0.2, 0.3))], frame=1,
                        label="benign")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert all("DOE" not in n and "1.2.840" not in n for n in names)
    assert seg.name.endswith(".seg.nrrd") and len(names) == 3
    back = read_image(tmp_path / seg.name.replace(".seg.nrrd", ".nrrd"))
    np.testing.assert_array_equal(back.pixels, pixels[1])
    assert back.geometry.spacing_x == pytest.approx(0.2)
    result = read_seg_nrrd(seg)
    np.testing.assert_array_equal(result.segment("Cyst").mask, mask[1])
    assert b"DOE" not in seg.read_bytes() and b"DOE" not in (tmp_path / names[0]).read_bytes()
    # Re-adding the edited sample replaces it; the label file has one row per sample.
    add_to_cohort(tmp_path, image, [Segment("Cyst", mask, (0.1, 0.2, 0.3))], frame=1, label="malignant")
    labels = (tmp_path / "labels.csv").read_text().splitlines()
    assert labels[0] == "image,label" and len(labels) == 2 and labels[1].endswith(",malignant")

    from usvlm_training.data.layouts import ReadOptions, read_slicer

    samples, problems = read_slicer(tmp_path, ReadOptions())
    assert not problems and len(samples) == 1
    assert samples[0].structures[0].malignancy == "malignant"


def test_add_to_cohort_refuses_bad_input(tmp_path, monkeypatch):
    from usvlm.cohort import add_to_cohort
    from usvlm.io.segmentation import Segment

    image = USImage(np.zeros((20, 20), np.uint8), Geometry.for_pixels(0.2, 0.2))
    seg = Segment("A", np.ones((20, 20), bool))
    with pytest.raises(InputError, match="does not exist"):
        add_to_cohort(tmp_path / "missing", image, [seg])
    # An empty folder box (Slicer's path widget gives "") is not the working directory.
    monkeypatch.chdir(tmp_path)
    for empty in ("", "  "):
        with pytest.raises(InputError, match="no cohort folder"):
            add_to_cohort(empty, image, [seg])
    with pytest.raises(InputError, match="label"):
        add_to_cohort(tmp_path, image, [seg], label="maybe")
    with pytest.raises(InputError, match="unique"):
        add_to_cohort(tmp_path, image, [seg, Segment("a", np.ones((20, 20), bool))])
    assert not list(tmp_path.iterdir())

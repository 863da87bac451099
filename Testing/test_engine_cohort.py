""""Add to training cohort" through the engine: the engine makes the sample's files
(`POST /v1/cohort`, `EngineClient.cohort_sample`) and the Slicer side writes them
(`USVLMSegmentLib.cohort_files.write_sample`); the folder then holds exactly what the core's
`add_to_cohort` writes for the same image and masks. A real engine process, no mocks."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from models import save_tiny_model
from test_engine_server import us_like

MODULE = Path(__file__).resolve().parents[1] / "USVLMSegment"
sys.path.insert(0, str(MODULE))  # as Slicer puts qt-scripted-modules on the path

from USVLMSegmentLib.cohort_files import CohortError, write_sample  # noqa: E402
from USVLMSegmentLib.engine_client import (CohortSample, CohortSegment, EngineRefused,  # noqa: E402
                                           ImageData, encode_frame)
from USVLMSegmentLib.engine_process import LocalEngine  # noqa: E402

from usvlm.cohort import add_to_cohort  # noqa: E402
from usvlm.io import read_image, read_seg_nrrd  # noqa: E402
from usvlm.io.geometry import Geometry  # noqa: E402
from usvlm.io.image import USImage  # noqa: E402
from usvlm.io.segmentation import Segment  # noqa: E402
from usvlm.text.terminology import DEFAULT_TERMINOLOGY, Terminology, terminology  # noqa: E402

SPACING = (0.1, 0.25)  # (x, y) mm: not square, so a swapped axis shows
CYST = terminology("cyst").to_slicer_string()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    model = save_tiny_model(tmp_path_factory.mktemp("cohort-model") / "tiny")
    with LocalEngine(sys.executable, model=str(model), device="cpu", extra_args=["--threads", "1"],
                     start_timeout=120, request_timeout=60) as local:
        yield local


def masks_for(shape: tuple[int, ...]) -> list[np.ndarray]:
    first, second = np.zeros(shape, bool), np.zeros(shape, bool)
    first[..., 10:30, 12:40] = True
    second[..., 35:50, 20:60] = True
    return [first, second]


def segments_for(masks: list[np.ndarray]) -> list[CohortSegment]:
    return [CohortSegment("Cyst", (0.1, 0.5, 0.9), CYST, masks[0]),
            CohortSegment("Margin", (1.0, 0.0, 0.0), "", masks[1].astype(np.uint8))]


def core_add(folder, pixels, segments, *, rgb=False, cine=False, frame=0, label=None):  # noqa: ANN001
    """What the core writes for the same image and segments (in-process, no engine)."""
    image = USImage(pixels, Geometry.for_pixels(*SPACING, calibrated=True), is_rgb=rgb, is_cine=cine)
    plain = [Segment(s.name, np.asarray(s.mask, bool), s.color,
                     Terminology.from_slicer(s.terminology) if s.terminology else DEFAULT_TERMINOLOGY)
             for s in segments]
    return add_to_cohort(folder, image, plain, frame=frame, label=label)


def contents(folder) -> dict[str, bytes]:  # noqa: ANN001
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_sample_through_the_engine_equals_the_cores_files(engine, tmp_path):
    pixels = us_like((64, 80), seed=11)
    image = ImageData(pixels, SPACING, True, name="Volume 1")
    segments = segments_for(masks_for((64, 80)))
    ours, core = tmp_path / "slicer", tmp_path / "core"
    ours.mkdir(), core.mkdir()

    sample = engine.cohort_sample(image, segments)
    seg = write_sample(str(ours), sample, "benign")
    assert seg == ours / f"{sample.id}.seg.nrrd" and sample.id.startswith("us-")
    assert [name for name, _ in sample.files] == [f"{sample.id}.nrrd", f"{sample.id}.seg.nrrd"]
    assert core_add(core, pixels, segments, label="benign").name == seg.name
    assert contents(ours) == contents(core)  # byte for byte, labels.csv included
    assert (ours / "labels.csv").read_text() == f"image,label\n{sample.id},benign\n"

    back = read_image(ours / f"{sample.id}.nrrd")  # the spacing the client sent
    np.testing.assert_array_equal(back.pixels, pixels)
    assert (back.geometry.spacing_x, back.geometry.spacing_y) == pytest.approx(SPACING)
    result = read_seg_nrrd(seg)
    assert result.names == ["Cyst", "Margin"]
    np.testing.assert_array_equal(result.segment("Margin").mask, segments[1].mask.astype(bool))
    assert result.segment("Cyst").terminology == Terminology.from_slicer(CYST)

    # Added again (now by image id) with another label, then without one: the row is replaced,
    # then removed; the files are replaced, never duplicated.
    for label in ("malignant", None):
        write_sample(ours, engine.cohort_sample(image, segments), label)
        core_add(core, pixels, segments, label=label)
        assert contents(ours) == contents(core)
    assert len(list(ours.iterdir())) == 3
    assert (ours / "labels.csv").read_text() == "image,label\n"


def test_rgb_image(engine, tmp_path):
    pixels = np.stack([us_like((64, 80), seed=s) for s in (1, 2, 3)], axis=-1)
    segments = segments_for(masks_for((64, 80)))
    ours, core = tmp_path / "slicer", tmp_path / "core"
    ours.mkdir(), core.mkdir()
    write_sample(ours, engine.cohort_sample(ImageData(pixels, SPACING, True, rgb=True), segments), None)
    core_add(core, pixels, segments, rgb=True)
    assert contents(ours) == contents(core)
    back = read_image(next(ours.glob("*[0-9a-f].nrrd")))
    assert back.is_rgb and back.pixels.shape == (64, 80, 3)


@pytest.mark.parametrize("rgb", [False, True])
def test_an_uncalibrated_image_stays_uncalibrated_in_the_cohort(engine, tmp_path, rgb):
    """Honest units in the cohort too: an image without a measured spacing is written with NRRD's
    unknown ("nan") spacing, and read back as uncalibrated (sizes in pixels), never as 1 mm."""
    grey = us_like((64, 80), seed=21)
    pixels = np.stack([grey, grey // 2, grey // 3], axis=-1) if rgb else grey
    segments = segments_for(masks_for((64, 80)))
    sample = engine.cohort_sample(ImageData(pixels, (1.0, 1.0), False, rgb=rgb), segments)
    write_sample(tmp_path, sample, None)
    image_file = tmp_path / sample.files[0][0]
    assert b"spacings: nan nan" in image_file.read_bytes()[:300]
    back = read_image(image_file)
    assert not back.geometry.calibrated and back.info.spacing_source == "none"
    np.testing.assert_array_equal(back.pixels, pixels)
    result = read_seg_nrrd(tmp_path / sample.files[1][0])  # the segments still line up
    np.testing.assert_array_equal(result.segment("Margin").mask, segments[1].mask)


def test_item_of_a_cine(engine, tmp_path):
    pixels = us_like((5, 64, 80), seed=4)
    cine = ImageData(pixels, SPACING, True, cine=True)
    segments = segments_for(masks_for((5, 64, 80)))
    segments[0].mask[3, 40:60, 60:75] = True  # frame 3 differs from the others
    ours, core = tmp_path / "slicer", tmp_path / "core"
    ours.mkdir(), core.mkdir()
    sample = engine.cohort_sample(cine, segments, frame=3)
    write_sample(ours, sample, "malignant")
    core_add(core, pixels, segments, cine=True, frame=3, label="malignant")
    assert contents(ours) == contents(core)
    back = read_image(ours / f"{sample.id}.nrrd")
    np.testing.assert_array_equal(back.pixels, pixels[3])
    np.testing.assert_array_equal(read_seg_nrrd(ours / f"{sample.id}.seg.nrrd").segment("Cyst").mask,
                                  segments[0].mask[3])
    # The frame's own (H, W) masks make the same sample.
    frame_only = [CohortSegment(s.name, s.color, s.terminology, s.mask[3]) for s in segments]
    assert engine.cohort_sample(cine, frame_only, frame=3) == sample
    with pytest.raises(EngineRefused, match="frame 5 is out of range") as caught:
        engine.cohort_sample(cine, segments, frame=5)
    assert caught.value.status == 422
    with pytest.raises(EngineRefused, match=r"'Cyst' is \[3, 64, 80\], the image \[5, 64, 80\]") as caught:
        engine.cohort_sample(cine, [CohortSegment("Cyst", (1, 0, 0), "", segments[0].mask[:3])], frame=3)
    assert caught.value.status == 422


def test_the_engine_refuses_what_does_not_fit(engine):
    image = ImageData(us_like((64, 80), seed=5), SPACING, True)
    masks = masks_for((64, 80))
    off_grid = r"not on the image grid: 'B' is \[64, 79\], the image \[64, 80\]"
    with pytest.raises(EngineRefused, match=off_grid) as caught:
        engine.cohort_sample(image, [CohortSegment("A", (1, 0, 0), "", masks[0]),
                                     CohortSegment("B", (0, 1, 0), "", masks[1][:, :79])])
    assert caught.value.status == 422 and caught.value.kind == "input"
    cases = [([], "no segments"),
             ([CohortSegment("Cyst", (1, 0, 0), "", masks[0]), CohortSegment("cyst", (0, 1, 0), "", masks[1])],
              "unique"),
             ([CohortSegment("A", (1, 0, 0), "not a terminology", masks[0])], "'A': its terminology is not"),
             ([CohortSegment("A", (2, 0, 0), "", masks[0])], "colour"),
             ([CohortSegment("A\nB", (1, 0, 0), "", masks[0])], "one non-empty line")]
    for segments, message in cases:
        with pytest.raises(EngineRefused, match=message) as caught:
            engine.cohort_sample(image, segments)
        assert caught.value.status == 422 and "\n" not in str(caught.value)
    with pytest.raises(EngineRefused, match="at most 7 segments"):
        engine.cohort_sample(image, [CohortSegment(f"S{i}", (1, 0, 0), "", masks[0]) for i in range(8)])
    # A header that names two segments but a frame that carries one mask.
    client = engine._ensure()
    header = {"frame": 0, "image": image.header(with_id=False),
              "segments": [{"name": "A", "color": [1, 0, 0]}, {"name": "B", "color": [0, 1, 0]}]}
    body = encode_frame(header, [("image", image.pixels, "raw"), ("mask0", masks[0], "bits")])
    with pytest.raises(EngineRefused, match=r"2 segment\(s\) need the arrays mask0..mask1") as caught:
        client._frame_call("/v1/cohort", body, None, client._deadline(30))
    assert caught.value.status == 422


def sample_of(sample_id: str, *names: str) -> CohortSample:
    return CohortSample(sample_id, tuple((n, b"NRRD0004\n") for n in names))


def test_write_sample_refuses_user_errors(tmp_path, monkeypatch):
    good = sample_of("us-0123456789abcdef", "us-0123456789abcdef.nrrd", "us-0123456789abcdef.seg.nrrd")
    folder = tmp_path / "cohort"
    folder.mkdir()
    monkeypatch.chdir(folder)  # "" must not become the working directory
    for empty in ("", "  "):
        with pytest.raises(CohortError, match="no cohort folder chosen"):
            write_sample(empty, good, None)
    with pytest.raises(CohortError, match="does not exist"):
        write_sample(tmp_path / "missing", good, None)
    with pytest.raises(CohortError, match="label must be one of benign, malignant"):
        write_sample(folder, good, "maybe")
    assert not list(folder.iterdir()) and not (tmp_path / "missing").exists()
    assert isinstance(CohortError("x"), ValueError)


@pytest.mark.parametrize("sample", [
    sample_of("us-1", "../us-1.nrrd", "us-1.seg.nrrd"),
    sample_of("us-1", "us-1.nrrd", "sub/us-1.seg.nrrd"),
    sample_of("us-1", "us-1.nrrd", "us-1.nrrd"),
    sample_of("us-1", "us-1.nrrd", "us-1.seg.nrrd", "labels.csv"),
    sample_of("us-1", "us-1.nrrd"),
    sample_of("..", "...nrrd", "...seg.nrrd"),
    sample_of("../x", "../x.nrrd", "../x.seg.nrrd"),
    sample_of("/tmp/x", "/tmp/x.nrrd", "/tmp/x.seg.nrrd"),
    sample_of("us-1\\..\\x", "us-1\\..\\x.nrrd", "us-1\\..\\x.seg.nrrd"),
    CohortSample("us-1", (("us-1.nrrd", b""), ("us-1.seg.nrrd", b"x"))),
], ids=["dotdot", "subfolder", "twice", "extra", "one", "dots", "id-dotdot", "absolute", "backslash",
        "empty"])
def test_hostile_file_names_are_refused_and_nothing_is_written(tmp_path, sample):
    folder = tmp_path / "cohort"
    folder.mkdir()
    with pytest.raises(CohortError) as caught:
        write_sample(folder, sample, "benign")
    assert "\n" not in str(caught.value)
    assert not list(folder.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]


def test_files_appear_together_or_not_at_all(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    old = sample_of("us-2", "us-2.nrrd", "us-2.seg.nrrd")
    write_sample(folder, old, "benign")
    (folder / "us-3.seg.nrrd").mkdir()  # in the way of the second file
    with pytest.raises(CohortError, match="cannot write to the cohort folder"):
        write_sample(folder, sample_of("us-3", "us-3.nrrd", "us-3.seg.nrrd"), "malignant")
    assert sorted(p.name for p in folder.iterdir()) == ["labels.csv", "us-2.nrrd", "us-2.seg.nrrd",
                                                        "us-3.seg.nrrd"]
    assert (folder / "labels.csv").read_text() == "image,label\nus-2,benign\n"
    # A replaced sample: new files in place, the old ones gone, no temporary file left.
    new = CohortSample("us-2", (("us-2.nrrd", b"new image"), ("us-2.seg.nrrd", b"new seg")))
    write_sample(folder, new, "malignant")
    assert (folder / "us-2.nrrd").read_bytes() == b"new image"
    assert sorted(p.name for p in folder.iterdir()) == ["labels.csv", "us-2.nrrd", "us-2.seg.nrrd",
                                                        "us-3.seg.nrrd"]
    assert (folder / "labels.csv").read_text() == "image,label\nus-2,malignant\n"


def test_the_writer_is_standard_library_and_python_39():
    """It runs in Slicer's Python (test_slicer_env also imports it there)."""
    ast.parse((MODULE / "USVLMSegmentLib" / "cohort_files.py").read_text(), feature_version=(3, 9))
    code = ("import sys, json; sys.path.insert(0, %r); import USVLMSegmentLib.cohort_files; "
            "print(json.dumps(sorted(sys.modules)))" % str(MODULE))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = {m.split(".")[0] for m in json.loads(out.stdout)}
    assert not loaded & {"numpy", "usvlm", "torch", "SimpleITK", "slicerio", "nrrd"}

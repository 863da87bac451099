"""Writers on real files: .seg.nrrd read back with slicerio, labelmaps with SimpleITK, overlay PNGs,
DICOM SEG checked with dciodvfy and read back with highdicom, and the mask2seg command."""

from __future__ import annotations

import os
import subprocess
import warnings
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import skimage.io
import slicerio
from conftest import us_file

from usvlm.cli import main
from usvlm.errors import InputError, OutputError
from usvlm.io.dicom_seg import build_dicom_seg, write_dicom_seg
from usvlm.io.geometry import Geometry
from usvlm.io.image import ImageInfo, USImage
from usvlm.io.labelmap import read_labelmap, write_labelmap
from usvlm.io.overlay import default_frame, render_overlay, write_overlay_png
from usvlm.io.seg_nrrd import read_seg_nrrd, write_seg_nrrd
from usvlm.io.segmentation import Segment
from usvlm.text.terminology import TERMS, Code, Terminology, organ_target, terminology

# A placement with rotation, odd spacing and an offset, so axis or sign mistakes show.
_ANGLE = np.deg2rad(30)
ROTATED = Geometry(spacing=(0.15, 0.25, 2.0), origin=(10.0, -20.0, 5.0),
                   direction=((np.cos(_ANGLE), -np.sin(_ANGLE), 0.0),
                              (np.sin(_ANGLE), np.cos(_ANGLE), 0.0), (0.0, 0.0, 1.0)))

BREAST_MASS = ("Segmentation category and type - 3D Slicer General Anatomy list"
               "~SCT^49755003^Morphologically Altered Structure~SCT^4147007^Mass~^^"
               "~Anatomic codes - DICOM master list~SCT^76752008^Breast~^^")


def _box(shape: tuple[int, ...], rows: slice, cols: slice, frames: slice = slice(None)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    if len(shape) == 3:
        mask[frames, rows, cols] = True
    else:
        mask[rows, cols] = True
    return mask


def _segments(shape: tuple[int, ...]) -> list[Segment]:
    """Two overlapping segments, the second empty on some frames of a cine."""
    first = _box(shape, slice(5, 20), slice(3, 30))
    second = _box(shape, slice(15, 30), slice(20, 40), frames=slice(1, 3))
    return [Segment("breast mass", first, (0.2, 0.6, 0.9), organ_target("breast")),
            Segment("cyst", second, (1.0, 0.8, 0.0), terminology("cyst", "breast"))]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- terminology --------------------------------------------------------------------------------
def test_terminology_slicer_string_and_round_trip():
    term = organ_target("breast")
    assert term.to_slicer_string() == BREAST_MASS
    assert Terminology.from_slicer(BREAST_MASS) == term
    modified = replace(TERMS["lymph node"], type_modifier=Code("24028007", "Right"))
    assert Terminology.from_slicer(modified.to_slicer_string()) == modified


def test_terminology_codes():
    assert (TERMS["mass"].type.value, TERMS["nodule"].type.value, TERMS["lymph node"].type.value,
            TERMS["tissue"].type.value) == ("4147007", "27925004", "59441001", "85756007")
    assert {k: organ_target(k).anatomic_region and organ_target(k).anatomic_region.value
            for k in ("breast", "thyroid", "lymph node")} == {
        "breast": "76752008", "thyroid": "69748006", "lymph node": "45048000"}
    assert organ_target("prostate").type.value == "41216001"
    codes = organ_target("thyroid").to_highdicom()
    assert (codes.category.value, codes.type.value, codes.anatomic_regions[0].value) == (
        "49755003", "27925004", "69748006")
    assert codes.type.scheme_designator == "SCT"
    with pytest.raises(KeyError, match="unknown organ"):
        organ_target("liver")


# -- .seg.nrrd ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(32, 48), (4, 32, 48)], ids=["2d", "cine"])
def test_seg_nrrd_round_trip_with_slicerio(tmp_path, shape):
    segments = _segments(shape)
    path = write_seg_nrrd(tmp_path / "out.seg.nrrd", segments, ROTATED)
    assert _files(tmp_path) == ["out.seg.nrrd"]

    seg = slicerio.read_segmentation(str(path))
    np.testing.assert_allclose(seg["ijkToLPS"], ROTATED.ijk_to_lps(), atol=1e-9)
    assert seg["voxels"].shape[-3:] == (48, 32, shape[0] if len(shape) == 3 else 1)  # i, j, k
    for expected in segments:
        info = slicerio.segment_from_name(seg, expected.name)
        ijk = slicerio.segment_mask(seg, info)
        assert np.array_equal(ijk.transpose(2, 1, 0), expected.frames)
        np.testing.assert_allclose(info["color"], expected.color)
        assert info["terminology"] == expected.terminology.to_slicer_dict()
    header = path.read_bytes()[:4000].decode("latin-1")
    assert f"TerminologyEntry:{BREAST_MASS}|" in header

    back = read_seg_nrrd(path)
    np.testing.assert_allclose(back.geometry.ijk_to_ras(), ROTATED.ijk_to_ras(), atol=1e-9)
    assert back.names == ["breast mass", "cyst"]
    for got, expected in zip(back.segments, segments):
        assert got.mask.shape == shape and np.array_equal(got.mask, expected.mask)
        assert got.terminology == expected.terminology
        np.testing.assert_allclose(got.color, expected.color)


def test_seg_nrrd_of_image_without_position_sits_where_slicer_puts_the_image(tmp_path):
    geometry = Geometry.for_pixels(0.1, 0.1)
    path = write_seg_nrrd(tmp_path / "a.seg.nrrd", _segments((16, 24))[:1], geometry)
    seg = slicerio.read_segmentation(str(path))
    np.testing.assert_allclose(seg["ijkToLPS"], np.diag([0.1, 0.1, 1.0, 1.0]))


def test_read_seg_nrrd_bad_file(tmp_path):
    bad = tmp_path / "bad.seg.nrrd"
    bad.write_text("not a nrrd")
    with pytest.raises(InputError, match="bad.seg.nrrd"):
        read_seg_nrrd(bad)


# -- labelmap -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(32, 48), (4, 32, 48)], ids=["2d", "cine"])
def test_labelmap_round_trip_with_simpleitk(tmp_path, shape):
    segments = _segments(shape)
    path = write_labelmap(tmp_path / "labels.nrrd", segments, ROTATED)
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(image.GetSpacing(), ROTATED.spacing)
    np.testing.assert_allclose(image.GetOrigin(), ROTATED.origin_lps)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), ROTATED.direction_lps, atol=1e-12)
    labels = sitk.GetArrayFromImage(image)
    expected = np.zeros(labels.shape, np.uint8)
    for value, segment in enumerate(segments, start=1):
        expected[segment.frames] = value  # later segments win where they overlap
    assert np.array_equal(labels, expected)
    labels_back, geometry = read_labelmap(path)
    assert np.array_equal(labels_back, expected)
    np.testing.assert_allclose(geometry.ijk_to_ras(), ROTATED.ijk_to_ras(), atol=1e-9)


# -- overlay ------------------------------------------------------------------------------------
def test_overlay_png_draws_outlines_in_segment_colours(tmp_path):
    rng = np.random.default_rng(0)
    image = USImage(pixels=rng.integers(0, 4000, (32, 48)).astype(np.uint16))
    segments = _segments((32, 48))
    path = write_overlay_png(tmp_path / "look.png", image, segments)
    rgb = skimage.io.imread(path)
    assert rgb.shape == (32, 48, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[5, 10]) == (51, 153, 230)  # top edge of the first box
    assert tuple(rgb[29, 30]) == (255, 204, 0)  # bottom edge of the second box (drawn last)
    assert rgb[12, 12, 0] == rgb[12, 12, 1] == rgb[12, 12, 2]  # inside stays grey
    thick = render_overlay(image, segments, thickness=3)
    assert tuple(thick[4, 10]) == tuple(thick[6, 10]) == (51, 153, 230)


def test_overlay_of_cine_defaults_to_first_frame_with_a_mask():
    pixels = np.full((4, 32, 48, 3), 100, np.uint8)
    image = USImage(pixels=pixels, is_rgb=True, is_cine=True)
    mask = _box((4, 32, 48), slice(5, 20), slice(3, 30), frames=slice(2, 4))
    segments = [Segment("m", mask, (0.0, 1.0, 0.0))]
    assert default_frame(segments) == 2
    rgb = render_overlay(image, segments)
    assert tuple(rgb[5, 10]) == (0, 255, 0)
    assert not (render_overlay(image, segments, frame=0) != 100).any()


# -- DICOM SEG ----------------------------------------------------------------------------------
DICOM_SOURCES = ["examples_ybr_color.dcm", "US1_UNCR.dcm", "examples_palette.dcm"]


def _dicom_case(name: str) -> tuple[pydicom.Dataset, list[Segment]]:
    header = pydicom.dcmread(us_file(name), stop_before_pixels=True)
    frames = header.get("NumberOfFrames")
    shape = (int(frames), header.Rows, header.Columns) if frames else (header.Rows, header.Columns)
    return header, _segments(shape)


@pytest.fixture(scope="module")
def dicom_segs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("seg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom's notes on the sources' patient names
        return {name: write_dicom_seg(folder / f"{name}.seg.dcm", _dicom_case(name)[1],
                                      _dicom_case(name)[0]) for name in DICOM_SOURCES}


@pytest.mark.parametrize("name", DICOM_SOURCES)
def test_dicom_seg_passes_dciodvfy(dciodvfy, dicom_segs, name):
    result = subprocess.run([dciodvfy, str(dicom_segs[name])], capture_output=True, text=True, timeout=60)
    report = (result.stdout + result.stderr).splitlines()
    assert [line for line in report if line.startswith("Error")] == [], "\n".join(report)


@pytest.mark.parametrize("name", DICOM_SOURCES)
def test_dicom_seg_reads_back_with_highdicom(dicom_segs, name):
    header, segments = _dicom_case(name)
    seg = hd.seg.segread(dicom_segs[name])
    assert seg.SegmentationType == "BINARY" and seg.Manufacturer == "USVLM"
    assert (seg.StudyInstanceUID, seg.PatientID) == (header.StudyInstanceUID, header.PatientID)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["breast mass", "cyst"]
    first = seg.get_segment_description(1)
    assert first.segmented_property_type.value == "4147007"
    assert first.anatomic_regions[0].value == "76752008"
    assert first.algorithm_identification[0].AlgorithmName == "USVLM"
    lab = hd.color.CIELabColor.from_rgb(51, 153, 230)
    assert list(first.RecommendedDisplayCIELabValue) == list(lab.value)
    expected = np.stack([s.frames for s in segments], axis=-1)
    if "NumberOfFrames" in header:
        pixels = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=header.SOPInstanceUID,
            source_frame_numbers=list(range(1, int(header.NumberOfFrames) + 1)),
            assert_missing_frames_are_empty=True)
    else:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[header.SOPInstanceUID], assert_missing_frames_are_empty=True)
    assert np.array_equal(pixels.astype(bool), expected)


def test_dicom_seg_needs_dicom_source(tmp_path):
    image = USImage(pixels=np.zeros((32, 48), np.uint8), info=ImageInfo(path="scan.png", format="png"))
    with pytest.raises(InputError, match="scan.png: DICOM SEG needs a DICOM source image"):
        write_dicom_seg(tmp_path / "x.dcm", _segments((32, 48)), image)
    assert _files(tmp_path) == []


def test_dicom_seg_refuses_masks_of_another_size():
    header, _ = _dicom_case("US1_UNCR.dcm")
    with pytest.raises(InputError, match="do not match the DICOM image"):
        build_dicom_seg(_segments((32, 48)), header)


# -- atomic output ------------------------------------------------------------------------------
@pytest.mark.parametrize("write", [
    lambda p, s: write_seg_nrrd(p, s, ROTATED),
    lambda p, s: write_labelmap(p, s, ROTATED),
    lambda p, s: write_overlay_png(p.with_suffix(".png"), USImage(pixels=np.zeros((32, 48), np.uint8)), s),
], ids=["seg_nrrd", "labelmap", "overlay"])
def test_missing_output_folder_is_an_output_error(tmp_path, write):
    with pytest.raises(OutputError, match="does not exist"):
        write(tmp_path / "missing" / "out.seg.nrrd", _segments((32, 48)))
    assert _files(tmp_path) == []


def test_dicom_seg_to_missing_folder_is_an_output_error(tmp_path):
    header, segments = _dicom_case("US1_UNCR.dcm")
    with pytest.raises(OutputError, match="does not exist"):
        write_dicom_seg(tmp_path / "missing" / "seg.dcm", segments, header)
    assert _files(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_folder_is_an_output_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            write_seg_nrrd(folder / "out.seg.nrrd", _segments((32, 48)), ROTATED)
        assert _files(folder) == []
    finally:
        folder.chmod(0o755)


def test_failure_inside_writer_leaves_no_file(tmp_path, monkeypatch):
    def half_write(file, segmentation, **kwargs):
        Path(file).write_bytes(b"NRRD0004\npartial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(slicerio, "write_segmentation", half_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_seg_nrrd(tmp_path / "out.seg.nrrd", _segments((32, 48)), ROTATED)
    assert _files(tmp_path) == []


# -- usvlm mask2seg ----------------------------------------------------------------------------
@pytest.fixture
def png_pair(tmp_path) -> tuple[Path, Path]:
    reference = tmp_path / "scan.png"
    skimage.io.imsave(reference, np.random.default_rng(1).integers(0, 255, (32, 48), dtype=np.uint8),
                      check_contrast=False)
    mask = tmp_path / "mask.png"
    skimage.io.imsave(mask, _box((32, 48), slice(5, 20), slice(3, 30)).astype(np.uint8) * 255,
                      check_contrast=False)
    return reference, mask


def test_mask2seg_png(tmp_path, png_pair, capsys):
    reference, mask = png_pair
    out = tmp_path / "out.seg.nrrd"
    assert main(["mask2seg", str(mask), "--reference", str(reference), "--organ", "thyroid",
                 "--color", "255,0,0", "-o", str(out)]) == 0
    seg = slicerio.read_segmentation(str(out))
    (info,) = seg["segments"]
    assert info["name"] == "Nodule" and info["color"] == [1.0, 0.0, 0.0]
    assert info["terminology"]["anatomicRegion"] == ["SCT", "69748006", "Thyroid"]
    expected = _box((32, 48), slice(5, 20), slice(3, 30))
    assert np.array_equal(slicerio.segment_mask(seg, info)[..., 0].T, expected)
    assert "wrote" in capsys.readouterr().out


def test_mask2seg_label_image_gives_one_segment_per_value(tmp_path, png_pair):
    reference, _ = png_pair
    labels = np.zeros((32, 48), np.uint8)
    labels[2:8, 2:8], labels[20:30, 20:40] = 1, 2
    mask = tmp_path / "labels.png"
    skimage.io.imsave(mask, labels, check_contrast=False)
    out = tmp_path / "out.seg.nrrd"
    assert main(["mask2seg", str(mask), "--reference", str(reference), "--name", "lesion",
                 "-o", str(out)]) == 0
    result = read_seg_nrrd(out)
    assert result.names == ["lesion 1", "lesion 2"]
    assert np.array_equal(result.segments[1].mask, labels == 2)


def test_mask2seg_dicom_reference_writes_dicom_seg(tmp_path, dciodvfy):
    source = us_file("US1_UNCR.dcm")
    mask = tmp_path / "mask.png"
    # An RGB mask with equal channels is accepted as grey.
    grey = _box((480, 640), slice(100, 200), slice(150, 300)).astype(np.uint8) * 255
    skimage.io.imsave(mask, np.repeat(grey[..., None], 3, axis=-1), check_contrast=False)
    out, dcm = tmp_path / "out.seg.nrrd", tmp_path / "out.dcm"
    assert main(["mask2seg", str(mask), "--reference", str(source), "--organ", "breast",
                 "-o", str(out), "--dicom-seg", str(dcm)]) == 0
    report = subprocess.run([dciodvfy, str(dcm)], capture_output=True, text=True).stderr
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
    seg = hd.seg.segread(dcm)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID])
    assert np.array_equal(pixels[0, ..., 0].astype(bool), grey > 0)
    assert read_seg_nrrd(out).segments[0].name == "Mass"


def _fails_without_output(args: list[str], folder: Path, capsys, message: str) -> None:
    before = _files(folder)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert _files(folder) == before


def test_mask2seg_size_mismatch(tmp_path, png_pair, capsys):
    reference, _ = png_pair
    mask = tmp_path / "small.png"
    skimage.io.imsave(mask, np.full((16, 16), 255, np.uint8), check_contrast=False)
    _fails_without_output(["mask2seg", str(mask), "--reference", str(reference), "-o",
                           str(tmp_path / "out.seg.nrrd")], tmp_path, capsys, "mask is 16 x 16 pixels")


def test_mask2seg_colour_mask_refused(tmp_path, png_pair, capsys):
    reference, _ = png_pair
    mask = tmp_path / "colour.png"
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[5:10, 5:10] = (255, 0, 0)
    skimage.io.imsave(mask, rgb, check_contrast=False)
    _fails_without_output(["mask2seg", str(mask), "--reference", str(reference), "-o",
                           str(tmp_path / "out.seg.nrrd")], tmp_path, capsys, "must be grey")


def test_mask2seg_dicom_seg_needs_dicom_reference(tmp_path, png_pair, capsys):
    reference, mask = png_pair
    _fails_without_output(["mask2seg", str(mask), "--reference", str(reference), "-o",
                           str(tmp_path / "out.seg.nrrd"), "--dicom-seg", str(tmp_path / "o.dcm")],
                          tmp_path, capsys, "DICOM SEG needs a DICOM source image")


def test_mask2seg_dicom_seg_failure_removes_seg_nrrd(tmp_path, capsys, monkeypatch):
    import usvlm.io.dicom_seg as dicom_seg

    def failing_save(path, seg):
        raise OutputError(path, "simulated write failure")

    monkeypatch.setattr(dicom_seg, "save_dicom_seg", failing_save)
    mask = tmp_path / "mask.png"
    skimage.io.imsave(mask, _box((480, 640), slice(10, 50), slice(10, 50)).astype(np.uint8),
                      check_contrast=False)
    _fails_without_output(["mask2seg", str(mask), "--reference", str(us_file("US1_UNCR.dcm")),
                           "-o", str(tmp_path / "out.seg.nrrd"), "--dicom-seg", str(tmp_path / "o.dcm")],
                          tmp_path, capsys, "simulated write failure")


def test_mask2seg_cine_reference_with_volume_mask(tmp_path, dciodvfy):
    from usvlm.io.readers import read_image

    source = us_file("examples_ybr_color.dcm")
    reference = read_image(source)
    masks = _box((30, 240, 320), slice(40, 120), slice(60, 200), frames=slice(5, 12)).astype(np.uint8)
    mask = tmp_path / "cine_mask.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(masks), str(mask))
    out, dcm = tmp_path / "cine.seg.nrrd", tmp_path / "cine.dcm"
    assert main(["mask2seg", str(mask), "--reference", str(source), "-o", str(out),
                 "--dicom-seg", str(dcm)]) == 0
    seg = slicerio.read_segmentation(str(out))
    np.testing.assert_allclose(seg["ijkToLPS"], reference.geometry.ijk_to_lps(), atol=1e-9)
    assert np.array_equal(slicerio.segment_mask(seg, seg["segments"][0]).transpose(2, 1, 0), masks > 0)
    report = subprocess.run([dciodvfy, str(dcm)], capture_output=True, text=True).stderr
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
    pixels = hd.seg.segread(dcm).get_pixels_by_source_frame(
        source_sop_instance_uid=reference.info.dicom_header.SOPInstanceUID,
        source_frame_numbers=list(range(1, 31)), assert_missing_frames_are_empty=True)
    assert np.array_equal(pixels[..., 0].astype(bool), masks > 0)


def test_deidentified_dicom_seg_keeps_references_only(tmp_path, dciodvfy):
    import subprocess

    import highdicom as hd
    import numpy as np
    import pydicom
    from conftest import us_file

    from usvlm.io import Segment, read_image, write_dicom_seg

    ds = pydicom.dcmread(us_file("US1_UNCR.dcm"))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane^Quincy", "PID-8675309", "19700101"
    ds.AccessionNumber = "ACC-424242"
    src = tmp_path / "named.dcm"
    ds.save_as(src)
    image = read_image(src)
    mask = np.zeros(image.frame_shape, bool)
    mask[100:200, 200:300] = True
    out = write_dicom_seg(tmp_path / "seg.dcm", [Segment("Mass", mask)], image, deidentify=True)
    raw = out.read_bytes()
    for secret in (b"Doe^Jane", b"PID-8675309", b"19700101", b"ACC-424242"):
        assert secret not in raw
    seg = hd.seg.segread(out)
    assert seg.PatientIdentityRemoved == "YES"
    assert seg.StudyInstanceUID == ds.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        ds.SOPInstanceUID
    report = subprocess.run([dciodvfy, str(out)], capture_output=True, text=True)
    assert not [ln for ln in (report.stdout + report.stderr).splitlines() if ln.startswith("Error")]

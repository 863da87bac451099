"""Readers on real files: every US DICOM that pydicom and pydicom-data ship, plus NRRD/NIfTI/PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import skimage.io
from conftest import US_FILES, _data_store, us_file
from pydicom.data import get_testdata_files

from usvlm.io.dicom_reader import read_dicom
from usvlm.io.readers import read_image


def _all_shipped_us_files() -> set[str]:
    names = set()
    candidates = [Path(p) for p in get_testdata_files("*")] + list(_data_store().glob("*.dcm"))
    for path in candidates:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - non-DICOM files in the data folders
            continue
        if ds.get("Modality") == "US" and "PixelData" in pydicom.dcmread(path):
            names.add(path.name)
    return names


def test_fixture_table_covers_every_shipped_us_file():
    assert _all_shipped_us_files() <= set(US_FILES)


@pytest.mark.parametrize("name", sorted(US_FILES))
def test_reads_shipped_us_dicom(name):
    frames, rows, columns, rgb, spacing_source = US_FILES[name]
    image = read_image(us_file(name))
    assert (image.frames, image.rows, image.columns, image.is_rgb) == (frames, rows, columns, rgb)
    assert image.is_cine == (frames > 1)
    assert image.info.spacing_source == spacing_source
    assert image.geometry.calibrated == (spacing_source != "none")
    assert image.pixels.dtype == np.uint8
    assert image.pixels.std() > 1.0, "decoded pixels must not be blank"
    if spacing_source == "none":
        assert image.geometry.spacing[:2] == (1.0, 1.0)
        assert any("not calibrated" in w for w in image.info.warnings)


def test_ybr_cine_region_partly_outside_is_clipped_with_warning():
    image = read_image(us_file("examples_ybr_color.dcm"))
    assert image.info.frame_time_ms == pytest.approx(33.333, abs=1e-3)
    assert image.info.field_of_view == (84, 31, 319, 239)
    assert image.geometry.spacing_x == pytest.approx(0.5104970559477806)
    assert any("extends beyond" in w for w in image.info.warnings)


def test_multi_region_files_pick_the_2d_tissue_region_in_cm():
    aloka = read_image(us_file("gdcm-US-ALOKA-16.dcm"))
    # Three regions: two B-mode panes (cm) and one with no physical units.
    assert len(aloka.info.regions) == 3
    assert aloka.geometry.spacing_x == pytest.approx(0.3826530650258064)
    assert aloka.geometry.spacing_y == pytest.approx(0.3826530650258064)
    assert aloka.info.field_of_view == (32, 24, 335, 415)

    palette = read_image(us_file("examples_palette.dcm"))
    # A B-mode region (cm) and a spectral Doppler strip (seconds / none): the B-mode one wins.
    assert [r.spatial_format for r in palette.info.regions] == [1, 4]
    assert palette.geometry.spacing_x == pytest.approx(0.2622878766196998)
    assert palette.info.field_of_view == (120, 60, 799, 349)


@pytest.mark.parametrize("little, big", [("gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"),
                                         ("OBXXXX1A.dcm", "OBXXXX1A_expb.dcm"),
                                         ("OBXXXX1A.dcm", "OBXXXX1A_rle.dcm")])
def test_palette_encodings_decode_identically(little, big):
    a = read_image(us_file(little)).pixels
    b = read_image(us_file(big)).pixels
    np.testing.assert_array_equal(a, b)


def test_jpeg2000_lossless_matches_uncompressed():
    raw = read_image(us_file("US1_UNCR.dcm")).pixels
    j2k = read_image(us_file("US1_J2KR.dcm")).pixels
    np.testing.assert_array_equal(raw, j2k)


def test_ybr_jpeg_baseline_converted_to_rgb():
    image = read_image(us_file("examples_ybr_color.dcm"))
    # B-mode content is grey: after YBR->RGB conversion the channels agree closely in the scan area.
    x0, y0, x1, y1 = image.info.field_of_view
    roi = image.pixels[0, y0:y1, x0:x1].astype(int)
    assert np.median(np.abs(roi[..., 0] - roi[..., 1])) <= 3


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(us_file("US1_UNCR.dcm"))
    grey = ds.pixel_array[..., 0].copy()
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.SamplesPerPixel = 1
    del ds.PlanarConfiguration
    ds.PixelData = grey.tobytes()
    ds.save_as(tmp_path / "mono1.dcm")
    image = read_dicom(tmp_path / "mono1.dcm")
    np.testing.assert_array_equal(image.pixels, grey.max() - grey)


def test_pixel_spacing_used_when_no_region(tmp_path):
    ds = pydicom.dcmread(us_file("US1_UNCR.dcm"))
    ds.PixelSpacing = [0.2, 0.1]  # row spacing (y), column spacing (x)
    ds.save_as(tmp_path / "ps.dcm")
    image = read_image(tmp_path / "ps.dcm")
    assert image.info.spacing_source == "pixel_spacing"
    assert (image.geometry.spacing_x, image.geometry.spacing_y) == (0.1, 0.2)
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.3, 0.3]
    ds.save_as(tmp_path / "ips.dcm")
    assert read_image(tmp_path / "ips.dcm").info.spacing_source == "imager_pixel_spacing"


def test_dicom_header_kept_without_pixel_data():
    image = read_image(us_file("US1_UNCR.dcm"))
    assert image.info.dicom_header is not None
    assert "PixelData" not in image.info.dicom_header
    assert image.info.dicom_header.SOPInstanceUID


def _write_itk(path: Path, array: np.ndarray, spacing, *, vector: bool = False, origin=None) -> None:
    img = sitk.GetImageFromArray(array, isVector=vector)
    img.SetSpacing(spacing)
    if origin is not None:
        img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".nii", ".mha"])
def test_single_slice_volume_read_as_2d(tmp_path, suffix):
    array = np.random.default_rng(1).integers(0, 255, size=(1, 50, 70), dtype=np.uint8)
    path = tmp_path / f"slice{suffix}"
    _write_itk(path, array, (0.15, 0.2, 1.0), origin=(10.0, 20.0, 5.0))
    image = read_image(path)
    assert image.pixels.shape == (50, 70) and not image.is_cine
    np.testing.assert_array_equal(image.pixels, array[0])
    assert image.geometry.spacing[:2] == pytest.approx((0.15, 0.2))
    assert image.info.spacing_source == "image_header"
    # LPS origin (10, 20, 5) is RAS (-10, -20, 5).
    assert image.geometry.origin == pytest.approx((-10.0, -20.0, 5.0))


def test_2d_rgb_nrrd(tmp_path):
    array = np.random.default_rng(2).integers(0, 255, size=(40, 60, 3), dtype=np.uint8)
    _write_itk(tmp_path / "rgb.nrrd", array, (0.1, 0.1), vector=True)
    image = read_image(tmp_path / "rgb.nrrd")
    assert image.is_rgb and image.pixels.shape == (40, 60, 3)
    np.testing.assert_array_equal(image.pixels, array)


def test_multi_slice_volume_read_as_cine_only_when_asked(tmp_path):
    array = np.zeros((5, 32, 48), dtype=np.uint8)
    array[:, 10:20, 10:30] = np.arange(5)[:, None, None] * 40
    _write_itk(tmp_path / "cine.nrrd", array, (0.2, 0.2, 1.0))
    image = read_image(tmp_path / "cine.nrrd", as_cine=True)
    assert image.is_cine and image.frames == 5
    np.testing.assert_array_equal(image.pixels, array)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".jpg"])
def test_raster_formats(tmp_path, suffix):
    array = np.zeros((64, 96), dtype=np.uint8)
    array[16:48, 24:72] = 200
    skimage.io.imsave(tmp_path / f"img{suffix}", array, check_contrast=False)
    image = read_image(tmp_path / f"img{suffix}")
    assert image.pixels.shape == (64, 96) and not image.is_rgb
    assert not image.geometry.calibrated and image.info.spacing_source == "none"
    tolerance = 10 if suffix == ".jpg" else 0
    assert np.abs(image.pixels.astype(int) - array).max() <= tolerance


def test_opaque_rgba_png_drops_alpha(tmp_path):
    rgba = np.full((32, 32, 4), 255, dtype=np.uint8)
    rgba[..., :3] = 100
    skimage.io.imsave(tmp_path / "screenshot.png", rgba, check_contrast=False)
    image = read_image(tmp_path / "screenshot.png")
    assert image.is_rgb and image.pixels.shape == (32, 32, 3)


def test_user_spacing_overrides(tmp_path):
    skimage.io.imsave(tmp_path / "a.png", np.full((32, 32), 9, np.uint8), check_contrast=False)
    image = read_image(tmp_path / "a.png", spacing_mm=(0.1, 0.12))
    assert image.geometry.calibrated and image.info.spacing_source == "user"
    assert image.geometry.spacing[:2] == (0.1, 0.12)
    assert not any("spacing" in w for w in image.info.warnings)

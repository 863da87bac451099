"""Bad input: every problem a user can cause gives one clear line naming the file, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import skimage.io
from conftest import us_file

from usvlm.cli import main
from usvlm.errors import InputError
from usvlm.io.readers import read_image


def _dicom(tmp_path: Path, name: str, edit) -> Path:  # noqa: ANN001
    ds = pydicom.dcmread(us_file("US1_UNCR.dcm"))
    edit(ds)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=False)
    return path


def _itk(tmp_path: Path, name: str, array: np.ndarray, spacing=(0.1, 0.1, 1.0)) -> Path:  # noqa: ANN001
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing[: img.GetDimension()])
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(tmp_path: Path, keep: int) -> Path:
    data = us_file("US1_UNCR.dcm").read_bytes()
    path = tmp_path / f"truncated_{keep}.dcm"
    path.write_bytes(data[:keep])
    return path


def _png_bad_crc(tmp_path: Path) -> Path:
    path = tmp_path / "badcrc.png"
    skimage.io.imsave(path, np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8),
                      check_contrast=False)
    data = bytearray(path.read_bytes())
    idat = data.find(b"IDAT")
    data[idat + 10] ^= 0xFF  # corrupt compressed data; the chunk CRC no longer matches
    path.write_bytes(bytes(data))
    return path


def _rgba_transparent(tmp_path: Path) -> Path:
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 128
    path = tmp_path / "rgba.png"
    skimage.io.imsave(path, rgba, check_contrast=False)
    return path


def _huge_claim(ds: pydicom.Dataset) -> None:
    ds.Rows, ds.Columns = 20000, 20000


def _no_pixels(ds: pydicom.Dataset) -> None:
    del ds.PixelData


def _ct_volume(ds: pydicom.Dataset) -> None:
    ds.Modality = "CT"
    ds.NumberOfFrames = 2
    ds.Rows = 240  # same bytes as two 240 x 640 frames
    ds.PixelSpacing = [0.5, 0.5]


def _absurd_spacing(ds: pydicom.Dataset) -> None:
    ds.PixelSpacing = [500.0, 500.0]


def _short_pixels(ds: pydicom.Dataset) -> None:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


def _tiny(ds: pydicom.Dataset) -> None:
    ds.Rows, ds.Columns = 1, 1
    ds.PixelData = b"\x00\x00\x00\x00"


CASES = {
    "missing": (lambda t: t / "nope.dcm", "file not found"),
    "empty": (lambda t: _write(t / "empty.dcm", b""), "empty"),
    "empty png": (lambda t: _write(t / "empty.png", b""), "empty"),
    "folder": (lambda t: t, "folder"),
    "text as dicom": (lambda t: _write(t / "notes.dcm", b"hello"), "DICOM"),
    "text as png": (lambda t: _write(t / "fake.png", b"hello"), "decode"),
    "truncated header": (lambda t: _truncated(t, 300), "DICOM"),
    "truncated pixels": (lambda t: _truncated(t, 400_000), "pixel data"),
    "no pixel data": (lambda t: _dicom(t, "nopix.dcm", _no_pixels), "no image"),
    "3D CT dicom": (lambda t: _dicom(t, "ct.dcm", _ct_volume), "3D CT volume"),
    "3D volume nrrd": (lambda t: _itk(t, "ct.nrrd", np.zeros((20, 64, 64), np.int16)), "3D volume"),
    "transparent RGBA png": (_rgba_transparent, "transparency"),
    "1 pixel png": (lambda t: skimage.io.imsave(t / "one.png", np.zeros((1, 1), np.uint8),
                                                check_contrast=False) or t / "one.png", "too small"),
    "1 pixel dicom": (lambda t: _dicom(t, "one.dcm", _tiny), "too small"),
    "zero-sized nrrd": (lambda t: _write(t / "zero.nrrd", b"NRRD0004\ntype: uint8\ndimension: 2\n"
                                         b"sizes: 0 10\nencoding: raw\n\n"), "no pixels|header"),
    "lying nrrd header": (lambda t: _write(t / "lie.nrrd", b"NRRD0004\ntype: uint8\ndimension: 2\n"
                                           b"sizes: 64 64\nencoding: raw\n\n" + bytes(100)), "pixel data|header"),
    "NaN nrrd": (lambda t: _itk(t, "nan.nrrd", np.full((32, 32), np.nan, np.float32)), "NaN"),
    "Inf nrrd": (lambda t: _itk(t, "inf.nrrd", np.full((32, 32), np.inf, np.float32)), "infinite"),
    "absurd spacing nrrd": (lambda t: _itk(t, "far.nrrd", np.zeros((32, 32), np.uint8), (500.0, 500.0)),
                            "implausible pixel spacing"),
    "absurd spacing dicom": (lambda t: _dicom(t, "far.dcm", _absurd_spacing), "implausible pixel spacing"),
    "20000 x 20000 claim": (lambda t: _dicom(t, "huge.dcm", _huge_claim), "too large"),
    "short pixel data": (lambda t: _dicom(t, "short.dcm", _short_pixels), "pixel data has"),
    "png bad crc": (_png_bad_crc, "decode"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reader_gives_clear_error(tmp_path, case):
    make, expected = CASES[case]
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    import re
    assert re.search(expected, message), message


@pytest.mark.parametrize("case", ["truncated pixels", "3D CT dicom", "NaN nrrd", "missing"])
def test_cli_info_exit_2_one_line(tmp_path, case, capsys):
    path = CASES[case][0](tmp_path)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0]


def test_cli_subprocess_no_traceback(tmp_path):
    path = _truncated(tmp_path, 400_000)
    proc = subprocess.run([sys.executable, "-m", "usvlm", "info", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:")


def test_several_files_one_bad_still_reports_the_rest(tmp_path, capsys):
    good = us_file("US1_UNCR.dcm")
    bad = tmp_path / "empty.dcm"
    bad.write_bytes(b"")
    assert main(["info", "--json", str(good), str(bad)]) == 2
    captured = capsys.readouterr()
    import json
    listing = json.loads(captured.out)
    assert len(listing) == 1 and listing[0]["rows"] == 480
    assert "empty" in captured.err

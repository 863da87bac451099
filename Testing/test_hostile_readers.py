"""Hostile NRRD / NHDR / MetaImage / NIfTI and raster inputs (issue 13, items 4, 5, 7, 8, 10, 11),
on real files generated here; the small ones are also in the committed bad-input corpus
(Testing/Data/corpus_itk2.py).

Detached data files must lie in the header's folder (or below it), be regular files and have the
size the header implies; FIFOs must not hang; headers are checked before any decoder allocates;
missing spacing is uncalibrated, damaged spacing refused; memory stays bounded (checked in child
processes under an address-space limit, so a regression fails instead of exhausting the machine).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from usvlm.errors import InputError
from usvlm.io import read_image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "Data"))
from corpus_itk2 import _GIF, _jpeg_constant, _tiff  # noqa: E402

OUTSIDE = "outside the header's folder"


def pixels(rows: int = 32, columns: int = 48, frames: int = 1) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:columns]
    frame = ((x * 5 + y * 3) % 250).astype(np.uint8)
    return np.stack([np.roll(frame, t, axis=1) for t in range(frames)]) if frames > 1 else frame


def nhdr(path: Path, data_file: str, *, sizes: str = "48 32", extra: tuple[str, ...] = ()) -> Path:
    dimension = len(sizes.split())
    fields = ["NRRD0004", "type: uint8", f"dimension: {dimension}", f"sizes: {sizes}",
              "spacings: " + " ".join(["0.2"] * dimension), "encoding: raw", *extra, f"data file: {data_file}"]
    path.write_text("\n".join(fields) + "\n", encoding="ascii")
    return path


def mhd(path: Path, data_file: str, *, spacing: str | None = "0.2 0.2") -> Path:
    fields = ["ObjectType = Image", "NDims = 2", "DimSize = 48 32", "ElementType = MET_UCHAR"]
    fields += [f"ElementSpacing = {spacing}"] if spacing else []
    path.write_text("\n".join([*fields, f"ElementDataFile = {data_file}"]) + "\n", encoding="ascii")
    return path


def refused(path: Path, match: str, **kwargs) -> InputError:
    with pytest.raises(InputError, match=match) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return info.value


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A case folder with a header sub-folder, and a secret of exactly the implied size beside it."""
    case = tmp_path / "case"
    (case / "data").mkdir(parents=True)
    secret = tmp_path / "secret.raw"
    secret.write_bytes(pixels().tobytes())
    return {"case": case, "secret": secret, "root": tmp_path}


# -- item 5: detached data files stay in the header's folder ---------------------------------------

@pytest.mark.parametrize("form", ["absolute", "dotdot", "dotdot-inside-name", "symlink-out", "list", "pattern"])
def test_nhdr_data_file_outside_the_folder_is_refused(layout, form):
    case, secret = layout["case"], layout["secret"]
    if form == "absolute":
        header = nhdr(case / "x.nhdr", str(secret))
    elif form == "dotdot":
        header = nhdr(case / "x.nhdr", "../secret.raw")
    elif form == "dotdot-inside-name":
        header = nhdr(case / "x.nhdr", "data/../../secret.raw")
    elif form == "symlink-out":
        (case / "data" / "img.raw").symlink_to(secret)
        header = nhdr(case / "x.nhdr", "data/img.raw")
    elif form == "list":
        (case / "a.raw").write_bytes(pixels().tobytes())
        header = case / "x.nhdr"
        header.write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 48 32 2\nencoding: raw\n"
                          "data file: LIST\na.raw\n../secret.raw\n", encoding="ascii")
    else:
        (layout["root"] / "s1.raw").write_bytes(pixels().tobytes())
        (layout["root"] / "s2.raw").write_bytes(pixels().tobytes())
        header = nhdr(case / "x.nhdr", "../s%d.raw 1 2 1", sizes="48 32 2")
    refused(header, OUTSIDE)
    refused(header, OUTSIDE, as_cine=True)


@pytest.mark.parametrize("suffix", [".mhd", ".mha"])
@pytest.mark.parametrize("target", ["absolute", "dotdot"])
def test_metaimage_data_file_outside_the_folder_is_refused(layout, suffix, target):
    name = str(layout["secret"]) if target == "absolute" else "../secret.raw"
    refused(mhd(layout["case"] / f"x{suffix}", name), OUTSIDE)


def test_header_reached_through_a_symlinked_folder_is_judged_by_its_real_folder(layout):
    """A link to the header's folder does not widen what the header may reach."""
    case = layout["case"]
    nhdr(case / "x.nhdr", "../secret.raw")
    (layout["root"] / "link").symlink_to(case)
    refused(layout["root"] / "link" / "x.nhdr", OUTSIDE)


def test_data_files_inside_the_folder_are_read(layout):
    case = layout["case"]
    (case / "data" / "img.raw").write_bytes(pixels().tobytes())
    image = read_image(nhdr(case / "sub.nhdr", "data/img.raw"))
    np.testing.assert_array_equal(image.pixels, pixels())
    assert image.geometry.calibrated and image.geometry.spacing[:2] == pytest.approx((0.2, 0.2))
    # a link that stays inside the folder, a MetaImage header and a LIST / pattern of slices
    (case / "link.raw").symlink_to(case / "data" / "img.raw")
    np.testing.assert_array_equal(read_image(nhdr(case / "link.nhdr", "link.raw")).pixels, pixels())
    np.testing.assert_array_equal(read_image(mhd(case / "x.mhd", "data/img.raw")).pixels, pixels())
    cine = pixels(frames=3)
    for t in range(3):
        (case / "data" / f"f{t}.raw").write_bytes(cine[t].tobytes())
    listed = case / "list.nhdr"
    listed.write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 48 32 3\nencoding: raw\ndata file: LIST\n"
                      + "".join(f"data/f{t}.raw\n" for t in range(3)), encoding="ascii")
    np.testing.assert_array_equal(read_image(listed, as_cine=True).pixels, cine)
    pattern = nhdr(case / "pattern.nhdr", "data/f%d.raw 0 2 1", sizes="48 32 3")
    np.testing.assert_array_equal(read_image(pattern, as_cine=True).pixels, cine)


def test_detached_gzip_data_file_is_read_and_checked(layout):
    case = layout["case"]
    (case / "img.raw.gz").write_bytes(gzip.compress(pixels().tobytes(), mtime=0))
    header = nhdr(case / "gz.nhdr", "img.raw.gz")
    header.write_text(header.read_text().replace("encoding: raw", "encoding: gzip"))
    np.testing.assert_array_equal(read_image(header).pixels, pixels())
    (case / "img.raw.gz").write_bytes(gzip.compress(pixels().tobytes() + bytes(5000), mtime=0))
    refused(header, "more compressed pixel data")


@pytest.mark.parametrize("delta", [-1, 1, 4096])
def test_detached_raw_data_file_must_have_the_implied_size(layout, delta):
    case = layout["case"]
    data = pixels().tobytes()
    (case / "img.raw").write_bytes(data[:delta] if delta < 0 else data + bytes(delta))
    refused(nhdr(case / "x.nhdr", "img.raw"), f"holds {len(data) + delta} bytes of pixel data, its header implies")


def _run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import sys; from usvlm.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    sys.path.insert(0, str(HERE))
    from models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def test_outside_bytes_never_reach_an_output(layout, tiny_model):
    """`usvlm segment --overlay --json` on a header pointing at a secret: with the secret inside the
    header's folder the command runs and writes its outputs (so this pipeline would carry the
    bytes); pointing outside, it exits 2 naming the header and writes nothing."""
    case, secret = layout["case"], layout["secret"]
    inside = case / "inside.raw"
    inside.write_bytes(secret.read_bytes())
    for name, data_file, expect_rc in (("in", "inside.raw", 0), ("out", str(secret), 2),
                                       ("dotdot", "../secret.raw", 2)):
        header = nhdr(case / f"{name}.nhdr", data_file)
        out = layout["root"] / f"out-{name}"
        out.mkdir()
        proc = _run_cli(["segment", str(header), "--model", str(tiny_model), "--prompt", "mass", "--no-progress",
                         "--overlay", "--json", "-o", str(out / "r.seg.nrrd")], cwd=layout["root"])
        assert proc.returncode == expect_rc, proc.stderr[-2000:]
        written = sorted(p.name for p in out.iterdir())
        if expect_rc == 0:
            assert {"r.seg.nrrd", "r.overlay.png", "r.seg.json"} <= set(written), written
        else:
            assert written == [], written
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
            assert errors and str(header) in errors[0] and OUTSIDE in errors[0], proc.stderr
            assert "Traceback" not in proc.stderr


# -- item 7: FIFOs and devices never hang the reader ------------------------------------------------

_READ_IN_CHILD = textwrap.dedent("""
    import sys
    from usvlm.errors import InputError
    from usvlm.io import read_image
    try:
        read_image(sys.argv[1])
    except InputError as exc:
        print("REFUSED", exc)
    else:
        print("READ")
""")


@pytest.mark.parametrize("where", ["data-file", "data-file-link", "header"])
def test_fifo_is_refused_without_opening_it(tmp_path, where):
    fifo = tmp_path / "pipe.raw"
    os.mkfifo(fifo)
    if where == "data-file":
        target = nhdr(tmp_path / "x.nhdr", "pipe.raw")
    elif where == "data-file-link":
        (tmp_path / "link.raw").symlink_to(fifo)
        target = nhdr(tmp_path / "x.nhdr", "link.raw")
    else:
        target = tmp_path / "pipe.nrrd"
        os.mkfifo(target)
    # A child process: a hang would block this process in open(), beyond the reach of signals.
    proc = subprocess.run([sys.executable, "-c", _READ_IN_CHILD, str(target)], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.startswith("REFUSED"), proc.stdout + proc.stderr[-2000:]
    assert ("not a regular file" in proc.stdout) or ("empty" in proc.stdout), proc.stdout


# -- item 4: lying and large headers refused before anything is allocated --------------------------

_PEAK_IN_CHILD = textwrap.dedent("""
    import json, resource, sys
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from usvlm.errors import InputError
    from usvlm.io import read_image
    outcome = "READ"
    try:
        read_image(sys.argv[1], as_cine=sys.argv[3] == "cine")
    except InputError as exc:
        outcome = "REFUSED " + str(exc)
    # VmHWM: this process's peak resident memory (ru_maxrss would include the parent's at fork)
    status = open("/proc/self/status").read()
    peak = int(status.split("VmHWM:")[1].split()[0]) / 1024
    print(json.dumps({"outcome": outcome, "peak_mib": peak}))
""")


def _read_in_child(path: Path, *, cine: bool = False, limit_gib: float = 6) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PEAK_IN_CHILD, str(path), str(int(limit_gib * 1024**3)),
                           "cine" if cine else "frame"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_3d_volume_is_refused_from_its_header(tmp_path):
    """A 375 MiB volume (under the pixel limit; a sparse file: no disk used) is refused as 3D
    before a byte is read."""
    path = tmp_path / "volume.nrrd"
    header = b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 512 512 1500\nspacings: 0.2 0.2 1\nencoding: raw\n\n"
    path.write_bytes(header)
    os.truncate(path, len(header) + 512 * 512 * 1500)
    result = _read_in_child(path)
    assert result["outcome"].startswith("REFUSED") and "3D volume of 1500 slices" in result["outcome"]
    assert result["peak_mib"] < 400, result


@pytest.mark.parametrize("encoding, data", [("ascii", b"1 2 3 4\n"), ("hex", b"00ff00ff\n")])
def test_text_nrrd_claiming_more_than_the_file_holds_is_refused(tmp_path, encoding, data):
    path = tmp_path / f"{encoding}.nrrd"
    path.write_bytes(f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 8000 8000\nencoding: {encoding}\n\n".encode()
                     + data)
    result = _read_in_child(path)
    assert result["outcome"].startswith("REFUSED") and "too few" in result["outcome"], result
    assert result["peak_mib"] < 400, result


def test_text_nrrd_that_is_honest_is_read(tmp_path):
    values = pixels(16, 16)
    path = tmp_path / "ascii.nrrd"
    path.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 16 16\nencoding: ascii\n\n"
                     + " ".join(map(str, values.ravel())).encode() + b"\n")
    np.testing.assert_array_equal(read_image(path).pixels, values)


def _nifti_gz(path: Path, array: np.ndarray, *, cut: int = 0, extra: int = 0) -> Path:
    import SimpleITK as sitk

    plain = path.with_name("plain.nii")
    sitk.WriteImage(sitk.GetImageFromArray(array), str(plain))
    raw = plain.read_bytes()
    path.write_bytes(gzip.compress(raw[:len(raw) - cut] + bytes(extra), mtime=0))
    return path


def test_gzip_nifti_short_or_long_data_is_refused(tmp_path):
    array = pixels()
    np.testing.assert_array_equal(read_image(_nifti_gz(tmp_path / "ok.nii.gz", array)).pixels, array)
    # ITK zero-fills the missing voxels of a short .nii.gz without an error
    refused(_nifti_gz(tmp_path / "short.nii.gz", array, cut=100), "holds 1436 bytes of compressed pixel data")
    refused(_nifti_gz(tmp_path / "long.nii.gz", array, extra=1 << 20), "more compressed pixel data")
    nan = np.full((32, 32), np.nan, np.float32)
    refused(_nifti_gz(tmp_path / "nan.nii.gz", nan), "NaN")


def test_gzip_nrrd_bomb_is_refused_while_streaming(tmp_path):
    """A 2 MB gzip stream that inflates to 2 GB under a header claiming 32 x 32: refused after
    decompressing just past the claim, with bounded memory."""
    path = tmp_path / "bomb.nrrd"
    header = b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 32 32\nencoding: gzip\n\n"
    compressor = zlib_gzip()
    body = compressor.compress(bytes(1 << 20)) * 1  # warm the stream
    for _ in range(2047):
        body += compressor.compress(bytes(1 << 20))
    body += compressor.flush()
    path.write_bytes(header + body)
    result = _read_in_child(path)
    assert result["outcome"].startswith("REFUSED") and "more compressed pixel data" in result["outcome"], result
    assert result["peak_mib"] < 400, result


def zlib_gzip():  # noqa: ANN201
    import zlib

    return zlib.compressobj(9, zlib.DEFLATED, 31)


@pytest.mark.parametrize("case", ["tags-60000", "pages", "rgba-float-16000"])
def test_tiff_size_comes_from_its_tags_not_a_decoder(tmp_path, case):
    """TIFFs Pillow cannot open (unknown compression) are sized from their tags: refused before
    any decoder allocates (the defect: 7.9 GB used before a refusal)."""
    if case == "tags-60000":
        data, match = _tiff([(60000, 60000, 1, 8)], compression=50000), "too large"
    elif case == "pages":
        data, match = _tiff([(4096, 4096, 3, 16)] * 30, compression=50000), "above the limit"
    else:
        data, match = _tiff([(16000, 16000, 4, 64)], compression=50000), "above the limit"
    path = tmp_path / "x.tif"
    path.write_bytes(data)
    result = _read_in_child(path)
    assert result["outcome"].startswith("REFUSED") and match in result["outcome"], result
    assert result["peak_mib"] < 400, result


@pytest.mark.parametrize("frames", [2, 3, 4, 5])
def test_multi_page_tiff_is_still_read_as_frames(tmp_path, frames):
    """(3 and 4 grey pages were read as one colour image.)"""
    import tifffile

    stack = pixels(frames=frames)
    tifffile.imwrite(tmp_path / "cine.tif", stack, photometric="minisblack")
    image = read_image(tmp_path / "cine.tif")
    assert image.is_cine and image.frames == frames and not image.is_rgb
    np.testing.assert_array_equal(image.pixels, stack)


# -- item 8: spacing -----------------------------------------------------------------------------

def _nrrd(path: Path, fields: list[str], array: np.ndarray | None = None) -> Path:
    array = pixels() if array is None else array
    rows, columns = array.shape
    head = ["NRRD0004", "type: uint8", "dimension: 2", f"sizes: {columns} {rows}", "encoding: raw", *fields]
    path.write_bytes(("\n".join(head) + "\n\n").encode() + array.tobytes())
    return path


@pytest.mark.parametrize("fields", [[], ["spacings: nan nan"], ["kinds: domain domain"]],
                         ids=["no-field", "nan-is-nrrd-unknown", "kinds-only"])
def test_nrrd_without_spacing_is_uncalibrated(tmp_path, fields):
    image = read_image(_nrrd(tmp_path / "x.nrrd", fields))
    assert not image.geometry.calibrated and image.info.spacing_source == "none"
    assert any("not calibrated" in w for w in image.info.warnings)
    from usvlm.io.describe import describe_image

    assert describe_image(image, estimate_field_of_view=False)["calibrated"] is False
    # the user can still give it
    given = read_image(tmp_path / "x.nrrd", spacing_mm=(0.1, 0.1))
    assert given.geometry.calibrated and given.info.spacing_source == "user"


def test_uncalibrated_nrrd_measures_in_pixels(tmp_path):
    from usvlm.measure import measure_mask

    image = read_image(_nrrd(tmp_path / "x.nrrd", []))
    mask = np.zeros(image.frame_shape, bool)
    mask[10:20, 10:30] = True
    measured = measure_mask(mask, image.geometry.spacing[:2], calibrated=image.geometry.calibrated)
    assert measured.unit == "px" and measured.area == pytest.approx(200)


@pytest.mark.parametrize("fields, match", [
    (["spacings: 0 0.2"], "zero"),
    (["spacings: inf 0.2"], "infinite"),
    (["spacings: 1e6 1e6"], "implausible"),
    (["space dimension: 2", "space directions: (nan,0) (0,0.2)"], "NaN or infinite"),
    (["space dimension: 2", "space directions: (1e-9,0) (0,1e-9)"], "implausible"),
])
def test_nrrd_damaged_spacing_is_refused(tmp_path, fields, match):
    refused(_nrrd(tmp_path / "x.nrrd", fields), match)


def test_implausible_header_spacing_can_be_overridden(tmp_path):
    path = _nrrd(tmp_path / "x.nrrd", ["spacings: 1e6 1e6"])
    image = read_image(path, spacing_mm=(0.2, 0.2))
    assert image.geometry.calibrated and image.geometry.spacing[:2] == (0.2, 0.2)


def test_negative_nrrd_spacing_is_a_flip_not_an_error(tmp_path):
    image = read_image(_nrrd(tmp_path / "x.nrrd", ["spacings: -0.2 0.3"]))
    assert image.geometry.calibrated and image.geometry.spacing[:2] == pytest.approx((0.2, 0.3))


def test_metaimage_without_spacing_is_uncalibrated(tmp_path):
    (tmp_path / "img.raw").write_bytes(pixels().tobytes())
    image = read_image(mhd(tmp_path / "x.mhd", "img.raw", spacing=None))
    assert not image.geometry.calibrated and image.info.spacing_source == "none"
    refused(mhd(tmp_path / "y.mhd", "img.raw", spacing="inf 0.2"), "ElementSpacing")


def _nifti(path: Path, pixdim: tuple[float, float], vox_offset: float = 352.0) -> Path:
    array = pixels()
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 2, array.shape[1], array.shape[0], 1, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 2, 8)
    struct.pack_into("<8f", header, 76, 1.0, *pixdim, 1.0, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", header, 108, vox_offset)
    header[123] = 2
    header[344:348] = b"n+1\x00"
    path.write_bytes(bytes(header) + bytes(4) + array.tobytes())
    return path


def test_nifti_spacing(tmp_path):
    assert read_image(_nifti(tmp_path / "ok.nii", (0.2, 0.3))).geometry.spacing[:2] == pytest.approx((0.2, 0.3))
    zero = read_image(_nifti(tmp_path / "zero.nii", (0.0, 0.0)))
    assert not zero.geometry.calibrated and zero.info.spacing_source == "none"
    for value in (math.nan, math.inf, -0.2):
        refused(_nifti(tmp_path / "bad.nii", (value, 0.2)), "pixdim")


# -- item 10: NIfTI vox_offset ------------------------------------------------------------------

@pytest.mark.parametrize("offset", [math.nan, math.inf, -math.inf, -352.0, 0.0, 352.5, 1e12, 4096.0])
def test_nifti_bad_vox_offset_is_one_line_error(tmp_path, offset):
    refused(_nifti(tmp_path / "x.nii", (0.2, 0.2), offset), "vox_offset|holds 0 bytes")


# -- item 11: formats --------------------------------------------------------------------------------

def test_cmyk_jpeg_is_refused_as_cmyk(tmp_path):
    from PIL import Image

    path = tmp_path / "print.jpg"
    path.write_bytes(_jpeg_constant(32, 32, 4))
    with Image.open(path) as im:  # a real CMYK JPEG, as Pillow reads it
        assert im.mode == "CMYK"
    error = refused(path, "CMYK")
    assert "transparency" not in str(error)
    grey = tmp_path / "grey.jpg"
    grey.write_bytes(_jpeg_constant(32, 32, 1))
    assert read_image(grey).pixels.shape == (32, 32)


@pytest.mark.parametrize("name, data, fmt", [
    ("a.gif", _GIF, "GIF"), ("gif_named.png", _GIF, "GIF"), ("noext", _GIF, "GIF"),
    ("a.webp", b"RIFF\x1a\x00\x00\x00WEBPVP8 " + bytes(14), "WebP"),
    ("a.jp2", b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(40), "JPEG 2000"),
    ("a.heic", b"\x00\x00\x00\x18ftypheic" + bytes(40), "HEIF"),
    ("a.pdf", b"%PDF-1.7\n" + bytes(40), "PDF"),
    ("a.zip", b"PK\x03\x04" + bytes(40), "ZIP"),
])
def test_unsupported_formats_are_named(tmp_path, name, data, fmt):
    path = tmp_path / name
    path.write_bytes(data)
    error = refused(path, f"unsupported format {fmt}")
    assert "DICOM" in str(error) and "not a DICOM file" not in str(error)


def test_png_of_the_largest_documented_side_is_not_refused_by_pillow(tmp_path):
    """Pillow's own bomb guard (179 Mpx) refused a 16384 x 14000 PNG inside USVLM's limits."""
    from PIL import Image

    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((12000, 16384), np.uint8)).save(path, compress_level=1)
    result = _read_in_child(path, limit_gib=4)
    assert result["outcome"] == "READ", result
    # decoded 188 MiB: Pillow's buffer, numpy's copy and the interpreter
    assert result["peak_mib"] < 188 * 3 + 250, result


# -- .seg.nrrd (read by slicerio / pynrrd, which also follow detached data files) --------------------

def test_seg_nrrd_data_file_outside_the_folder_is_refused(layout):
    from usvlm.io import read_seg_nrrd

    case, secret = layout["case"], layout["secret"]
    fields = ("NRRD0004\ntype: unsigned char\ndimension: 3\nsizes: 48 32 1\nencoding: raw\n"
              "Segment0_ID:=Segment_1\nSegment0_Name:=x\nSegment0_LabelValue:=1\nSegment0_Layer:=0\n")
    (case / "evil.seg.nhdr").write_text(fields + f"data file: {secret}\n", encoding="ascii")
    with pytest.raises(InputError, match=OUTSIDE):
        read_seg_nrrd(case / "evil.seg.nhdr")
    (case / "mask.raw").write_bytes((pixels() > 100).astype(np.uint8).tobytes())
    (case / "ok.seg.nhdr").write_text(fields + "data file: mask.raw\n", encoding="ascii")
    assert read_seg_nrrd(case / "ok.seg.nhdr").segments[0].mask.sum() == (pixels() > 100).sum()


# -- item 4: memory of legitimate large inputs ------------------------------------------------------

_PIPELINE_IN_CHILD = textwrap.dedent("""
    import json, resource, sys
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from usvlm.io import read_image
    from usvlm.io.describe import describe_image
    from usvlm.preprocess import prepare
    image = read_image(sys.argv[2], as_cine=True)
    decoded = image.pixels.nbytes / 1024**2
    if sys.argv[1] == "info":
        describe_image(image)
    else:
        prepare(image, 224)
    peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
    print(json.dumps({"decoded_mib": decoded, "peak_mib": peak}))
""")


def _pipeline_peak(mode: str, path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PIPELINE_IN_CHILD, mode, str(path), str(6 * 1024**3)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _scan(rows: int, columns: int, shift: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:columns]
    frame = ((x * 7 + y * 3 + shift) % 200).astype(np.uint8)
    frame[(y - rows // 2) ** 2 + (x - columns // 2) ** 2 < (min(rows, columns) // 4) ** 2] = 240
    frame[: rows // 10] = 0
    return frame


def test_large_image_info_memory_is_a_small_multiple_of_its_pixels(tmp_path):
    """`usvlm info` of an 8192 x 8192 PNG (64 MiB decoded): the field-of-view estimate works on
    float32 (4 bytes a pixel) and needs about three such arrays at once; measured ~13x the decoded
    size (a 16384 x 16384 PNG: 3.5 GB, down from 6.3 GB and 49 s)."""
    from PIL import Image

    path = tmp_path / "large.png"
    Image.fromarray(_scan(8192, 8192)).save(path, compress_level=1)
    result = _pipeline_peak("info", path)
    assert result["decoded_mib"] == 64
    assert result["peak_mib"] < 250 + 16 * result["decoded_mib"], result


def test_gzip_cine_preprocessing_memory_is_a_small_multiple_of_its_pixels(tmp_path):
    """read_image + prepare of a gzip NRRD cine (32 frames of 512 x 1024, 16 MiB decoded):
    measured ~12x the decoded size (float32 frames, the overlay fill and the model input)."""
    import SimpleITK as sitk

    cine = np.stack([_scan(512, 1024, t) for t in range(32)])
    image = sitk.GetImageFromArray(cine)
    image.SetSpacing((0.2, 0.2, 1.0))
    path = tmp_path / "cine.nrrd"
    sitk.WriteImage(image, str(path), useCompression=True)
    result = _pipeline_peak("prepare", path)
    assert result["decoded_mib"] == 16
    assert result["peak_mib"] < 250 + 16 * result["decoded_mib"], result

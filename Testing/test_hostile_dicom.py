"""Hostile DICOM input, second round (issue 13): codec headers that lie about the size (JPEG SOF,
JPEG-LS SOF55, JPEG 2000 SIZ), deflate bombs, segmented palette bombs, 3D volumes refused from the
header, deep sequence nesting, truncated JPEG, and de-identification of the DICOM SEG by the
PS3.15 Basic Application Level Confidentiality Profile.

Memory is measured in a child process under an address-space limit (RLIMIT_AS), so a regression
fails there instead of exhausting the machine; the small hostile files are in the committed
corpus (Testing/Data/corpus_dicom2.py), the big ones are made here in tmp_path.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "Data"))

import corpus_dicom2 as corpus  # noqa: E402

CORPUS = HERE / "Data" / "bad"
MIB = 1024**2

# The child reads one file under an address-space limit and reports the outcome and how far its
# resident memory grew beyond what importing and reading a small valid file took.
_CHILD = r"""
import json, resource, sys, warnings
warnings.simplefilter("ignore")
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from usvlm.io import read_image
read_image(sys.argv[2])  # warm up: every module imported, one file decoded
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    image = read_image(sys.argv[1])
    outcome = {"ok": list(image.pixels.shape)}
except BaseException as exc:
    outcome = {"error": type(exc).__name__, "message": str(exc)}
outcome["growth_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps(outcome))
"""


@pytest.fixture(scope="module")
def small_dicom(tmp_path_factory) -> Path:
    from usvlm_training.us_dicom import write_us_dicom

    path = tmp_path_factory.mktemp("small") / "small.dcm"
    write_us_dicom(path, np.full((32, 32), 100, np.uint8), (0.2, 0.2))
    return path


def read_in_child(path: Path, small: Path, *, limit_mib: int = 2048, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(small), str(limit_mib * MIB)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def refused(outcome: dict, path: Path, match: str) -> None:
    import re

    assert outcome.get("error") == "InputError", outcome
    assert str(path) in outcome["message"] and "\n" not in outcome["message"]
    assert re.search(match, outcome["message"], re.IGNORECASE), outcome["message"]


# -- Codec headers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, match, growth_mib", [
    ("dicom2_jpeg_sof_claims_65000.dcm", "65000 x 65000", 64),
    ("dicom2_jpegls_sof55_claims_65000.dcm", "65000 x 65000", 64),
    ("dicom2_j2k_siz_claims_65000.dcm", "65000 x 65000", 64),
    ("dicom2_jpeg_cine_second_frame_lies.dcm", "frame 2.*20000 x 20000", 64),
    ("dicom2_palette_segmented_bomb.dcm", "palette", 64),
    ("dicom2_sequences_nested_400_undefined.dcm", "nested", 64),
])
def test_lying_codec_headers_are_refused_before_decoding(name, match, growth_mib, small_dicom):
    """Before the fix the JPEG case took 3.4 GB and the palette bomb several GB; now each is refused
    from its header with almost no memory (the limit of the child would stop a regression)."""
    path = CORPUS / name
    outcome = read_in_child(path, small_dicom, limit_mib=3072)
    refused(outcome, path, match)
    assert outcome["growth_mib"] < growth_mib, outcome


def test_jpeg_frame_header_of_real_encoders():
    import io

    from PIL import Image

    from usvlm.io.codec_headers import jpeg_frame

    for size, mode in (((640, 480), "L"), ((33, 17), "RGB")):
        buffer = io.BytesIO()
        Image.new(mode, size, 90).save(buffer, "JPEG", quality=90, progressive=mode == "RGB")
        frame = jpeg_frame(buffer.getvalue())
        assert (frame.columns, frame.rows, frame.components, frame.precision) == (*size, len(mode), 8)


def test_handmade_jpeg_decodes_and_is_read(tmp_path):
    """The corpus's hand-made baseline JPEG is a valid codestream (so the lying ones differ only in
    their header): in a DICOM it reads as the flat grey it encodes."""
    from pydicom.uid import JPEGBaseline8Bit

    from usvlm.io import read_image

    path = corpus.encapsulated(tmp_path / "jpeg.dcm", JPEGBaseline8Bit, [corpus.jpeg_baseline(32, 32)] * 2)
    image = read_image(path)
    assert image.pixels.shape == (2, 32, 32) and np.all(image.pixels == 128)


def _cut_real_jpeg(tmp_path: Path, keep: int) -> Path:
    from conftest import us_file
    from pydicom.encaps import encapsulate, generate_fragments

    ds = pydicom.dcmread(us_file("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    codestream = b"".join(generate_fragments(ds.PixelData))
    ds.PixelData = encapsulate([codestream[:keep] if keep else codestream])
    path = tmp_path / "cut.dcm"
    ds.save_as(path)
    return path


def test_truncated_real_jpeg_is_refused(tmp_path):
    """A JPEG Lossless frame cut by 1000 bytes: decoders fill the rest silently; the reader refuses
    the frame for its missing end-of-image marker (and reads the uncut one)."""
    from usvlm.errors import InputError
    from usvlm.io import read_image

    assert read_image(_cut_real_jpeg(tmp_path, 0)).pixels.shape == (768, 1024)
    size = len(b"".join(pydicom.encaps.generate_fragments(pydicom.dcmread(tmp_path / "cut.dcm").PixelData)))
    with pytest.raises(InputError, match="truncated"):
        read_image(_cut_real_jpeg(tmp_path, size - 1000))


# -- Deflate ---------------------------------------------------------------------------------------

def _deflate_bomb(tmp_path: Path, pixel_bytes: int) -> Path:
    """A deflated DICOM whose 32 x 32 header is followed by `pixel_bytes` of zero pixel data."""
    path = tmp_path / "bomb.dcm"
    header = corpus.dataset_header(tmp_path / "header.dcm")
    body = header + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)

    def feed(put):  # noqa: ANN001, ANN202
        put(body)
        zeros = bytes(16 * MIB)
        for _ in range(pixel_bytes // len(zeros)):
            put(zeros)

    compressed = corpus.raw_deflate(feed, level=9)
    corpus.deflated(path, deflate=lambda _body: compressed)
    return path


def test_deflate_bomb_is_capped_at_the_pixel_limit(tmp_path, small_dicom):
    """1 MB on disk, 1 GiB inflated: pydicom inflated all of it (then a traceback); the reader
    inflates in pieces and stops at the pixel limit plus the header allowance."""
    path = _deflate_bomb(tmp_path, 1024 * MIB)
    assert path.stat().st_size < 2 * MIB
    outcome = read_in_child(path, small_dicom, limit_mib=3072, env={"USVLM_MAX_PIXEL_BYTES": str(32 * MIB)})
    refused(outcome, path, "inflates to more than")
    assert outcome["growth_mib"] < 300, outcome


def test_deflated_file_within_limits_reads(tmp_path):
    from usvlm.io import read_image

    seed = corpus.deflated(tmp_path / "ok.dcm")
    assert pydicom.dcmread(seed).file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    image = read_image(seed)
    from make_bad_corpus import pattern
    np.testing.assert_array_equal(image.pixels, pattern(32, 32))


# -- Palette ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["OBXXXX1A.dcm", "gdcm-US-ALOKA-16.dcm", "examples_palette.dcm"])
def test_palette_matches_pydicom_on_little_endian_files(name):
    """Where pydicom is right (little endian files), the bounded palette gives its result exactly."""
    from conftest import us_file
    from pydicom.pixels import apply_color_lut

    from usvlm.io.dicom_palette import apply_palette

    ds = pydicom.dcmread(us_file(name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        indices = ds.pixel_array
    ours, theirs = apply_palette(indices, ds), apply_color_lut(indices, ds)[..., :3]
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


def test_segmented_expansion_matches_pydicom_and_is_bounded():
    from pydicom.pixels.processing import _expand_segmented_lut

    from usvlm.io.dicom_palette import PaletteError, expand_segmented_lut

    # discrete 3 values, linear to 200 in 5 steps, indirect replay of the first 2 segments, linear.
    table = (0, 3, 10, 20, 30, 1, 5, 200, 2, 2, 0, 0, 1, 4, 0)
    assert expand_segmented_lut(table, 65536) == _expand_segmented_lut(table, "<H")
    with pytest.raises(PaletteError, match="beyond 13 entries"):
        expand_segmented_lut(table, 13)
    bomb = struct.unpack("<3003H", corpus.segmented_linear_bomb(1000))
    with pytest.raises(PaletteError, match="beyond 65536"):
        expand_segmented_lut(bomb, 65536)


# -- 3D volumes and nesting ------------------------------------------------------------------------

def _with_pixel_element(path: Path, ds: pydicom.Dataset, nbytes: int) -> Path:
    """`ds` saved without pixel data, then a native Pixel Data element of `nbytes` zeros, written
    in pieces (the test never holds it in memory)."""
    ds.save_as(path, enforce_file_format=True)
    with open(path, "ab") as out:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, nbytes))
        zeros = bytes(16 * MIB)
        for _ in range(nbytes // len(zeros)):
            out.write(zeros)
        out.write(bytes(nbytes % len(zeros)))
    return path


def _header(sop_class: str, modality: str, rows: int, columns: int, frames: int, bits: int) -> pydicom.Dataset:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1473.97.1"
    ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames = modality, rows, columns, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    return ds


def test_3d_volume_is_refused_from_its_header(tmp_path, small_dicom):
    """A 256 MiB CT volume: refused as 3D without reading its voxels (they were read whole)."""
    ds = _header("1.2.840.10008.5.1.4.1.1.2", "CT", 512, 512, 512, 16)
    path = _with_pixel_element(tmp_path / "ct.dcm", ds, 512 * 512 * 512 * 2)
    outcome = read_in_child(path, small_dicom)
    refused(outcome, path, "3D CT volume of 512 slices")
    assert outcome["growth_mib"] < 40, outcome


def test_native_pixel_data_far_longer_than_the_header_is_not_read(tmp_path, small_dicom):
    """A 32 x 32 ultrasound image whose pixel data element holds 256 MiB: refused from the
    element's length, before its value is read."""
    ds = _header(pydicom.uid.UltrasoundImageStorage, "US", 32, 32, 1, 8)
    path = _with_pixel_element(tmp_path / "long.dcm", ds, 256 * MIB)
    outcome = read_in_child(path, small_dicom)
    refused(outcome, path, "pixel data has 268435456 bytes")
    assert outcome["growth_mib"] < 40, outcome


def test_very_deep_nesting_is_one_line(tmp_path):
    from usvlm.errors import InputError
    from usvlm.io import read_image

    for defined in (True, False):
        path = corpus.with_elements(tmp_path / f"deep_{defined}.dcm",
                                    corpus.nested_sequences(5000, defined_length=defined))
        with pytest.raises(InputError, match="nested too deeply"):
            read_image(path)


# -- De-identification -------------------------------------------------------------------------------

def _marker_value(vr: str, index: int) -> object:
    """A unique, valid value of the VR that cannot occur by chance in the SEG's bytes."""
    text = f"PHI{index:03d}Q"
    return {"DA": f"1{index:03d}0101", "TM": f"0{index % 10}1{index % 6}{index % 6}7.{index:03d}913",
            "DT": f"1{index:03d}0101101010.{index:03d}917", "AS": f"{index % 1000:03d}W",
            "DS": f"7{index:03d}.913", "IS": f"7{index:03d}913", "CS": f"PHI{index:03d}Q",
            "AE": text, "UI": f"1.2.9.77.{index}.9173"}.get(vr, text)


def phi_laden(path: Path) -> tuple[Path, list[bytes]]:
    """A US DICOM with every attribute of the Basic Profile's table filled with a unique marker
    (UIDs excepted: kept by policy), a marker in a private attribute, and a malformed birth date."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    from usvlm.io.deidentify import BASIC_PROFILE
    from usvlm_training.us_dicom import write_us_dicom

    y, x = np.mgrid[0:64, 0:64]
    write_us_dicom(path, ((x * 3 + y) % 200).astype(np.uint8), (0.2, 0.2))
    ds = pydicom.dcmread(path)
    markers: list[bytes] = []
    for index, (keyword, action) in enumerate(sorted(BASIC_PROFILE.items())):
        tag = tag_for_keyword(keyword)
        if action == "U" or keyword == "DataSetTrailingPadding" or tag >> 16 in (0x0000, 0x0002):
            continue  # kept UIDs; padding after the pixels; command and file meta groups
        vr = dictionary_VR(tag)
        if vr == "SQ":
            item = pydicom.Dataset()
            item.CodeValue, item.CodingSchemeDesignator = f"PHI{index:03d}S", "99PHI"
            item.CodeMeaning = f"PHI{index:03d}M"
            ds.add_new(tag, "SQ", [item])
            markers += [f"PHI{index:03d}S".encode(), f"PHI{index:03d}M".encode()]
        elif vr in ("US", "SS", "UL", "SL", "FL", "FD", "OB", "OW", "UN", "US or SS", "OB or OW", "AT"):
            if vr in ("OB", "OW", "UN", "OB or OW"):
                ds.add_new(tag, "OB", f"PHI{index:03d}B".encode())
                markers.append(f"PHI{index:03d}B".encode())
            continue  # binary numbers: checked by attribute below, not by bytes
        else:
            value = _marker_value(vr.split(" ")[0], index)
            ds.add_new(tag, vr.split(" ")[0], value)
            markers.append(str(value).encode())
    ds.add_new(0x00091010, "LO", "PHI-PRIVATE-Q")
    ds.add_new(0x00090010, "LO", "PHI-CREATOR-Q")
    markers += [b"PHI-PRIVATE-Q", b"PHI-CREATOR-Q"]
    ds.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    bad_date = b"BADDATE-PHIbd"
    ds._dict[Tag(0x00100030)] = RawDataElement(Tag(0x00100030), "DA", len(bad_date), bad_date, 0, False, True)
    birth_date = str(_marker_value("DA", sorted(BASIC_PROFILE).index("PatientBirthDate"))).encode()
    markers = [m for m in markers if m != birth_date] + [bad_date]
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    missing = [m for m in markers if m not in raw]
    assert not missing, f"markers not in the source: {missing[:5]}"
    return path, markers


def _deidentified_seg(tmp_path: Path) -> tuple[Path, list[bytes], object]:
    from usvlm.io import Segment, read_image, write_dicom_seg

    source, markers = phi_laden(tmp_path / "phi.dcm")
    image = read_image(source)
    mask = np.zeros(image.frame_shape, bool)
    mask[10:40, 20:50] = True
    return write_dicom_seg(tmp_path / "seg.dcm", [Segment("Mass", mask)], image, deidentify=True), markers, image


def test_phi_laden_input_leaves_no_marker_in_the_seg(tmp_path):
    from pydicom.datadict import keyword_for_tag

    from usvlm.io.deidentify import BASIC_PROFILE, WRITER_OWN

    out, markers, image = _deidentified_seg(tmp_path)
    raw = out.read_bytes()
    leaked = [m.decode() for m in markers if m in raw]
    assert not leaked, f"{len(leaked)} PHI markers in the SEG: {leaked[:10]}"
    seg = pydicom.dcmread(out)
    for element in seg.iterall():
        keyword = keyword_for_tag(element.tag)
        action = BASIC_PROFILE.get(keyword)
        assert not element.tag.is_private
        if action == "X" and keyword not in WRITER_OWN:
            pytest.fail(f"{keyword} should have been removed")
    assert seg.PatientIdentityRemoved == "YES"
    codes = [c.CodeValue for c in seg.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113110"]
    assert seg.StudyInstanceUID == image.info.dicom_header.StudyInstanceUID  # UIDs kept, by policy


def test_deidentified_phi_seg_passes_dciodvfy(tmp_path, dciodvfy):
    out, _, _ = _deidentified_seg(tmp_path)
    report = subprocess.run([dciodvfy, str(out)], capture_output=True, text=True, timeout=60)
    errors = [ln for ln in (report.stdout + report.stderr).splitlines() if ln.startswith("Error")]
    assert not errors, errors


def test_mask2seg_deidentify_and_bad_birth_date_never_echoed(tmp_path):
    """The CLI, as a user runs it: with --deidentify the SEG is written without markers; without
    it the malformed birth date stops the SEG with one line that does not quote the date."""
    import skimage.io

    source, markers = phi_laden(tmp_path / "phi.dcm")
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 20:50] = 255
    skimage.io.imsave(tmp_path / "mask.png", mask, check_contrast=False)
    usvlm = [sys.executable, "-m", "usvlm"]

    def run(*extra: str, out: str) -> subprocess.CompletedProcess:
        return subprocess.run([*usvlm, "mask2seg", str(tmp_path / "mask.png"), "--reference", str(source),
                               "-o", str(tmp_path / f"{out}.seg.nrrd"), "--dicom-seg", str(tmp_path / f"{out}.dcm"),
                               *extra], capture_output=True, text=True, timeout=300)

    done = run("--deidentify", out="anon")
    assert done.returncode == 0, done.stderr
    raw = (tmp_path / "anon.dcm").read_bytes()
    assert not [m for m in markers if m in raw]
    failed = run(out="named")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    errors = [ln for ln in failed.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and str(source) in errors[0], failed.stderr
    assert "BADDATE" not in failed.stderr + failed.stdout
    assert not (tmp_path / "named.dcm").exists() and not (tmp_path / "named.seg.nrrd").exists()


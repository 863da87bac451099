"""(Re)create the bad-input corpus `Testing/Data/bad/` deterministically.

    python Testing/Data/make_bad_corpus.py            # writes Testing/Data/bad/
    python Testing/Data/make_bad_corpus.py OUT_DIR    # writes elsewhere (the tests compare the two)

Every file is malformed on purpose: truncated and bit-flipped DICOM, lying headers (DICOM, NRRD,
PNG, JPEG, BMP, NIfTI), 1 x 1 and 20000 x 20000 claims, NaN/Inf float images, a 2,000-frame cine
claim, broken .seg.nrrd segment fields, model directories with a wrong manifest version, tampered
weights or a pickle in place of safetensors, and prompt banks that fail the schema.
`MANIFEST.json` lists each file (or model folder), what it exercises and the expected error.

Files are built byte by byte where a library's output could change between versions (PNG, TIFF,
NIfTI, NRRD, JPEG, BMP, safetensors, pickle); DICOM files come from the project's own US DICOM
writer and pydicom. Patient attributes are distinctive (`PATIENT_NAME`, `PATIENT_ID`) so tests can
check that no message ever prints them.

The pickle payloads are harmless: unpickling one opens (creates) the file named by the environment
variable USVLM_PICKLE_MARKER (default /tmp/usvlm-pickle-marker). The tests check that the marker never
appears, i.e. that nothing in USVLM unpickles model files.
"""

from __future__ import annotations

import importlib
import json
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the ROUND_TWO modules
DEFAULT_OUT = HERE / "bad"

PATIENT_NAME = "Quillfeather^Zephyrine"
PATIENT_ID = "PHI-7731-XQZ"
PICKLE_MARKER_ENV = "USVLM_PICKLE_MARKER"
PICKLE_MARKER_DEFAULT = "/tmp/usvlm-pickle-marker"

# Modules beside this file with more cases: each defines `make(out: Path, entry) -> None` and calls
# `entry(...)` (below) for every file or folder it writes into `out`.
ROUND_TWO = ("corpus_dicom2", "corpus_itk2", "corpus_models2")

# name -> (kind, exercises, expected error type[, message regex])
MANIFEST: dict[str, dict[str, str]] = {}


def entry(name: str, kind: str, exercises: str, expect: str = "InputError", match: str = "",
          stage: str = "") -> None:
    """`expect`: the error type; `match`: a regular expression the message must match;
    `stage` (models): "model" when only building the model can find the problem (load_model),
    not reading the checkpoint alone (load_checkpoint)."""
    assert name not in MANIFEST, name
    MANIFEST[name] = {"kind": kind, "exercises": exercises, "expect": expect, "match": match}
    if stage:
        MANIFEST[name]["stage"] = stage


def pattern(rows: int, columns: int, frames: int = 1) -> np.ndarray:
    """Deterministic uint8 test pixels: a gradient with a bright disc."""
    y, x = np.mgrid[0:rows, 0:columns]
    frame = ((x * 7 + y * 3) % 200).astype(np.uint8)
    frame[(y - rows // 2) ** 2 + (x - columns // 2) ** 2 < (min(rows, columns) // 4) ** 2] = 240
    return np.stack([np.roll(frame, t, axis=1) for t in range(frames)]) if frames > 1 else frame


# -- DICOM -----------------------------------------------------------------------------------------

def _base_dicom(path: Path, frames: int = 1, rows: int = 32, columns: int = 32) -> Path:
    import pydicom
    from usvlm_training.us_dicom import write_us_dicom

    write_us_dicom(path, pattern(rows, columns, frames), (0.2, 0.2), seed=7, description="bad corpus")
    ds = pydicom.dcmread(path)
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19450517"
    # Fixed UIDs and implementation name: the same bytes on every run and pydicom version.
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1473.99.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1473.99.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1473.99.3"
    ds.file_meta.ImplementationVersionName = "USVLM_BADCORPUS"
    ds.save_as(path, enforce_file_format=True)
    return path


def _edit_dicom(path: Path, edit: Callable, *, frames: int = 1, enforce: bool = True) -> None:
    import pydicom

    _base_dicom(path, frames)
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path, enforce_file_format=enforce)


def _pixel_data_offset(data: bytes) -> int:
    """Offset of the Pixel Data value in an explicit VR little endian file."""
    tag = data.rfind(b"\xe0\x7f\x10\x00")
    assert tag > 0
    return tag + 12  # tag (4) + VR "OB"/"OW" (2) + reserved (2) + length (4)


def make_dicom(out: Path) -> None:
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, RLELossless

    good = _base_dicom(out / "_good.dcm")
    data = good.read_bytes()
    good.unlink()
    pixel_at = _pixel_data_offset(data)

    def raw(name: str, payload: bytes, exercises: str, match: str = "") -> None:
        (out / name).write_bytes(payload)
        entry(name, "dicom", exercises, match=match)

    raw("dicom_zero_bytes.dcm", b"", "zero-byte DICOM file", "empty")
    raw("dicom_preamble_only.dcm", data[:132], "128-byte preamble and DICM, nothing else")
    raw("dicom_truncated_in_meta.dcm", data[:180], "cut inside the file meta information")
    raw("dicom_truncated_in_dataset.dcm", data[:pixel_at - 300], "cut inside the data set, before the pixels")
    raw("dicom_truncated_pixels_half.dcm", data[:pixel_at + (len(data) - pixel_at) // 2],
        "cut in the middle of the pixel data", "pixel data|truncated|corrupt")
    raw("dicom_truncated_last_byte.dcm", data[:-1], "one byte of pixel data missing")
    raw("dicom_not_dicom.dcm", b"This is a text file with a .dcm name.\n" * 4, "text with a DICOM name",
        "DICOM")

    def flipped(name: str, offset: int, bit: int, exercises: str) -> None:
        buf = bytearray(data)
        buf[offset] ^= 1 << bit
        raw(name, bytes(buf), exercises)

    rows_at = data.find(b"\x28\x00\x10\x00US\x02\x00") + 8
    flipped("dicom_bitflip_rows_high_bit.dcm", rows_at + 1, 7, "bit flip: Rows 32 -> 32800")
    flipped("dicom_bitflip_columns.dcm", rows_at + 10 + 1, 0, "bit flip: Columns 32 -> 288")
    flipped("dicom_bitflip_pixel_length.dcm", pixel_at - 3, 2,
            "bit flip in the Pixel Data length field: 1024 -> 0 bytes, the pixels parsed as elements")
    flipped("dicom_bitflip_pixel_vr.dcm", pixel_at - 10, 3, "bit flip in the Pixel Data VR (OW -> O_)")
    bits_at = data.find(b"\x28\x00\x00\x01US\x02\x00") + 8
    flipped("dicom_bitflip_bits_allocated.dcm", bits_at, 2, "bit flip: BitsAllocated 8 -> 12")
    ts_at = data.find(b"1.2.840.10008.1.2.1")
    flipped("dicom_bitflip_transfer_syntax.dcm", ts_at + 3, 0, "bit flip in the transfer syntax UID text")
    name_at = data.find(b"\x10\x00\x10\x00PN") + 6
    flipped("dicom_bitflip_patient_name_length.dcm", name_at + 1, 4,
            "bit flip in the Patient Name length: claims 4 KiB, swallowing the rest of the file")

    def edited(name: str, edit: Callable, exercises: str, match: str = "", frames: int = 1,
               enforce: bool = True) -> None:
        _edit_dicom(out / name, edit, frames=frames, enforce=enforce)
        entry(name, "dicom", exercises, match=match)

    def set_attrs(**attrs: object) -> Callable:
        def edit(ds: pydicom.Dataset) -> None:
            for keyword, value in attrs.items():
                setattr(ds, keyword, value)
        return edit

    edited("dicom_rows_columns_larger_than_data.dcm", set_attrs(Rows=64, Columns=64),
           "Rows/Columns 64 x 64 but pixel data of 32 x 32", "pixel data")
    edited("dicom_rows_columns_smaller_than_data.dcm", set_attrs(Rows=16, Columns=16),
           "Rows/Columns 16 x 16 but pixel data of 32 x 32 (four times too long)", "pixel data")
    edited("dicom_rows_columns_transposed_odd.dcm", set_attrs(Rows=32, Columns=48),
           "Columns 48 with pixel data for 32", "pixel data")
    edited("dicom_bits_allocated_12.dcm", set_attrs(BitsAllocated=12), "BitsAllocated 12", "BitsAllocated")
    edited("dicom_bits_allocated_16_on_8bit_data.dcm", set_attrs(BitsAllocated=16, BitsStored=16, HighBit=15),
           "BitsAllocated 16 with 8-bit pixel data", "pixel data")
    edited("dicom_bits_allocated_0.dcm", set_attrs(BitsAllocated=0), "BitsAllocated 0")
    edited("dicom_bits_stored_above_allocated.dcm", set_attrs(BitsStored=16, HighBit=15),
           "BitsStored 16 > BitsAllocated 8")
    edited("dicom_samples_per_pixel_2.dcm", set_attrs(SamplesPerPixel=2), "SamplesPerPixel 2",
           "SamplesPerPixel")
    edited("dicom_photometric_unknown.dcm", set_attrs(PhotometricInterpretation="HSV"),
           "unknown photometric interpretation", "photometric")
    edited("dicom_photometric_rgb_on_grey.dcm", set_attrs(PhotometricInterpretation="RGB", SamplesPerPixel=3,
                                                          PlanarConfiguration=0),
           "RGB claimed for one-sample data", "pixel data")

    # pydicom refuses to write these; the UID is replaced in the bytes (lengths fixed up).
    raw("dicom_transfer_syntax_unknown.dcm", _with_transfer_syntax(data, "1.2.3.4.5.6.7.8.9"),
        "unknown (private) transfer syntax UID", "transfer syntax")
    raw("dicom_transfer_syntax_not_a_syntax.dcm", _with_transfer_syntax(data, "1.2.840.10008.1.5.1"),
        "a palette SOP instance UID where the transfer syntax UID belongs", "transfer syntax")
    raw("dicom_transfer_syntax_jpeg_native_data.dcm", _with_transfer_syntax(data, JPEGBaseline8Bit),
        "JPEG baseline transfer syntax, native (not encapsulated) pixel data")

    edited("dicom_claims_20000x20000.dcm", set_attrs(Rows=20000, Columns=20000),
           "header claims 20000 x 20000 pixels", "too large")
    edited("dicom_claims_1x1.dcm", set_attrs(Rows=1, Columns=1), "header claims 1 x 1 pixel", "too small")
    edited("dicom_cine_claims_2000_frames.dcm", set_attrs(NumberOfFrames=2000),
           "cine claiming 2,000 frames with data for 4", "pixel data|frames", frames=4)
    edited("dicom_frames_negative.dcm", set_attrs(NumberOfFrames="-3"), "NumberOfFrames -3", "frames",
           frames=4)
    edited("dicom_frames_text.dcm", lambda ds: _raw_element(ds, 0x00280008, "IS", b"many"),
           "NumberOfFrames not a number", frames=4)
    edited("dicom_no_pixel_data.dcm", lambda ds: delattr(ds, "PixelData"), "no Pixel Data element", "no image")
    _edit_dicom(out / "dicom_pixel_spacing_text.dcm", _spacing_text)
    entry("dicom_pixel_spacing_text.dcm", "dicom", "Pixel Spacing that is not a number (no region "
          "calibration)", match="spacing")
    edited("dicom_region_delta_huge.dcm", _region_delta_huge, "ultrasound region calibration of 10 km per pixel",
           "spacing")

    # RLE cine claiming 2,000 frames: the encapsulated data holds 4.
    rle = out / "dicom_rle_cine_claims_2000_frames.dcm"
    _base_dicom(rle, frames=4)
    ds = pydicom.dcmread(rle)
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    ds.NumberOfFrames = 2000
    ds.save_as(rle, enforce_file_format=True)
    entry(rle.name, "dicom", "RLE-compressed cine claiming 2,000 frames, 4 fragments", match="frames")

    rle = out / "dicom_rle_corrupt_segment.dcm"
    _base_dicom(rle)
    ds = pydicom.dcmread(rle)
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    fragment = bytearray(b"\x01\x00\x00\x00\x40\x00\x00\x00" + b"\x00" * 56 + b"\x80\x7f" * 8)
    ds.PixelData = encapsulate([bytes(fragment)])
    ds.save_as(rle, enforce_file_format=True)
    entry(rle.name, "dicom", "RLE segment that decodes to far too few bytes", match="decod")


def _with_transfer_syntax(data: bytes, uid: str) -> bytes:
    """The file with another transfer syntax UID in its meta information (no validation)."""
    old = b"\x02\x00\x10\x00UI"
    at = data.find(old)
    length = struct.unpack("<H", data[at + 6:at + 8])[0]
    value = uid.encode() + (b"\x00" if len(uid) % 2 else b"")
    group_at = data.find(b"\x02\x00\x00\x00UL\x04\x00") + 8
    group = struct.unpack("<I", data[group_at:group_at + 4])[0] + len(value) - length
    out = data[:at + 6] + struct.pack("<H", len(value)) + value + data[at + 8 + length:]
    return out[:group_at] + struct.pack("<I", group) + out[group_at + 4:]


def _raw_element(ds, tag: int, vr: str, value: bytes) -> None:  # noqa: ANN001
    """Put an element in as raw bytes: pydicom would refuse to convert the invalid value."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _spacing_text(ds) -> None:  # noqa: ANN001
    del ds.SequenceOfUltrasoundRegions
    _raw_element(ds, 0x00280030, "DS", b"abc\\def")


def _region_delta_huge(ds) -> None:  # noqa: ANN001
    ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaX = 1.0e6
    ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaY = 1.0e6


# -- NRRD / NIfTI ----------------------------------------------------------------------------------

def _nrrd(fields: list[str], data: bytes = b"") -> bytes:
    return ("NRRD0004\n" + "".join(f"{f}\n" for f in fields) + "\n").encode("ascii") + data


def make_nrrd(out: Path) -> None:
    ok = ["type: uint8", "dimension: 2", "sizes: 32 32", "spacings: 0.2 0.2", "endian: little"]
    pixels = pattern(32, 32).tobytes()

    def nrrd(name: str, fields: list[str], data: bytes, exercises: str, match: str = "") -> None:
        (out / name).write_bytes(_nrrd(fields, data))
        entry(name, "nrrd", exercises, match=match)

    def replace(field: str, value: str | None) -> list[str]:
        kept = [f for f in ok if not f.startswith(field + ":")]
        return kept + ([f"{field}: {value}"] if value is not None else [])

    nrrd("nrrd_sizes_lie.nrrd", replace("sizes", "64 64") + ["encoding: raw"], pixels,
         "header says 64 x 64, data holds 32 x 32")
    nrrd("nrrd_encoding_unknown.nrrd", ok + ["encoding: rot13"], pixels, "unknown encoding")
    nrrd("nrrd_type_unknown.nrrd", replace("type", "banana") + ["encoding: raw"], pixels, "unknown type")
    nrrd("nrrd_type_block.nrrd", replace("type", "block") + ["block size: 4", "encoding: raw"], pixels,
         "block type (opaque records, not pixels)")
    nrrd("nrrd_gzip_corrupt.nrrd", ok + ["encoding: gzip"], b"\x1f\x8b\x08\x00" + bytes(range(200)),
         "gzip encoding with a corrupt stream")
    nrrd("nrrd_gzip_truncated.nrrd", ok + ["encoding: gzip"],
         _gzip(pixels)[:60], "gzip stream cut short")
    nrrd("nrrd_claims_20000x20000.nrrd", replace("sizes", "20000 20000") + ["encoding: raw"], pixels,
         "header claims 20000 x 20000 pixels", "too large")
    nrrd("nrrd_claims_1x1.nrrd", replace("sizes", "1 1") + ["encoding: raw"], b"\x00",
         "header claims 1 x 1 pixel", "too small")
    nrrd("nrrd_cine_claims_2000_frames.nrrd", ["type: uint8", "dimension: 3", "sizes: 32 32 2000",
                                               "spacings: 0.2 0.2 1", "encoding: raw"], pixels * 4,
         "volume claiming 2,000 frames of 32 x 32 with data for 4")
    nrrd("nrrd_dimension_mismatch.nrrd", replace("dimension", "3") + ["encoding: raw"], pixels,
         "dimension 3 with two sizes")
    nrrd("nrrd_negative_size.nrrd", replace("sizes", "-32 32") + ["encoding: raw"], pixels,
         "negative size")
    nrrd("nrrd_float_nan.nrrd", replace("type", "float") + ["encoding: raw"],
         np.full((32, 32), np.nan, "<f4").tobytes(), "float image of NaN", "NaN")
    nrrd("nrrd_float_inf.nrrd", replace("type", "float") + ["encoding: raw"],
         np.where(pattern(32, 32) > 100, np.inf, -np.inf).astype("<f4").tobytes(),
         "float image of +/-Inf", "infinite")
    nrrd("nrrd_directions_degenerate.nrrd",
         [f for f in ok if not f.startswith("spacings")] + ["space: left-posterior-superior",
                                                             "space directions: (0,0) (0,0)",
                                                             "encoding: raw"], pixels,
         "all-zero space directions (no geometry)")
    nrrd("nrrd_detached_missing_data.nhdr", ok + ["encoding: raw", "data file: no_such_file.raw"], b"",
         "detached header whose data file does not exist")
    nrrd("nrrd_header_only.nrrd", ok + ["encoding: raw"], b"", "header and no data")
    (out / "nrrd_bad_magic.nrrd").write_bytes(b"NRRD9999\n" + _nrrd(ok + ["encoding: raw"], pixels)[9:])
    entry("nrrd_bad_magic.nrrd", "nrrd", "unknown NRRD format version")
    (out / "nrrd_zero_bytes.nrrd").write_bytes(b"")
    entry("nrrd_zero_bytes.nrrd", "nrrd", "zero-byte NRRD", match="empty")

    (out / "nifti_float_nan.nii").write_bytes(_nifti(np.full((32, 32), np.nan, "<f4")))
    entry("nifti_float_nan.nii", "nifti", "NIfTI float image of NaN", match="NaN")
    (out / "nifti_float_inf.nii").write_bytes(_nifti(np.full((32, 32), np.inf, "<f4")))
    entry("nifti_float_inf.nii", "nifti", "NIfTI float image of Inf", match="infinite")
    (out / "nifti_header_only.nii").write_bytes(_nifti(np.zeros((32, 32), "<f4"))[:352])
    entry("nifti_header_only.nii", "nifti", "NIfTI header without voxels")
    (out / "nifti_claims_20000x20000.nii").write_bytes(_nifti(np.zeros((32, 32), "u1"), claim=(20000, 20000)))
    entry("nifti_claims_20000x20000.nii", "nifti", "NIfTI header claims 20000 x 20000", match="too large")
    (out / "nifti_zero_bytes.nii").write_bytes(b"")
    entry("nifti_zero_bytes.nii", "nifti", "zero-byte NIfTI", match="empty")


def _gzip(data: bytes) -> bytes:
    """gzip with a fixed header (mtime 0) and stored blocks: the same bytes with any zlib."""
    compressor = zlib.compressobj(0, zlib.DEFLATED, -15)
    body = compressor.compress(data) + compressor.flush()
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body
            + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF))


def _nifti(array: np.ndarray, claim: tuple[int, int] | None = None) -> bytes:
    """A NIfTI-1 single file (.nii) of a 2D array, header written field by field."""
    header = bytearray(348)
    rows, columns = claim or array.shape
    datatype, bitpix = {np.dtype("<f4"): (16, 32), np.dtype("u1"): (2, 8)}[array.dtype]
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 2, columns, rows, 1, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1.0, 0.2, 0.2, 1.0, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<fff", header, 108, 352.0, 1.0, 0.0)  # vox_offset, scl_slope, scl_inter
    header[123] = 2  # xyzt_units: mm
    header[344:348] = b"n+1\x00"
    return bytes(header) + b"\x00" * 4 + array.tobytes()


# -- PNG / JPEG / BMP / TIFF -----------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def _png(width: int, height: int, pixels: np.ndarray | None = None, *, ihdr_crc: int | None = None,
         idat_crc: int | None = None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    pixels = pattern(32, 32) if pixels is None else pixels
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr, ihdr_crc)
            + _chunk(b"IDAT", zlib.compress(raw, 0), idat_crc) + _chunk(b"IEND", b""))


def _tiff_float(array: np.ndarray) -> bytes:
    """A minimal little-endian single-strip float32 TIFF."""
    rows, columns = array.shape
    data = array.astype("<f4").tobytes()
    entries = [(256, 3, 1, columns), (257, 3, 1, rows), (258, 3, 1, 32), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 3, 1, rows), (279, 4, 1, len(data)), (339, 3, 1, 3)]
    ifd_size = 2 + 12 * len(entries) + 4
    data_at = 8 + ifd_size
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        value = data_at if tag == 273 else value
        fmt = "<HHIHH" if kind == 3 else "<HHII"
        out += struct.pack(fmt, tag, kind, count, value, 0) if kind == 3 else struct.pack(fmt, tag, kind, count, value)
    out += struct.pack("<I", 0)
    return bytes(out) + data


def make_raster(out: Path) -> None:
    def raw(name: str, payload: bytes, kind: str, exercises: str, match: str = "") -> None:
        (out / name).write_bytes(payload)
        entry(name, kind, exercises, match=match)

    good = _png(32, 32)
    raw("png_ihdr_bad_crc.png", _png(32, 32, ihdr_crc=0x12345678), "png", "IHDR chunk with a wrong CRC")
    raw("png_idat_bad_crc.png", _png(32, 32, idat_crc=0xDEADBEEF), "png", "IDAT chunk with a wrong CRC")
    raw("png_claims_20000x20000.png", _png(20000, 20000), "png", "IHDR claims 20000 x 20000, data for 32 x 32",
        "too large")
    raw("png_claims_1x1.png", _png(1, 1, np.zeros((1, 1), np.uint8)), "png", "1 x 1 pixel PNG", "too small")
    raw("png_ihdr_lies_64x64.png", _png(64, 64), "png", "IHDR claims 64 x 64, data for 32 x 32")
    raw("png_truncated.png", good[: len(good) // 2], "png", "PNG cut in the middle of IDAT")
    raw("png_signature_only.png", good[:8], "png", "PNG signature and nothing else")
    raw("png_zero_bytes.png", b"", "png", "zero-byte PNG", "empty")
    raw("jpeg_truncated.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        + b"\xff\xdb\x00\x43\x00" + bytes(20), "jpeg", "JPEG cut inside its quantisation table")
    sof = b"\xff\xc0\x00\x0b\x08" + struct.pack(">HH", 20000, 20000) + b"\x01\x01\x11\x00"
    raw("jpeg_claims_20000x20000.jpg", b"\xff\xd8" + sof + b"\xff\xd9", "jpeg",
        "JPEG frame header claims 20000 x 20000, no scan", "too large")
    bmp_header = (b"BM" + struct.pack("<IHHI", 54, 0, 0, 54)
                  + struct.pack("<IiiHHIIiiII", 40, 20000, 20000, 1, 24, 0, 0, 2835, 2835, 0, 0))
    raw("bmp_claims_20000x20000.bmp", bmp_header, "bmp", "BMP header claims 20000 x 20000, no pixels",
        "too large")
    raw("tiff_float_nan.tif", _tiff_float(np.full((32, 32), np.nan)), "tiff", "float32 TIFF of NaN", "NaN")
    raw("tiff_float_inf.tif", _tiff_float(np.where(pattern(32, 32) > 100, np.inf, 1.0)), "tiff",
        "float32 TIFF with +Inf", "infinite")
    tiff = _tiff_float(pattern(32, 32).astype(float))
    raw("tiff_truncated.tif", tiff[: len(tiff) // 3], "tiff", "float TIFF cut inside its strip")


# -- .seg.nrrd -------------------------------------------------------------------------------------

_SEG_BASE = ["type: unsigned char", "dimension: 3", "space: left-posterior-superior", "sizes: 16 16 1",
             "space directions: (0.2,0,0) (0,0.2,0) (0,0,1)", "kinds: domain domain domain",
             "endian: little", "space origin: (0,0,0)"]


def _seg_fields(index: int, **fields: str) -> list[str]:
    defaults = {"ID": f"Segment_{index + 1}", "Name": f"structure {index + 1}", "LabelValue": str(index + 1),
                "Layer": "0", "Color": "1 0 0", "Extent": "0 15 0 15 0 0"}
    defaults.update(fields)
    return [f"Segment{index}_{k}:={v}" for k, v in defaults.items() if v is not None]


def _seg_voxels(layers: int = 1) -> bytes:
    labels = np.zeros((layers, 16, 16), np.uint8)
    labels[:, 4:10, 4:10] = 1
    labels[0, 10:14, 10:14] = 2
    return labels.tobytes()


def make_seg(out: Path) -> None:
    def seg(name: str, fields: list[str], data: bytes, exercises: str, match: str = "") -> None:
        (out / name).write_bytes(_nrrd(fields, data))
        entry(name, "seg", exercises, match=match)

    enc = ["encoding: raw"]
    two = _seg_fields(0) + _seg_fields(1)
    four_d = ["type: unsigned char", "dimension: 4", "space: left-posterior-superior", "sizes: 2 16 16 1",
              "space directions: none (0.2,0,0) (0,0.2,0) (0,0,1)", "kinds: list domain domain domain",
              "endian: little", "space origin: (0,0,0)"]
    layered = np.zeros((16, 16, 2), np.uint8)  # NRRD order: the layer axis varies fastest
    layered[4:10, 4:10, 0] = 1
    layered[6:12, 6:12, 1] = 1
    seg("seg_overlap_same_label.seg.nrrd", _SEG_BASE + enc + _seg_fields(0) + _seg_fields(1, LabelValue="1"),
        _seg_voxels(), "two segments share label value 1 in layer 0 (overlap is ambiguous)", "label value")
    seg("seg_duplicate_ids.seg.nrrd", _SEG_BASE + enc + _seg_fields(0) + _seg_fields(1, ID="Segment_1"),
        _seg_voxels(), "two segments with the same ID", "ID")
    seg("seg_missing_label_values.seg.nrrd",
        _SEG_BASE + enc + _seg_fields(0, LabelValue=None) + _seg_fields(1, LabelValue=None),
        _seg_voxels(), "two segments without LabelValue (both default to 1)", "label value")
    seg("seg_4d_missing_layer.seg.nrrd", four_d + enc + _seg_fields(0, LabelValue="1")
        + _seg_fields(1, LabelValue="1", Layer=None), layered.tobytes(),
        "two-layer segmentation; one segment without Layer collides with the other", "label value")
    seg("seg_layer_out_of_range.seg.nrrd", four_d + enc + _seg_fields(0, LabelValue="1")
        + _seg_fields(1, LabelValue="1", Layer="5"), layered.tobytes(),
        "segment in layer 5 of a two-layer file", "layer")
    seg("seg_label_value_text.seg.nrrd", _SEG_BASE + enc + _seg_fields(0, LabelValue="one"), _seg_voxels(),
        "LabelValue that is not a number")
    seg("seg_color_text.seg.nrrd", _SEG_BASE + enc + _seg_fields(0, Color="red"), _seg_voxels(),
        "Color that is not three numbers")
    seg("seg_tags_malformed.seg.nrrd", _SEG_BASE + enc + _seg_fields(0) + ["Segment0_Tags:=no colon here|"],
        _seg_voxels(), "Tags field without key:value")
    seg("seg_terminology_malformed.seg.nrrd", _SEG_BASE + enc + _seg_fields(0)
        + ["Segment0_Tags:=TerminologyEntry:garbage~|"], _seg_voxels(), "TerminologyEntry that is not a terminology")
    seg("seg_no_segments.seg.nrrd", _SEG_BASE + enc, _seg_voxels(), "no Segment fields at all", "no segments")
    seg("seg_kinds_bad.seg.nrrd", [f if not f.startswith("kinds") else "kinds: domain domain list"
                                   for f in _SEG_BASE] + enc + _seg_fields(0), _seg_voxels(), "kinds not domain")
    seg("seg_space_unknown.seg.nrrd", [f if not f.startswith("space:") else "space: scanner-xyz"
                                       for f in _SEG_BASE] + enc + _seg_fields(0), _seg_voxels(),
        "space not LPS/RAS")
    seg("seg_2d.seg.nrrd", ["type: unsigned char", "dimension: 2", "sizes: 16 16", "encoding: raw"]
        + _seg_fields(0), _seg_voxels(), "2D NRRD (no slice axis)")
    seg("seg_sizes_lie.seg.nrrd", [f if not f.startswith("sizes") else "sizes: 64 64 1" for f in _SEG_BASE]
        + enc + _seg_fields(0), _seg_voxels(), "header sizes 64 x 64, data for 16 x 16")
    seg("seg_gzip_corrupt.seg.nrrd", _SEG_BASE + ["encoding: gzip"] + _seg_fields(0),
        b"\x1f\x8b\x08\x00" + bytes(range(100)), "gzip stream that is not gzip")
    seg("seg_directions_degenerate.seg.nrrd", [f if not f.startswith("space directions") else
                                               "space directions: (0,0,0) (0,0,0) (0,0,0)" for f in _SEG_BASE]
        + enc + _seg_fields(0), _seg_voxels(), "all-zero space directions")
    (out / "seg_zero_bytes.seg.nrrd").write_bytes(b"")
    entry("seg_zero_bytes.seg.nrrd", "seg", "zero-byte .seg.nrrd")
    (out / "seg_nifti_named.nii").write_bytes(_nifti(np.zeros((16, 16), "u1")))
    entry("seg_nifti_named.nii", "seg", "a NIfTI given where a .seg.nrrd is expected")


# -- Models ----------------------------------------------------------------------------------------

# The manifest of a tiny test model (Testing/models.py), as USVLM writes it; files are filled in.
TINY_MANIFEST = {
    "format_version": 1, "name": "tiny-mona", "description": "bad corpus model",
    "backbone": {"id": "config", "config": {"embed_dim": 64, "vision_cfg": {
        "image_size": 64, "layers": 4, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}},
        "bundled": True, "weights_sha256": None, "level_indices": [0, 1, 2]},
    "adapter": {"type": "mona", "kind": "mona", "bottleneck": 16, "dropout": 0.1, "blocks": None,
                "kernel_sizes": [3, 5, 7], "lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.0,
                "lora_targets": None},
    "heads": {"segmentation": {"level_channels": [64, 64, 64], "text_dim": 64, "width": 32, "out_size": 64,
                               "decoder": "bilinear", "patch_size": 16, "decoder_width": 128},
              "classification": {"level_channels": [64, 64, 64], "num_classes": 2, "embed_dim": 64,
                                 "hidden": 0, "dropout": 0.0}},
    "preprocessing": {"input_size": 64, "mean": [0.48145466, 0.4578275, 0.40821073],
                      "std": [0.26862954, 0.26130258, 0.27577711], "color": "grey"},
    "prompts": {"default": []},
    "class_names": ["benign", "malignant"], "thresholds": {"segmentation": 0.5}, "temperature": 1.0,
    "provenance": {"created": "2026-01-01T00:00:00+00:00"}, "metrics": {},
}


def _safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None) -> bytes:
    """safetensors bytes written by hand (8-byte header length, JSON header, data)."""
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data, offset = b"", 0
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array, "<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def _pickle_payload() -> bytes:
    """Protocol-2 pickle that, if loaded, calls open(os.getenv(MARKER_ENV, default), "w")."""
    def text(s: str) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s.encode()

    return (b"\x80\x02" + b"cbuiltins\nopen\n" + b"(" + b"cos\ngetenv\n" + b"(" + text(PICKLE_MARKER_ENV)
            + text(PICKLE_MARKER_DEFAULT) + b"tR" + text("w") + b"tR.")


def _torch_zip(payload: bytes) -> bytes:
    """A torch.save-style zip archive (archive/data.pkl) with fixed timestamps."""
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in (("archive/data.pkl", payload), ("archive/version", b"3\n"),
                           ("archive/byteorder", b"little")):
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def make_models(out: Path) -> None:
    import hashlib

    parts_meta = {"format": "pt", "usvlm.format_version": "1",
                  "usvlm.parts": json.dumps(["backbone", "adapters", "heads.segmentation",
                                             "heads.classification"])}
    small = _safetensors({"heads.segmentation.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}, parts_meta)

    def model(name: str, weights: bytes | None, exercises: str, *, manifest: object = None,
              manifest_text: bytes | None = None, listed: bytes | None = None, match: str = "",
              expect: str = "CheckpointError", stage: str = "") -> None:
        folder = out / name
        folder.mkdir()
        if weights is not None:
            (folder / "model.safetensors").write_bytes(weights)
        if manifest_text is None:
            body = dict(TINY_MANIFEST) if manifest is None else manifest
            if isinstance(body, dict) and "files" not in body:
                listed_bytes = weights if listed is None else listed
                body = {**body, "files": {"model.safetensors": {
                    "sha256": hashlib.sha256(listed_bytes or b"").hexdigest(),
                    "bytes": len(listed_bytes or b"")}}}
            manifest_text = (json.dumps(body, indent=2) + "\n").encode()
        (folder / "manifest.json").write_bytes(manifest_text)
        # Stamped as USVLM stamps a saved model: each case exercises its own defect, not a missing
        # manifest.sha256 (that one is a case of corpus_models2).
        (folder / "manifest.sha256").write_text(
            f"{hashlib.sha256(manifest_text).hexdigest()}  manifest.json\n", encoding="utf-8")
        entry(name, "model", exercises, expect=expect, match=match, stage=stage)

    model("model_manifest_version_99", small, "manifest format_version 99 (a newer USVLM)",
          manifest={**TINY_MANIFEST, "format_version": 99}, match="newer")
    model("model_manifest_version_0", small, "manifest format_version 0", manifest={**TINY_MANIFEST, "format_version": 0},
          match="format_version")
    model("model_manifest_version_text", small, "manifest format_version \"1\" (a string)",
          manifest={**TINY_MANIFEST, "format_version": "1"}, match="format_version")
    tampered = bytearray(small)
    tampered[-3] ^= 0x40
    model("model_tampered_weights", bytes(tampered), "weights changed after saving (sha256 mismatch)",
          listed=small, match="sha256")
    model("model_truncated_weights", small[:-8], "weights cut short (size mismatch)", listed=small, match="bytes")
    model("model_missing_weights", None, "manifest lists model.safetensors, file absent", listed=small,
          match="missing")
    model("model_pickle_as_safetensors", _pickle_payload(), "a pickle renamed model.safetensors (listed with "
          "its true sha256); loading must refuse, never unpickle", match="pickle")
    model("model_torch_zip_as_safetensors", _torch_zip(_pickle_payload()), "a torch.save zip (pickle inside) "
          "renamed model.safetensors", match="pickle")
    header_lie = struct.pack("<Q", 1 << 60) + b'{"a":1}'
    model("model_safetensors_header_lies", header_lie, "safetensors header length claims 2^60 bytes",
          match="safetensors")
    model("model_safetensors_tensor_out_of_range",
          struct.pack("<Q", 80) + json.dumps({"w": {"dtype": "F32", "shape": [1000000, 1000],
                                                    "data_offsets": [0, 4000000000]}}).encode().ljust(80)
          + b"\x00" * 16, "tensor claiming 4 GB in a 100-byte file", match="safetensors")
    model("model_weights_wrong_shapes", small, "valid safetensors whose tensors do not fit the model",
          match="does not fit", stage="model")
    model("model_weights_without_parts", _safetensors({"w": np.zeros(2, np.float32)}, {"format": "pt"}),
          "safetensors without USVLM part metadata", match="parts|does not fit|missing")
    model("model_manifest_not_json", small, "manifest is not JSON", manifest_text=b"{ this is not json\n",
          match="JSON")
    model("model_manifest_empty", small, "zero-byte manifest", manifest_text=b"", match="JSON")
    model("model_manifest_deep_nesting", small, "manifest nested 5000 levels deep",
          manifest_text=b"[" * 5000 + b"]" * 5000)
    model("model_manifest_not_utf8", small, "manifest in Latin-1 with a non-ASCII byte",
          manifest_text=b'{"name": "mod\xe8le"}\n')
    model("model_manifest_schema_violation", small, "manifest with a misspelt field and no heads",
          manifest={k: v for k, v in TINY_MANIFEST.items() if k != "heads"} | {"threshold": 0.5})
    model("model_manifest_path_traversal", small, "manifest files entry pointing outside the model",
          manifest={**TINY_MANIFEST, "files": {"model.safetensors": {"sha256": "0" * 64, "bytes": 1},
                                               "../../outside.bin": {"sha256": "0" * 64, "bytes": 1}}})
    model("model_manifest_unbuildable", small, "manifest whose backbone config cannot be built",
          manifest={**TINY_MANIFEST, "backbone": {**TINY_MANIFEST["backbone"],  # type: ignore[dict-item]
                                                  "config": {"embed_dim": -5, "vision_cfg": "tiny"}}},
          stage="model")
    model("model_manifest_top_level_list", small, "manifest is a JSON list", manifest_text=b"[1, 2, 3]\n")


# -- Prompt banks ----------------------------------------------------------------------------------

_BANK = {"format": "usvlm-prompt-bank/1", "id": "corpus", "name": "Corpus organ",
         "structures": [{"id": "lump", "name": "Corpus lump", "terminology": {"term": "mass"},
                         "prompts": ["a corpus lump on ultrasound"]}]}


def make_banks(out: Path) -> None:
    def bank(name: str, data: object, exercises: str, *, text: bytes | None = None, match: str = "") -> None:
        (out / name).write_bytes(text if text is not None else (json.dumps(data, indent=2) + "\n").encode())
        entry(name, "bank", exercises, match=match)

    structure = _BANK["structures"][0]  # type: ignore[index]
    bank("bank_not_json.json", None, "not JSON", text=b'{"format": "usvlm-prompt-bank/1",', match="JSON")
    bank("bank_zero_bytes.json", None, "zero-byte bank", text=b"", match="JSON")
    bank("bank_top_level_list.json", [_BANK], "a list instead of an object")
    bank("bank_wrong_format.json", {**_BANK, "format": "usvlm-prompt-bank/2"}, "unknown format version",
         match="format")
    bank("bank_missing_structures.json", {k: v for k, v in _BANK.items() if k != "structures"},
         "no structures", match="structures")
    bank("bank_bad_id.json", {**_BANK, "id": "Corpus Organ!"}, "id not matching ^[a-z][a-z0-9_]*$", match="id")
    bank("bank_unknown_field.json", {**_BANK, "colour": "#ff0000"}, "misspelt top-level field")
    bank("bank_prompts_not_strings.json", {**_BANK, "structures": [{**structure, "prompts": [1, 2]}]},
         "prompts that are numbers")
    bank("bank_duplicate_structure_ids.json", {**_BANK, "structures": [structure, structure]},
         "two structures with the same id")
    bank("bank_unknown_term.json", {**_BANK, "structures": [{**structure, "terminology": {"term": "banana"}}]},
         "terminology term that does not exist", match="term")
    bank("bank_deep_nesting.json", None, "JSON nested 5000 levels deep", text=b"[" * 5000 + b"]" * 5000)
    bank("bank_not_utf8.json", None, "Latin-1 bytes", text=b'{"name": "\xe9chographie"}\n')


def build(out: Path) -> dict[str, dict[str, str]]:
    MANIFEST.clear()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    make_dicom(out)
    make_nrrd(out)
    make_raster(out)
    make_seg(out)
    make_models(out)
    make_banks(out)
    for module in ROUND_TWO:  # the second hardening round's cases, one module per area
        importlib.import_module(module).make(out, entry)
    listing = {"description": "Malformed inputs; every reader, loader and CLI command must refuse each "
                              "with the project's own error naming the file (CLI exit code 2). Made by "
                              "Testing/Data/make_bad_corpus.py; do not edit by hand.",
               "patient_name": PATIENT_NAME, "patient_id": PATIENT_ID,
               "pickle_marker_env": PICKLE_MARKER_ENV, "pickle_marker_default": PICKLE_MARKER_DEFAULT,
               "files": dict(sorted(MANIFEST.items()))}
    (out / "MANIFEST.json").write_text(json.dumps(listing, indent=2) + "\n", encoding="utf-8")
    return MANIFEST


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    with tempfile.TemporaryDirectory() as tmp:  # build aside, then replace: never a half corpus
        staged = Path(tmp) / "bad"
        files = build(staged)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(files)} bad inputs ({size / 1024:.0f} KiB) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Bad-input corpus, second hardening round: NRRD / NHDR / MHD / NIfTI and raster files: detached data files outside the header's folder, ASCII NRRD, bad vox_offset, spacing, TIFF, CMYK JPEG, GIF.

Called by make_bad_corpus.py (`make(out, entry)`); every file written here is listed with `entry`.
All files are built byte by byte.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path

from make_bad_corpus import _nifti, _nrrd, pattern

_OK = ["type: uint8", "dimension: 2", "sizes: 32 32", "endian: little"]
_OUTSIDE = "lies outside the header's folder"


def make(out: Path, entry: Callable[..., None]) -> None:
    """Write this area's cases into `out`."""
    pixels = pattern(32, 32).tobytes()

    def write(name: str, data: bytes, kind: str, exercises: str, match: str = "") -> None:
        (out / name).write_bytes(data)
        entry(name, kind, exercises, match=match)

    def nrrd(name: str, fields: list[str], data: bytes, exercises: str, match: str = "") -> None:
        write(name, _nrrd(fields, data), "nrrd", exercises, match)

    def meta(name: str, fields: list[str], data: bytes, exercises: str, match: str = "") -> None:
        write(name, "".join(f"{f}\n" for f in fields).encode("ascii") + data, "nrrd", exercises, match)

    # -- detached data files (item 5) --------------------------------------------------------------
    spaced = _OK + ["spacings: 0.2 0.2", "encoding: raw"]
    nrrd("itk2_nhdr_data_file_absolute.nhdr", spaced + ["data file: /etc/passwd"], b"",
         "detached header whose data file is /etc/passwd", _OUTSIDE)
    nrrd("itk2_nhdr_data_file_dotdot.nhdr", spaced + ["data file: ../make_bad_corpus.py"], b"",
         "detached header whose data file is ../ (a real file outside its folder)", _OUTSIDE)
    nrrd("itk2_nhdr_data_file_dev_zero.nhdr", spaced + ["data file: /dev/zero"], b"",
         "detached header whose data file is a device", _OUTSIDE)
    nrrd("itk2_nhdr_data_file_list_outside.nhdr",
         ["type: uint8", "dimension: 3", "sizes: 32 32 2", "encoding: raw", "data file: LIST",
          "itk2_gif_image.gif", "../corpus_itk2.py"], b"",
         "detached header listing one data file outside its folder", _OUTSIDE)
    nrrd("itk2_nhdr_data_file_pattern_outside.nhdr",
         ["type: uint8", "dimension: 3", "sizes: 32 32 2", "encoding: raw", "data file: ../slice%d.raw 1 2 1"],
         b"", "detached header with a printf pattern of data files outside its folder", _OUTSIDE)
    nrrd("itk2_nhdr_data_file_pattern_endless.nhdr",
         ["type: uint8", "dimension: 3", "sizes: 32 32 2", "encoding: raw", "data file: s%d.raw 1 2 0"],
         b"", "data file pattern with step 0", "never ends")
    nrrd("itk2_nhdr_data_file_is_folder.nhdr", spaced + ["data file: ."], b"",
         "detached header whose data file is its own folder", "not a regular file")
    nrrd("itk2_nhdr_data_file_wrong_size.nhdr", spaced + ["data file: itk2_gif_image.gif"], b"",
         "detached raw data file of another size than the header implies", "holds 44 bytes")
    meta("itk2_mhd_data_file_absolute.mhd",
         ["ObjectType = Image", "NDims = 2", "DimSize = 32 32", "ElementSpacing = 0.2 0.2",
          "ElementType = MET_UCHAR", "ElementDataFile = /etc/passwd"], b"",
         "MetaImage header whose data file is /etc/passwd", _OUTSIDE)
    meta("itk2_mhd_data_file_dotdot.mhd",
         ["ObjectType = Image", "NDims = 2", "DimSize = 32 32", "ElementType = MET_UCHAR",
          "ElementDataFile = ../make_bad_corpus.py"], b"",
         "MetaImage header whose data file is ../", _OUTSIDE)
    meta("itk2_mha_data_file_absolute.mha",
         ["ObjectType = Image", "NDims = 2", "DimSize = 32 32", "ElementType = MET_UCHAR",
          "ElementDataFile = /etc/passwd"], b"",
         ".mha (normally attached) naming /etc/passwd as its data file", _OUTSIDE)

    seg = ["type: unsigned char", "dimension: 3", "sizes: 16 16 1", "encoding: raw", "Segment0_ID:=Segment_1",
           "Segment0_Name:=x", "Segment0_LabelValue:=1", "Segment0_Layer:=0"]
    write("itk2_seg_data_file_absolute.seg.nrrd", _nrrd(seg + ["data file: /etc/passwd"]), "seg",
          ".seg.nrrd whose data file is /etc/passwd", _OUTSIDE)

    # -- lying sizes (item 4) ----------------------------------------------------------------------
    nrrd("itk2_nrrd_ascii_claims_4000x4000.nrrd", ["type: uint8", "dimension: 2", "sizes: 4000 4000",
                                                   "encoding: ascii"], b"1 2 3\n",
         "ASCII NRRD claiming 16 M values with 3 in the file", "too few")
    nrrd("itk2_nrrd_hex_claims_4000x4000.nrrd", ["type: uint8", "dimension: 2", "sizes: 4000 4000",
                                                 "encoding: hex"], b"0a0b0c\n",
         "hex NRRD claiming 16 MB with 3 bytes in the file", "too few")
    nrrd("itk2_nrrd_volume_sequence.nrrd",
         ["type: uint8", "dimension: 4", "sizes: 32 32 2 2", "encoding: raw"], pixels * 4,
         "4D sequence of 3D volumes (refused from the header, also as a cine)", "sequence of 3D volumes")
    nrrd("itk2_nrrd_bzip2.nrrd", _OK + ["encoding: bzip2"], b"BZh9" + bytes(40),
         "bzip2 encoding (ITK's NRRD reader lacks it)", "bzip2")

    # -- NIfTI vox_offset (item 10) ----------------------------------------------------------------
    for label, value in (("nan", math.nan), ("inf", math.inf), ("negative", -352.0), ("beyond_file", 1.0e9),
                         ("inside_header", 100.0), ("fraction", 352.5)):
        data = bytearray(_nifti(pattern(32, 32)))
        struct.pack_into("<f", data, 108, value)
        write(f"itk2_nifti_vox_offset_{label}.nii", bytes(data), "nifti", f"NIfTI vox_offset {label}",
              "vox_offset" if label != "beyond_file" else "holds 0 bytes")

    # -- spacing (item 8): damaged values are refused, missing ones read as uncalibrated -----------
    nrrd("itk2_nrrd_spacing_inf.nrrd", _OK + ["space dimension: 2", "space directions: (inf,0) (0,0.2)",
                                              "encoding: raw"], pixels, "space direction of infinite length",
         "infinite")
    nrrd("itk2_nrrd_spacing_zero.nrrd", _OK + ["spacings: 0 0.2", "encoding: raw"], pixels, "zero spacing",
         "zero")
    nrrd("itk2_nrrd_spacing_absurd.nrrd", _OK + ["spacings: 1e6 1e6", "encoding: raw"], pixels,
         "spacing of a kilometre per pixel", "implausible pixel spacing")
    data = bytearray(_nifti(pattern(32, 32)))
    struct.pack_into("<ff", data, 80, math.nan, math.nan)
    write("itk2_nifti_pixdim_nan.nii", bytes(data), "nifti", "NIfTI pixdim NaN", "pixdim")
    data = bytearray(_nifti(pattern(32, 32)))
    struct.pack_into("<ff", data, 80, -0.2, 0.2)
    write("itk2_nifti_pixdim_negative.nii", bytes(data), "nifti", "NIfTI negative pixdim", "pixdim")
    meta("itk2_mha_spacing_nan.mha", ["ObjectType = Image", "NDims = 2", "DimSize = 32 32",
                                      "ElementSpacing = nan nan", "ElementType = MET_UCHAR",
                                      "ElementDataFile = LOCAL"], pixels,
         "MetaImage ElementSpacing NaN", "ElementSpacing")

    # -- raster headers (items 4, 11) --------------------------------------------------------------
    write("itk2_tiff_unknown_compression_60000.tif", _tiff([(60000, 60000, 1, 8)], compression=50000), "tiff",
          "TIFF Pillow cannot open (unknown compression) whose tags claim 60000 x 60000", "too large")
    write("itk2_tiff_40_pages_of_8192.tif", _tiff([(8192, 8192, 4, 8)] * 40, compression=50000), "tiff",
          "TIFF of 40 RGBA pages of 8192 x 8192 (10 GiB decoded) in a few KB", "above the limit")
    write("itk2_tiff_ifd_loop.tif", _tiff([(32, 32, 1, 8)], loop=True), "tiff",
          "TIFF whose page chain points back to itself", "loop")
    write("itk2_tiff_cmyk.tif", _tiff([(32, 32, 4, 8)], photometric=5, data=bytes(32 * 32 * 4)), "tiff",
          "CMYK (separated) TIFF", "CMYK")
    write("itk2_jpeg_cmyk.jpg", _jpeg_constant(16, 16, 4), "jpeg", "CMYK JPEG (Adobe)", "CMYK")
    write("itk2_jpeg_height_zero.jpg", _jpeg_constant(16, 0, 1), "jpeg",
          "JPEG whose frame header gives height 0 (DNL)", "height 0")
    write("itk2_png_apng_1000000_frames.png", _apng_claim(64, 64, 1_000_000), "png",
          "animated PNG claiming 1,000,000 frames of 64 x 64", "above the limit")
    write("itk2_gif_image.gif", _GIF, "png", "a GIF named .gif", "unsupported format GIF")
    write("itk2_gif_named_png.png", _GIF, "png", "a GIF named .png", "unsupported format GIF")
    write("itk2_webp_image.webp", b"RIFF\x1a\x00\x00\x00WEBPVP8 " + bytes(14), "png", "a WebP file",
          "unsupported format WebP")
    write("itk2_pdf_named_dcm.dcm", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes(200), "dicom",
          "a PDF named .dcm", "unsupported format PDF")


# A 1 x 1 GIF89a.
_GIF = bytes.fromhex("4749463839610100010080000000ffffff00000021f90401000000002c00000000010001000002024401003b")


def _tiff(pages: list[tuple[int, int, int, int]], *, compression: int = 1, photometric: int = 1,
          loop: bool = False, data: bytes = b"") -> bytes:
    """A little-endian TIFF whose pages (width, height, samples, bits) all point at `data`."""
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    data_at = 8 + len(pages) * (2 + 12 * 9 + 4)
    for index, (width, height, samples, bits) in enumerate(pages):
        start = len(out)
        entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, compression),
                   (262, 3, 1, photometric), (273, 4, 1, data_at), (277, 3, 1, samples),
                   (278, 4, 1, height), (279, 4, 1, max(len(data), 1))]
        out += struct.pack("<H", len(entries))
        for tag, kind, count, value in entries:
            out += struct.pack("<HHI", tag, kind, count)
            out += struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        last = index == len(pages) - 1
        out += struct.pack("<I", start if loop and last else (0 if last else start + 2 + 12 * 9 + 4))
    return bytes(out) + (data or b"\x00")


def _jpeg_constant(width: int, height: int, components: int) -> bytes:
    """A baseline JPEG of mid-grey: one-code Huffman tables (DC difference 0, end of block), so
    every 8 x 8 block is two 0 bits. Four components carry an Adobe marker (CMYK)."""
    def segment(marker: int, body: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body

    adobe = segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0)) if components == 4 else b""
    dqt = segment(0xDB, b"\x00" + bytes([1] * 64))
    sof = segment(0xC0, struct.pack(">BHHB", 8, height, width, components)
                  + b"".join(bytes([i + 1, 0x11, 0]) for i in range(components)))
    one_code = bytes([1] + [0] * 15) + b"\x00"
    dht = segment(0xC4, b"\x00" + one_code + b"\x10" + one_code)
    sos = segment(0xDA, bytes([components]) + b"".join(bytes([i + 1, 0x00]) for i in range(components))
                  + b"\x00\x3f\x00")
    blocks = max(width // 8, 1) * max(height // 8, 1) * components
    scan = bytes((2 * blocks + 7) // 8)
    return b"\xff\xd8" + adobe + dqt + sof + dht + sos + scan + b"\xff\xd9"


def _apng_claim(width: int, height: int, frames: int) -> bytes:
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + bytes(width) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"acTL", struct.pack(">II", frames, 0)) + chunk(b"IDAT", zlib.compress(raw, 0))
            + chunk(b"IEND", b""))


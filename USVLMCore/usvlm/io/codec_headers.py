"""Frame headers of the codecs DICOM encapsulates (JPEG SOFn, JPEG-LS SOF55, JPEG 2000 SIZ), read
without decoding.

Decoders allocate the image their codestream's own header declares, not the one the DICOM header
declares: a 20 KB JPEG whose frame header claims 65000 x 65000 pixels makes them allocate
gigabytes. Reading the codec header first lets the caller compare it with Rows/Columns and the
limits before any decoder runs. The end-of-codestream check finds frames cut short (decoders
accept many of those silently and fill the rest with grey).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# JPEG markers that carry no length field: TEM, RSTn, SOI, EOI.
_STANDALONE = {0x01, *range(0xD0, 0xD8), 0xD8, 0xD9}
# Start-of-frame markers of every JPEG process (C4 DHT, C8 JPG and CC DAC are not frames) and
# JPEG-LS (F7, SOF55).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_SOS = 0xDA
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_END_MARKER = b"\xff\xd9"  # JPEG / JPEG-LS EOI and JPEG 2000 EOC share the code
# A frame may end in padding after its end marker (a null byte to an even length, sometimes more).
_END_SEARCH_BYTES = 16


class CodecHeaderError(ValueError):
    """The codestream has no readable frame header."""


@dataclass(frozen=True)
class CodecFrame:
    """What a codestream's header says its decoded image is."""

    codec: str
    rows: int
    columns: int
    components: int
    precision: int


def jpeg_frame(data: bytes) -> CodecFrame:
    """The frame header (SOFn, or SOF55 for JPEG-LS) of a JPEG / JPEG-LS codestream."""
    if not data.startswith(b"\xff\xd8"):
        raise CodecHeaderError("the JPEG codestream does not start with SOI")
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            raise CodecHeaderError(f"no JPEG marker at byte {at} before the frame header")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        (length,) = struct.unpack_from(">H", data, at + 2)
        if marker in _SOF:
            if length < 8 or at + 2 + 8 > len(data):
                raise CodecHeaderError("the JPEG frame header is cut short")
            precision, rows, columns, components = struct.unpack_from(">BHHB", data, at + 4)
            return CodecFrame("JPEG-LS" if marker == 0xF7 else "JPEG", rows, columns, components,
                              precision)
        if marker == _SOS:
            raise CodecHeaderError("the JPEG codestream has a scan before any frame header")
        if length < 2:
            raise CodecHeaderError(f"JPEG marker segment of length {length}")
        at += 2 + length
    raise CodecHeaderError("no JPEG frame header (SOF) in the codestream")


def j2k_frame(data: bytes) -> CodecFrame:
    """The image and tile size (SIZ) of a JPEG 2000 codestream, bare or inside a JP2 file."""
    if data.startswith(_JP2_SIGNATURE):
        data = _jp2_codestream(data)
    if not data.startswith(_J2K_SOC_SIZ):
        raise CodecHeaderError("the JPEG 2000 codestream does not start with SOC and SIZ")
    if len(data) < 4 + 38 + 3:
        raise CodecHeaderError("the JPEG 2000 image header (SIZ) is cut short")
    (_length, _caps, x_size, y_size, x_offset, y_offset, _tw, _th, _tx, _ty,
     components) = struct.unpack_from(">HHIIIIIIIIH", data, 4)
    if x_offset >= x_size or y_offset >= y_size:
        raise CodecHeaderError("the JPEG 2000 image header (SIZ) declares an empty image")
    precision = (data[4 + 38] & 0x7F) + 1
    return CodecFrame("JPEG 2000", y_size - y_offset, x_size - x_offset, components, precision)


def _jp2_codestream(data: bytes) -> bytes:
    """The contiguous codestream box (jp2c) of a JP2 file."""
    at = 0
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if length == 1:  # 64-bit length follows
            if at + 16 > len(data):
                break
            (length,) = struct.unpack_from(">Q", data, at + 8)
            header = 16
        if kind == b"jp2c":
            return data[at + header:]
        if length == 0 or length < header:  # box to the end of the file, or a corrupt length
            break
        at += length
    raise CodecHeaderError("the JP2 file has no codestream box")


def ends_with_end_marker(tail: bytes) -> bool:
    """Whether a frame's last bytes hold its end marker (EOI / EOC), allowing trailing padding.

    Neither marker can occur inside entropy-coded data (JPEG stuffs a zero after 0xFF, JPEG 2000
    packet data has no 0xFF followed by a byte above 0x8F), so finding it near the end is sound."""
    return _END_MARKER in tail[-_END_SEARCH_BYTES:]

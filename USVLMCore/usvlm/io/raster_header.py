"""PNG / JPEG / BMP / TIFF headers, read here before any decoder runs.

The size check must not depend on a decoder: Pillow cannot open some TIFFs (then the check was
skipped and another decoder allocated 7.9 GB), and decoders allocate what the header claims. The
codec's own header gives the size: PNG IHDR (and APNG's frame count), the JPEG frame header (SOF),
the BMP info header and the tags of every TIFF page (IFD), walked with a bound on their number.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from usvlm.errors import InputError

MAX_TIFF_PAGES = 10_000
_MAX_TIFF_TAGS = 4096
_MAX_JPEG_SEGMENTS = 1000
_MAX_PNG_CHUNKS_BEFORE_DATA = 1000


@dataclass(frozen=True)
class RasterFacts:
    format: str  # "PNG", "JPEG", "BMP", "TIFF"
    width: int  # the largest page's, for TIFF
    height: int
    decoded_bytes: int  # all frames as the decoder returns them
    colour_space: str = ""  # "CMYK" when the file is in a print colour space
    pages: int = 1  # TIFF pages


def read_raster_header(path: Path) -> RasterFacts:
    """The size of the decoded image from the file's header; `InputError` for a header that is
    missing, damaged or in a form no supported decoder reads."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        try:
            if head.startswith(b"\x89PNG\r\n\x1a\n"):
                return _png(path, fh)
            if head.startswith(b"\xff\xd8"):
                return _jpeg(path, fh)
            if head.startswith(b"BM"):
                return _bmp(path, fh)
            if head[:4] in (b"II*\x00", b"MM\x00*"):
                return _tiff(path, fh, "<" if head[:2] == b"II" else ">")
        except struct.error:
            raise InputError(path, "image header is truncated") from None
    raise InputError(path, "cannot decode image: not a PNG, JPEG, BMP or TIFF file (its first bytes "
                           "say otherwise)")


def _read(fh, n: int) -> bytes:  # noqa: ANN001
    data = fh.read(n)
    if len(data) < n:
        raise struct.error("short read")
    return data


def _png(path: Path, fh) -> RasterFacts:  # noqa: ANN001
    length, kind = struct.unpack(">I4s", _read(fh, 8))
    if kind != b"IHDR" or length != 13:
        raise InputError(path, "PNG does not start with its IHDR header chunk")
    width, height, depth, colour = struct.unpack(">IIBB", _read(fh, 10))
    fh.seek(7, 1)  # the rest of IHDR and its CRC
    channels = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}.get(colour)  # a palette decodes to RGB(A)
    if channels is None or depth not in (1, 2, 4, 8, 16):
        raise InputError(path, "PNG colour type or bit depth is invalid")
    frames = 1
    for _ in range(_MAX_PNG_CHUNKS_BEFORE_DATA):  # APNG: acTL (frame count) comes before IDAT
        head = fh.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        if kind == b"acTL":
            frames = max(1, struct.unpack(">I", _read(fh, 4))[0])
            break
        if kind in (b"IDAT", b"IEND"):
            break
        fh.seek(length + 4, 1)
    return RasterFacts("PNG", width, height, width * height * channels * (2 if depth == 16 else 1) * frames)


_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(path: Path, fh) -> RasterFacts:  # noqa: ANN001
    fh.seek(2)
    for _ in range(_MAX_JPEG_SEGMENTS):
        byte = _read(fh, 1)
        if byte != b"\xff":
            raise InputError(path, "JPEG marker expected before the frame header")
        marker = _read(fh, 1)[0]
        while marker == 0xFF:  # fill bytes
            marker = _read(fh, 1)[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        if marker in (0xD9, 0xDA):
            break
        length = struct.unpack(">H", _read(fh, 2))[0]
        if length < 2:
            raise InputError(path, "JPEG segment length is invalid")
        body = _read(fh, length - 2)
        if marker in _SOF_MARKERS:
            precision, height, width, components = struct.unpack(">BHHB", body[:6])
            if height == 0 or width == 0:
                raise InputError(path, "JPEG frame header gives no image size (height 0 is not supported)")
            if components not in (1, 3, 4):
                raise InputError(path, f"JPEG with {components} colour components; expected grey or colour")
            return RasterFacts("JPEG", width, height, width * height * components * (2 if precision > 8 else 1),
                               "CMYK" if components == 4 else "")
    raise InputError(path, "JPEG has no frame header (SOF) before its image data")


def _bmp(path: Path, fh) -> RasterFacts:  # noqa: ANN001
    fh.seek(14)
    size = struct.unpack("<I", _read(fh, 4))[0]
    if size == 12:  # BITMAPCOREHEADER
        width, height, _, bits = struct.unpack("<HHHH", _read(fh, 8))
    elif 40 <= size <= 124:
        width, height, _, bits = struct.unpack("<iiHH", _read(fh, 12))
    else:
        raise InputError(path, "BMP info header has an unknown size")
    width, height = abs(width), abs(height)  # a negative height is a top-down bitmap
    return RasterFacts("BMP", width, height, width * height * 4)


_TIFF_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}


def _tiff(path: Path, fh, endian: str) -> RasterFacts:  # noqa: ANN001
    """Walk every page (IFD) and add up what each decodes to."""
    fh.seek(4)
    offset = struct.unpack(endian + "I", _read(fh, 4))[0]
    seen: set[int] = set()
    total, widest, tallest, cmyk = 0, 0, 0, False
    while offset:
        if offset in seen:
            raise InputError(path, "TIFF pages (IFDs) form a loop")
        if len(seen) >= MAX_TIFF_PAGES:
            raise InputError(path, f"TIFF has more than {MAX_TIFF_PAGES} pages")
        seen.add(offset)
        fh.seek(offset)
        count = struct.unpack(endian + "H", _read(fh, 2))[0]
        if count > _MAX_TIFF_TAGS:
            raise InputError(path, f"TIFF page with {count} tags")
        tags: dict[int, list[int]] = {}
        entries = _read(fh, 12 * count)
        offset = struct.unpack(endian + "I", _read(fh, 4))[0]
        for i in range(count):
            tag, kind, n, raw = struct.unpack(endian + "HHI4s", entries[12 * i:12 * i + 12])
            if tag in (256, 257, 258, 262, 277) and kind in _TIFF_TYPES and n:
                tags[tag] = _tiff_values(fh, endian, kind, min(n, 16), raw)
        if 256 not in tags or 257 not in tags:
            raise InputError(path, "TIFF page without ImageWidth / ImageLength tags")
        width, height = tags[256][0], tags[257][0]
        samples = tags.get(277, [1])[0]
        bits = max(tags.get(258, [1]))
        if not 1 <= samples <= 16 or not 1 <= bits <= 64:
            raise InputError(path, "TIFF SamplesPerPixel / BitsPerSample out of range")
        cmyk = cmyk or tags.get(262, [0])[0] == 5  # PhotometricInterpretation: separated (CMYK)
        total += width * height * samples * ((bits + 7) // 8)
        widest, tallest = max(widest, width), max(tallest, height)
    if not seen:
        raise InputError(path, "TIFF has no pages")
    return RasterFacts("TIFF", widest, tallest, total, "CMYK" if cmyk else "", len(seen))


def _tiff_values(fh, endian: str, kind: int, n: int, raw: bytes) -> list[int]:  # noqa: ANN001
    code, size = _TIFF_TYPES[kind]
    if size * n <= 4:
        data = raw[:size * n]
    else:
        where = fh.tell()
        fh.seek(struct.unpack(endian + "I", raw)[0])
        data = _read(fh, size * n)
        fh.seek(where)
    return list(struct.unpack(endian + code * n, data))

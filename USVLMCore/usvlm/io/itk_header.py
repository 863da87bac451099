"""NRRD / NHDR, MetaImage (MHA / MHD) and NIfTI headers, parsed here before SimpleITK sees the file.

ITK trusts headers: it follows a detached data file anywhere (`/etc/shadow`, `../x`, a FIFO),
allocates what the header claims before finding the data short, zero-fills short NIfTI data and
turns a missing or NaN spacing into a "calibrated" 1 mm. `read_header` reads only the header
(a bounded number of bytes) and returns the facts the reader needs to refuse such files first:
the format (so ITK is told which ImageIO to use instead of probing all of them), the axis sizes,
the bytes the pixel data must take, where that data lies and the pixel spacing, if any.
Checks of the data itself (where it lies, its size) are in `usvlm.io.itk_data`.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from usvlm.errors import InputError

# Headers are text of a few hundred bytes; a LIST of detached files can be longer.
MAX_HEADER_BYTES = 1 << 20
# More detached data files than this is not an image (a slice per file of a long cine is fine).
MAX_DATA_FILES = 100_000

Encoding = str  # "raw", "gzip", "zlib", "ascii", "hex"


@dataclass(frozen=True)
class DataPart:
    """Where (part of) the pixel data lies. The data region of `file` starts at `offset` (the end
    of an attached header, else 0) after `line_skip` text lines; `byte_skip` bytes of the data are
    skipped (of the decompressed stream for compressed data, as NRRD and NIfTI define it;
    -1: the raw data ends the file)."""

    file: Path
    offset: int = 0
    byte_skip: int = 0
    line_skip: int = 0


@dataclass(frozen=True)
class HeaderFacts:
    format: str  # "NRRD", "MetaImage", "NIfTI"
    image_io: str  # the SimpleITK ImageIO that reads it
    sizes: tuple[int, ...]  # every axis, the fastest first (components included)
    itemsize: int  # bytes per stored value
    encoding: Encoding
    parts: tuple[DataPart, ...]  # the attached data or the detached files, in order
    detached: bool
    frame_size: tuple[int, int]  # (columns, rows): the first two spatial axes
    spacing: tuple[float, float] | None  # the first two spatial axes; None: the file gives none
    spacing_note: str = ""  # why `spacing` is None
    float_format: str | None = None  # NIfTI float data ("<f4", ">f8"): ITK turns NaN into 0 silently

    @property
    def values(self) -> int:
        total = 1
        for s in self.sizes:
            total *= s
        return total

    @property
    def nbytes(self) -> int:
        """Bytes of pixel data the header implies (all parts together)."""
        return self.values * self.itemsize


def sniff_itk_format(head: bytes) -> str | None:
    """'NRRD', 'MetaImage' or 'NIfTI' from the first bytes of a file (gzip: NIfTI only), else None."""
    if head.startswith(b"NRRD000"):
        return "NRRD"
    if len(head) >= 348 and (_nifti_version(head) is not None):
        return "NIfTI"
    if head.startswith(b"\x1f\x8b"):
        return "NIfTI"  # .nii.gz: the only gzip file ITK reads here; checked in _nifti
    text = head[:4096].decode("latin-1")
    if re.search(r"(?m)^\s*(ObjectType|NDims|DimSize|ElementType|ElementDataFile)\s*=", text):
        return "MetaImage"
    return None


def read_header(path: Path) -> HeaderFacts:
    """The facts of `path`'s header; `InputError` for a header that is not one of the three
    formats, lies about its layout or names data files in a way ITK must not follow."""
    with open(path, "rb") as fh:
        head = fh.read(MAX_HEADER_BYTES + 1)
    kind = sniff_itk_format(head)
    if kind == "NRRD":
        return _nrrd(path, head)
    if kind == "NIfTI":
        return _nifti(path, head)
    if kind == "MetaImage":
        return _meta(path, head)
    raise InputError(path, "not a NRRD, NIfTI or MetaImage (MHA/MHD) file")


# -- NRRD ----------------------------------------------------------------------------------------

_NRRD_TYPES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
        "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
        "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
        "double"),
}
_NRRD_ENCODINGS = {"raw": "raw", "txt": "ascii", "text": "ascii", "ascii": "ascii", "hex": "hex",
                   "gz": "gzip", "gzip": "gzip", "bz2": "bzip2", "bzip2": "bzip2"}
# Axis kinds that are not space or time (ITK makes such an axis the pixel's components).
_DOMAIN_KINDS = {"domain", "space", "time", "???", "none", ""}


def _header_end(path: Path, head: bytes) -> int:
    """Offset just after the blank line that ends a NRRD header."""
    match = re.search(rb"\r?\n\r?\n", head)
    if match is None:
        if len(head) > MAX_HEADER_BYTES:
            raise InputError(path, f"header longer than {MAX_HEADER_BYTES} bytes")
        return len(head)  # a detached header may end with the file
    if match.start() > MAX_HEADER_BYTES:
        raise InputError(path, f"header longer than {MAX_HEADER_BYTES} bytes")
    return match.end()


def _nrrd(path: Path, head: bytes) -> HeaderFacts:
    end = _header_end(path, head)
    lines = head[:end].decode("latin-1").splitlines()
    fields: dict[str, str] = {}
    listed: list[str] | None = None
    for number, line in enumerate(lines[1:], start=1):
        if listed is not None:  # "data file: LIST": the remaining lines name the files
            if line.strip():
                listed.append(line.strip())
            continue
        if not line.strip() or line.startswith("#") or ":=" in line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise InputError(path, f"NRRD header line {number} is not 'field: value'")
        key = key.strip().lower().replace("datafile", "data file").replace("lineskip", "line skip") \
            .replace("byteskip", "byte skip")
        fields[key] = value.strip()
        if key == "data file" and value.strip().split()[:1] == ["LIST"]:
            listed = []
    dimension = _int(path, fields.get("dimension"), "dimension")
    if not 1 <= dimension <= 16:
        raise InputError(path, f"NRRD dimension {dimension} out of range")
    sizes = _ints(path, fields.get("sizes"), "sizes")
    if len(sizes) != dimension:
        raise InputError(path, f"NRRD sizes give {len(sizes)} axes, dimension says {dimension}")
    if any(s < 1 for s in sizes):
        raise InputError(path, "NRRD header gives a size of 0 or less (no pixels)")
    type_name = fields.get("type", "").lower()
    itemsize = next((n for n, names in _NRRD_TYPES.items() if type_name in names), None)
    if itemsize is None:
        raise InputError(path, "NRRD type is missing or not a pixel type ITK reads")
    encoding = _NRRD_ENCODINGS.get(fields.get("encoding", "").lower())
    if encoding is None:
        raise InputError(path, "NRRD encoding is missing or unknown")
    if encoding == "bzip2":
        raise InputError(path, "bzip2-encoded NRRD is not supported (ITK reads raw, gzip, ascii and hex)")
    line_skip = _int(path, fields.get("line skip", "0"), "line skip")
    byte_skip = _int(path, fields.get("byte skip", "0"), "byte skip")
    if line_skip < 0 or byte_skip < -1:
        raise InputError(path, "NRRD line skip / byte skip out of range")
    if byte_skip == -1 and encoding != "raw":
        raise InputError(path, "NRRD byte skip -1 needs raw encoding")
    data_file = fields.get("data file")
    if data_file is None:
        parts = (DataPart(path, end, byte_skip, line_skip),)
    else:
        names = listed if listed is not None else _file_names(path, data_file)
        parts = tuple(DataPart(_beside(path, name), 0, byte_skip, line_skip) for name in names)
        if not parts:
            raise InputError(path, "NRRD 'data file' lists no files")
        if sizes[-1] % len(parts) and len(parts) > 1:
            raise InputError(path, f"{len(parts)} data files do not divide the {sizes[-1]} slices")
    spacing, note = _nrrd_spacing(path, fields, dimension)
    axes = _nrrd_spatial_axes(path, fields, dimension) or list(range(dimension))
    frame = (sizes[axes[0]], sizes[axes[1]] if len(axes) > 1 else 1)
    return HeaderFacts("NRRD", "NrrdImageIO", tuple(sizes), itemsize, encoding, parts, data_file is not None,
                       frame, spacing, note)


def _nrrd_spatial_axes(path: Path, fields: dict[str, str], dimension: int) -> list[int]:
    """Axes that are space or time, not pixel components (by 'space directions', else 'kinds')."""
    kinds = fields.get("kinds", "").split()
    directions = _direction_tokens(path, fields.get("space directions"))
    axes = []
    for axis in range(dimension):
        if directions is not None:
            if axis < len(directions) and directions[axis] != "none":
                axes.append(axis)
        elif (kinds[axis].lower() if axis < len(kinds) else "") in _DOMAIN_KINDS:
            axes.append(axis)
    return axes


def _nrrd_spacing(path: Path, fields: dict[str, str], dimension: int) -> tuple[tuple[float, float] | None, str]:
    """Spacing of the first two spatial axes: from 'space directions' (vector lengths) or
    'spacings'. NaN in 'spacings' is NRRD's own "unknown"; no spacing at all is uncalibrated.
    Infinite or zero values are refused (a damaged header, not a missing one)."""
    directions = _direction_tokens(path, fields.get("space directions"))
    spacings = fields.get("spacings", "").split()
    spatial = []
    for axis in _nrrd_spatial_axes(path, fields, dimension):
        if directions is not None:
            values = [_float(path, v, "space directions") for v in directions[axis].strip("()").split(",")]
            if not all(math.isfinite(v) for v in values):
                raise InputError(path, "NRRD space directions hold NaN or infinite values")
            spatial.append(math.sqrt(sum(v * v for v in values)))
        else:  # a negative spacing is a flipped axis in NRRD (ITK flips the direction)
            spatial.append(abs(_float(path, spacings[axis], "spacings")) if axis < len(spacings) else math.nan)
    if directions is None and not spacings:
        return None, "no spacing field"
    if len(spatial) < 2:
        return None, "no spacing for the image axes"
    x, y = spatial[:2]
    if math.isnan(x) or math.isnan(y):
        return None, "spacing given as unknown (NaN)"
    if not (math.isfinite(x) and math.isfinite(y)) or x <= 0 or y <= 0:
        raise InputError(path, "NRRD spacing is infinite or zero")
    return (x, y), ""


def _direction_tokens(path: Path, text: str | None) -> list[str] | None:
    if text is None:
        return None
    tokens = re.findall(r"\([^)]*\)|none", text)
    if not tokens:
        raise InputError(path, "NRRD space directions are not vectors")
    return tokens


def _file_names(path: Path, spec: str) -> list[str]:
    """The files of a 'data file' field: one name, or a printf pattern `name%03d.raw min max step
    [subdim]` (NRRD and MetaImage both use this form)."""
    words = spec.split()
    if len(words) >= 4 and "%" in words[0]:
        pattern = words[0]
        if not re.fullmatch(r"[^%]*%0?\d*d[^%]*", pattern):
            raise InputError(path, "data file pattern must hold one integer field (%d)")
        first, last, step = (_int(path, w, "data file range") for w in words[1:4])
        if step == 0 or (last - first) * step < 0:
            raise InputError(path, "data file range never ends")
        count = (last - first) // step + 1
        if count > MAX_DATA_FILES:
            raise InputError(path, f"data file pattern names {count} files (at most {MAX_DATA_FILES})")
        return [pattern % (first + i * step) for i in range(count)]
    return [spec.strip()]


def _beside(path: Path, name: str) -> Path:
    """A data file name as the header's readers resolve it: relative to the header's folder."""
    if not name or "\x00" in name:
        raise InputError(path, "empty or invalid data file name")
    return path.parent / name


# -- MetaImage -----------------------------------------------------------------------------------

_META_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}


def _meta(path: Path, head: bytes) -> HeaderFacts:
    fields: dict[str, str] = {}
    offset = 0
    listed: list[str] | None = None
    end = None
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        line = raw.decode("latin-1").strip()
        if listed is not None:
            if line:
                listed.append(line)
            continue
        key, sep, value = line.partition("=")
        if not sep:
            if line:
                raise InputError(path, "MetaImage header line is not 'Key = Value'")
            continue
        key = key.strip()
        fields[key] = value.strip()
        if key == "ElementDataFile":
            if value.split()[:1] == ["LIST"]:
                listed = []
                continue
            end = offset
            break
    if "ElementDataFile" not in fields:
        raise InputError(path, "MetaImage header has no ElementDataFile")
    if end is None and listed is None:
        raise InputError(path, f"header longer than {MAX_HEADER_BYTES} bytes")
    ndims = _int(path, fields.get("NDims"), "NDims")
    if not 1 <= ndims <= 10:
        raise InputError(path, f"MetaImage NDims {ndims} out of range")
    sizes = _ints(path, fields.get("DimSize"), "DimSize")
    if len(sizes) != ndims or any(s < 1 for s in sizes):
        raise InputError(path, "MetaImage DimSize does not give NDims positive sizes")
    channels = _int(path, fields.get("ElementNumberOfChannels", "1"), "ElementNumberOfChannels")
    if not 1 <= channels <= 4:
        raise InputError(path, f"{channels} channels per pixel; expected 1 to 4")
    itemsize = _META_TYPES.get(fields.get("ElementType", "").upper())
    if itemsize is None:
        raise InputError(path, "MetaImage ElementType is missing or not a pixel type ITK reads")
    compressed = fields.get("CompressedData", "False").lower() == "true"
    binary = fields.get("BinaryData", "True").lower() == "true"
    encoding = "zlib" if compressed else ("raw" if binary else "ascii")
    skip = _int(path, fields.get("HeaderSize", "0"), "HeaderSize")
    if skip < -1 or (skip == -1 and encoding != "raw"):
        raise InputError(path, "MetaImage HeaderSize out of range")
    spec = fields["ElementDataFile"]
    if spec.upper() == "LOCAL":
        parts: tuple[DataPart, ...] = (DataPart(path, offset),)
        detached = False
    else:
        # HeaderSize skips bytes of each file (before a compressed stream, for compressed data).
        names = listed if listed is not None else _file_names(path, spec)
        parts = tuple(DataPart(_beside(path, name), max(skip, 0) if compressed else 0,
                               0 if compressed else skip) for name in names)
        detached = True
        if not parts:
            raise InputError(path, "MetaImage ElementDataFile LIST names no files")
    spacing_text = fields.get("ElementSpacing") or fields.get("ElementSize")
    spacing, note = None, "no ElementSpacing"
    if spacing_text:
        values = [_float(path, v, "ElementSpacing") for v in spacing_text.split()]
        if len(values) < 2:
            raise InputError(path, "MetaImage ElementSpacing gives fewer than two values")
        if not all(math.isfinite(v) and v > 0 for v in values[:2]):
            raise InputError(path, "MetaImage ElementSpacing is NaN, infinite, zero or negative")
        spacing, note = (values[0], values[1]), ""
    frame = (sizes[0], sizes[1] if ndims > 1 else 1)
    return HeaderFacts("MetaImage", "MetaImageIO", (channels, *sizes), itemsize, encoding, parts, detached,
                       frame, spacing, note)


# -- NIfTI ---------------------------------------------------------------------------------------

def _nifti_version(header: bytes) -> int | None:
    for endian in "<>":
        size = struct.unpack(endian + "i", header[:4])[0]
        if size == 348 and header[344:348] in (b"n+1\x00", b"ni1\x00"):
            return 1
        if size == 540 and header[4:8] in (b"n+2\x00", b"ni2\x00"):
            return 2
    return None


# NIfTI xyzt_units space codes ITK converts to millimetres: metre, millimetre, micron.
_NIFTI_UNITS = {1: 1000.0, 2: 1.0, 3: 0.001}


def _nifti(path: Path, head: bytes) -> HeaderFacts:
    compressed = head.startswith(b"\x1f\x8b")
    if compressed:
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(540)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(path, f"not a readable gzip file ({type(exc).__name__})") from None
    version = _nifti_version(head) if len(head) >= 348 else None
    if version is None:
        raise InputError(path, "not a NIfTI-1 or NIfTI-2 file (header size or magic wrong)")
    endian = "<" if struct.unpack("<i", head[:4])[0] in (348, 540) else ">"
    if version == 1:
        if head[344:348] != b"n+1\x00":
            raise InputError(path, "NIfTI header/image pairs (.hdr/.img) are not supported; use a .nii file")
        dims = struct.unpack(endian + "8h", head[40:56])
        datatype, bitpix = struct.unpack(endian + "hh", head[70:74])
        pixdim = struct.unpack(endian + "8f", head[76:108])
        vox_offset = struct.unpack(endian + "f", head[108:112])[0]
        units = head[123] & 7
        header_size = 348
    else:
        if len(head) < 540 or head[4:8] != b"n+2\x00":
            raise InputError(path, "NIfTI-2 header is truncated or a header/image pair")
        datatype, bitpix = struct.unpack(endian + "hh", head[12:16])
        dims = struct.unpack(endian + "8q", head[16:80])
        pixdim = struct.unpack(endian + "8d", head[104:168])
        vox_offset = float(struct.unpack(endian + "q", head[168:176])[0])
        units = struct.unpack(endian + "i", head[500:504])[0] & 7
        header_size = 540
    if not 1 <= dims[0] <= 7:
        raise InputError(path, f"NIfTI dim[0] = {dims[0]} is not 1 to 7")
    sizes = tuple(int(d) for d in dims[1:dims[0] + 1])
    if any(s < 1 for s in sizes):
        raise InputError(path, "NIfTI header gives a size of 0 or less (no pixels)")
    if bitpix <= 0 or bitpix % 8:
        raise InputError(path, f"NIfTI bitpix {bitpix} is not a whole number of bytes")
    if not math.isfinite(vox_offset) or vox_offset < header_size or vox_offset != int(vox_offset):
        raise InputError(path, "NIfTI vox_offset is not a whole byte offset after the header "
                               "(NaN, infinite, negative or inside the header)")
    spacing, note = _nifti_spacing(path, pixdim, units)
    floats = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64
    return HeaderFacts("NIfTI", "NiftiImageIO", sizes, bitpix // 8, "gzip" if compressed else "raw",
                       (DataPart(path, 0, int(vox_offset)),), False, (sizes[0], sizes[1] if len(sizes) > 1 else 1),
                       spacing, note,
                       endian + floats[datatype] if datatype in floats else None)


def _nifti_spacing(path: Path, pixdim: tuple[float, ...], units: int) -> tuple[tuple[float, float] | None, str]:
    x, y = pixdim[1], pixdim[2]
    if x == 0 and y == 0:
        return None, "pixdim 0"
    if not (math.isfinite(x) and math.isfinite(y)) or x <= 0 or y <= 0:
        raise InputError(path, "NIfTI pixdim (spacing) is NaN, infinite, zero or negative")
    scale = _NIFTI_UNITS.get(units, 1.0)  # unknown units: ITK assumes millimetres
    return (x * scale, y * scale), ""


# -- small parsers -------------------------------------------------------------------------------

def _int(path: Path, text: str | None, name: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise InputError(path, f"header field {name} is missing or not a whole number") from None


def _ints(path: Path, text: str | None, name: str) -> list[int]:
    if not text:
        raise InputError(path, f"header field {name} is missing")
    return [_int(path, v, name) for v in text.split()]


def _float(path: Path, text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(path, f"header field {name} holds a value that is not a number") from None

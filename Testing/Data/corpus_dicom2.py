"""Bad-input corpus, second hardening round: DICOM files: codec headers that lie about the size (JPEG SOF, JPEG 2000 SIZ, deflate), palette tables, deep sequences, truncated JPEG.

Called by make_bad_corpus.py (`make(out, entry)`); every file written here is listed with `entry`.
The codestreams (JPEG, JPEG-LS, JPEG 2000), deflate streams, palette tables and nested sequences
are built byte by byte, so the files are the same with any codec library; the DICOM around them
comes from make_bad_corpus's base file (the project's US DICOM writer and pydicom).

The builders are also used by Testing/test_hostile_dicom.py to make the big cases in a test's
temporary folder, and by `make_seeds` for valid fuzz seeds of the same encodings.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

# -- Codestreams -------------------------------------------------------------------------------------


def jpeg_baseline(rows: int, columns: int, *, sof_rows: int | None = None, sof_columns: int | None = None,
                  components: int = 1, precision: int = 8) -> bytes:
    """A valid baseline JPEG of a flat grey image (every 8 x 8 block: DC difference 0, then
    end-of-block), with Huffman tables of one 1-bit code each. `sof_rows`/`sof_columns` make the
    frame header claim another size than the scan data holds."""
    h, w = sof_rows or rows, sof_columns or columns
    dqt = b"\xff\xdb\x00\x43\x00" + b"\x01" * 64
    comps = b"".join(bytes([i + 1, 0x11, 0]) for i in range(components))
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 8 + 3 * components, precision, h, w, components) + comps
    one_code = bytes([1] + [0] * 15) + b"\x00"  # one code of length 1, for symbol 0
    dht = b"\xff\xc4\x00\x14\x00" + one_code + b"\xff\xc4\x00\x14\x10" + one_code
    sos = (b"\xff\xda" + struct.pack(">HB", 6 + 2 * components, components)
           + b"".join(bytes([i + 1, 0]) for i in range(components)) + b"\x00\x3f\x00")
    bits = 2 * components * ((rows + 7) // 8) * ((columns + 7) // 8)  # two 1-bit codes per block
    scan = bytearray(b"\x00" * ((bits + 7) // 8))
    if bits % 8:
        scan[-1] = (1 << (8 - bits % 8)) - 1  # pad the last byte with 1 bits
    return b"\xff\xd8" + dqt + sof + dht + sos + bytes(scan) + b"\xff\xd9"


def jpeg_ls_header(rows: int, columns: int) -> bytes:
    """A JPEG-LS codestream with a frame header (SOF55) of the given size and no usable scan."""
    sof55 = b"\xff\xf7" + struct.pack(">HBHHB", 11, 8, rows, columns, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00"
    return b"\xff\xd8" + sof55 + sos + b"\x00" * 16 + b"\xff\xd9"


def j2k_header(rows: int, columns: int, *, jp2: bool = False) -> bytes:
    """A JPEG 2000 codestream whose image header (SIZ) claims `rows` x `columns`, one 8-bit
    component, with a coding style, quantisation and one empty tile; inside a JP2 file if `jp2`."""
    siz = b"\xff\x51" + struct.pack(">HHIIIIIIIIH", 41, 0, columns, rows, 0, 0, columns, rows, 0, 0, 1) \
        + b"\x07\x01\x01"
    cod = b"\xff\x52\x00\x0c\x00\x00\x00\x01\x00\x05\x04\x04\x00\x01"
    qcd = b"\xff\x5c\x00\x04\x00\x40"
    tile = b"\xff\x90\x00\x0a\x00\x00\x00\x00\x00\x0e\x00\x01" + b"\xff\x93"
    codestream = b"\xff\x4f" + siz + cod + qcd + tile + b"\xff\xd9"
    if not jp2:
        return codestream
    signature = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
    ftyp = struct.pack(">I", 20) + b"ftypjp2 \x00\x00\x00\x00jp2 "
    ihdr = struct.pack(">I", 22) + b"ihdr" + struct.pack(">IIHBBBB", rows, columns, 1, 7, 7, 0, 0)
    jp2h = struct.pack(">I", 8 + len(ihdr)) + b"jp2h" + ihdr
    return signature + ftyp + jp2h + struct.pack(">I", 8 + len(codestream)) + b"jp2c" + codestream


def raw_deflate(data: bytes | Callable[[Callable[[bytes], None]], None], level: int = 9) -> bytes:
    """Raw deflate (no zlib header) of `data`, or of what `data(feed)` feeds in pieces."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    parts: list[bytes] = []
    if callable(data):
        data(lambda chunk: parts.append(compressor.compress(chunk)))
    else:
        parts.append(compressor.compress(data))
    parts.append(compressor.flush())
    return b"".join(parts)


# -- Explicit VR little endian elements ----------------------------------------------------------------

def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    value += b"\x00" * (len(value) % 2)
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def nested_sequences(depth: int, *, defined_length: bool) -> bytes:
    """A Referenced Image Sequence (0008,1140) holding itself `depth` levels deep."""
    if defined_length:
        inner = b""
        for _ in range(depth):
            item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
            inner = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, len(item)) + item
        return inner
    head = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000,
                                                                                     0xFFFFFFFF)
    tail = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return head * depth + tail * depth


def segmented_linear_bomb(segments: int) -> bytes:
    """Segmented palette table data: one discrete entry, then `segments` linear segments of 65535
    entries each (16-bit words)."""
    words = [0, 1, 0] + [1, 0xFFFF, 0x00FF] * segments
    return struct.pack(f"<{len(words)}H", *words)


def segmented_indirect_loop() -> bytes:
    """One discrete entry, then an indirect segment that replays itself (offset 3, its own start)."""
    words = [0, 1, 0, 2, 0xFFFF, 3, 0]
    return struct.pack(f"<{len(words)}H", *words)


# -- DICOM files -------------------------------------------------------------------------------------

def _base(path: Path, rows: int = 32, columns: int = 32, frames: int = 1):  # noqa: ANN202
    """The corpus's base US DICOM (fixed UIDs, patient markers), read back as a dataset."""
    import pydicom
    from make_bad_corpus import _base_dicom

    _base_dicom(path, frames, rows, columns)
    return pydicom.dcmread(path)


def encapsulated(path: Path, syntax: str, frames: list[bytes], *, rows: int = 32, columns: int = 32,
                 photometric: str = "MONOCHROME2", **attrs: object) -> Path:
    """A US DICOM whose pixel data are the given codestreams, one fragment per frame."""
    from pydicom.encaps import encapsulate

    ds = _base(path, rows, columns, len(frames))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PhotometricInterpretation = photometric
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def deflated(path: Path, dataset_body: bytes | None = None, *, deflate: Callable[[bytes], bytes] | None = None,
             rows: int = 32, columns: int = 32) -> Path:
    """A Deflated Explicit VR Little Endian DICOM: the base file's data set, or `dataset_body`
    (raw explicit VR little endian elements), deflated by `deflate` (default raw deflate)."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    ds = _base(path, rows, columns)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    start = _dataset_start(data)
    body = data[start:] if dataset_body is None else dataset_body
    meta = _with_syntax(data[:start], DeflatedExplicitVRLittleEndian)
    path.write_bytes(meta + (deflate or raw_deflate)(body))
    return path


def _dataset_start(data: bytes) -> int:
    """Offset of the first data set element after the file meta group (explicit VR LE)."""
    group_length_at = 132 + 8
    (meta_length,) = struct.unpack_from("<I", data, group_length_at)
    return group_length_at + 4 + meta_length


def _with_syntax(meta: bytes, uid: str) -> bytes:
    from make_bad_corpus import _with_transfer_syntax

    return _with_transfer_syntax(meta, uid)


def dataset_header(path: Path, rows: int = 32, columns: int = 32, **attrs: object) -> bytes:
    """The base file's data set elements up to (not including) its Pixel Data element."""
    ds = _base(path, rows, columns)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    path.unlink()
    return data[_dataset_start(data):]


def palette(path: Path, red: bytes, *, segmented: bool, entries: int = 256, bits: int = 16) -> Path:
    """An 8-bit PALETTE COLOR image whose three tables are `red` (plain or segmented data)."""
    ds = _base(path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    from pydicom.datadict import tag_for_keyword

    descriptor = [entries % 65536, 0, bits]
    for channel in ("Red", "Green", "Blue"):
        ds.add_new(tag_for_keyword(f"{channel}PaletteColorLookupTableDescriptor"), "US", descriptor)
        ds.add_new(tag_for_keyword(f"{'Segmented' if segmented else ''}{channel}PaletteColorLookupTableData"),
                   "OW", red)
    ds.save_as(path, enforce_file_format=True)
    return path


def with_elements(path: Path, extra: bytes) -> Path:
    """The base file with raw elements inserted before Pixel Data (they must sort before it)."""
    _base(path)
    data = path.read_bytes()
    pixel_tag = data.rfind(b"\xe0\x7f\x10\x00")
    path.write_bytes(data[:pixel_tag] + extra + data[pixel_tag:])
    return path


# -- The corpus --------------------------------------------------------------------------------------

def make(out: Path, entry: Callable[..., None]) -> None:
    """Write this area's cases into `out`."""
    from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless

    def case(name: str, exercises: str, match: str, write: Callable[[Path], object]) -> None:
        write(out / name)
        entry(name, "dicom", exercises, match=match)

    lying = "does not match|too large"
    case("dicom2_jpeg_sof_claims_65000.dcm", "JPEG-in-DICOM whose frame header (SOF) claims 65000 x 65000 "
         "(Rows/Columns 32 x 32): a decoder would allocate 4 GB", lying,
         lambda p: encapsulated(p, JPEGBaseline8Bit, [jpeg_baseline(32, 32, sof_rows=65000, sof_columns=65000)]))
    case("dicom2_jpeg_sof_claims_64x64.dcm", "JPEG frame header 64 x 64 inside a 32 x 32 DICOM", lying,
         lambda p: encapsulated(p, JPEGBaseline8Bit, [jpeg_baseline(32, 32, sof_rows=64, sof_columns=64)]))
    case("dicom2_jpeg_sof_three_components.dcm", "JPEG of three components where the DICOM says one sample",
         "component", lambda p: encapsulated(p, JPEGBaseline8Bit, [jpeg_baseline(32, 32, components=3)]))
    case("dicom2_jpeg_sof_precision_16.dcm", "JPEG frame header of 16-bit samples in an 8-bit DICOM",
         "bits", lambda p: encapsulated(p, JPEGBaseline8Bit, [jpeg_baseline(32, 32, precision=16)]))
    case("dicom2_jpeg_no_frame_header.dcm", "JPEG whose scan comes before any frame header", "frame header",
         lambda p: encapsulated(p, JPEGBaseline8Bit, [b"\xff\xd8\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
                                                      + b"\x00" * 8 + b"\xff\xd9"]))
    case("dicom2_jpeg_not_jpeg.dcm", "JPEG transfer syntax, fragment holds no JPEG (no SOI)", "SOI",
         lambda p: encapsulated(p, JPEGBaseline8Bit, [b"\x89PNG\r\n\x1a\n" + b"\x00" * 24]))
    good = jpeg_baseline(32, 32)
    case("dicom2_jpeg_truncated.dcm", "JPEG fragment cut inside its scan (no end-of-image marker): decoders "
         "fill the rest with grey silently", "truncated|end marker",
         lambda p: encapsulated(p, JPEGBaseline8Bit, [good[:-4]]))
    case("dicom2_jpeg_cine_second_frame_truncated.dcm", "two-frame JPEG cine whose second frame is cut short",
         "frame 2", lambda p: encapsulated(p, JPEGBaseline8Bit, [good, good[:-6]]))
    case("dicom2_jpeg_cine_second_frame_lies.dcm", "two-frame JPEG cine whose second frame header claims "
         "20000 x 20000", "frame 2", lambda p: encapsulated(
             p, JPEGBaseline8Bit, [good, jpeg_baseline(32, 32, sof_rows=20000, sof_columns=20000)]))
    case("dicom2_jpegls_sof55_claims_65000.dcm", "JPEG-LS frame header (SOF55) claims 65000 x 65000", lying,
         lambda p: encapsulated(p, JPEGLSLossless, [jpeg_ls_header(65000, 65000)]))
    case("dicom2_j2k_siz_claims_65000.dcm", "JPEG 2000 image header (SIZ) claims 65000 x 65000", lying,
         lambda p: encapsulated(p, JPEG2000Lossless, [j2k_header(65000, 65000)]))
    case("dicom2_j2k_jp2_siz_claims_65000.dcm", "JPEG 2000 in a JP2 wrapper whose SIZ claims 65000 x 65000",
         lying, lambda p: encapsulated(p, JPEG2000, [j2k_header(65000, 65000, jp2=True)]))
    case("dicom2_j2k_siz_empty_image.dcm", "JPEG 2000 SIZ whose image offset lies past its size",
         "empty image", lambda p: encapsulated(p, JPEG2000Lossless,
                                               [j2k_header(32, 32).replace(
                                                   struct.pack(">IIII", 32, 32, 0, 0),
                                                   struct.pack(">IIII", 32, 32, 40, 40), 1)]))
    case("dicom2_j2k_not_j2k.dcm", "JPEG 2000 transfer syntax, fragment holds a JPEG", "SOC",
         lambda p: encapsulated(p, JPEG2000Lossless, [good]))

    case("dicom2_deflate_corrupt.dcm", "Deflated transfer syntax whose data set is not a deflate stream",
         "deflate", lambda p: deflated(p, deflate=lambda body: b"\xff" * 64 + body[:200]))
    case("dicom2_deflate_truncated.dcm", "Deflated data set cut short", "deflate|truncated",
         lambda p: deflated(p, deflate=lambda body: raw_deflate(body)[:-40]))

    def deflate_pixels(path: Path) -> None:
        # 32 x 32 header, Pixel Data of 16 MiB of zeros: 16 KB deflated, refused as too long.
        header = dataset_header(path)
        body = header + element(0x7FE0, 0x0010, b"OW", b"")[:-4] + struct.pack("<I", 16 * 1024**2)

        def feed(put: Callable[[bytes], None]) -> None:
            put(body)
            for _ in range(16):
                put(bytes(1024**2))

        deflated(path, deflate=lambda _body: raw_deflate(feed))
    case("dicom2_deflate_pixels_16mib.dcm", "16 KB deflated data set inflating to 16 MiB of pixel data for "
         "a 32 x 32 header", "pixel data", deflate_pixels)

    case("dicom2_palette_segmented_bomb.dcm", "segmented palette table of 1,000 linear segments of 65535 "
         "entries (expands to 65 million entries; a table holds at most 65536)", "palette",
         lambda p: palette(p, segmented_linear_bomb(1000), segmented=True))
    case("dicom2_palette_indirect_loop.dcm", "segmented palette table whose indirect segment replays itself",
         "palette", lambda p: palette(p, segmented_indirect_loop(), segmented=True))
    case("dicom2_palette_table_short.dcm", "palette table of 10 bytes for 256 entries", "palette",
         lambda p: palette(p, bytes(10), segmented=False))
    case("dicom2_palette_descriptor_24_bits.dcm", "palette descriptor of 24-bit entries", "palette",
         lambda p: palette(p, bytes(512), segmented=False, bits=24))

    case("dicom2_sequences_nested_400_undefined.dcm", "sequences nested 400 deep (undefined lengths): "
         "a recursive parser overflows the stack", "nested",
         lambda p: with_elements(p, nested_sequences(400, defined_length=False)))
    case("dicom2_sequences_nested_400_defined.dcm", "sequences nested 400 deep (defined lengths, parsed "
         "lazily)", "nested", lambda p: with_elements(p, nested_sequences(400, defined_length=True)))

    def ct_volume(path: Path) -> None:
        ds = _base(path)
        ds.Modality = "CT"
        ds.NumberOfFrames = 300
        ds.Rows = ds.Columns = 512
        ds.save_as(path, enforce_file_format=True)
    case("dicom2_ct_volume_header.dcm", "CT multi-frame of 300 slices of 512 x 512 (pixel data of one "
         "small frame): refused as 3D from the header", "3D", ct_volume)

    def us_volume(path: Path) -> None:
        ds = _base(path, frames=4)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.2"
        ds.save_as(path, enforce_file_format=True)
    case("dicom2_enhanced_us_volume.dcm", "Enhanced US Volume (a 3D ultrasound volume, not a cine)", "3D",
         us_volume)


def make_seeds(folder: Path) -> list[Path]:
    """Valid files of the encodings this area guards (JPEG, deflate, segmented palette), for the
    fuzzer: Testing/fuzz/seeds/dicom2_*."""
    from pydicom.uid import JPEGBaseline8Bit

    folder.mkdir(parents=True, exist_ok=True)
    paths = [encapsulated(folder / "dicom2_jpeg.dcm", JPEGBaseline8Bit, [jpeg_baseline(32, 32)]),
             deflated(folder / "dicom2_deflate.dcm"),
             palette(folder / "dicom2_palette_segmented.dcm",
                     struct.pack("<7H", 0, 1, 0, 1, 255, 255, 0), segmented=True)]
    return paths

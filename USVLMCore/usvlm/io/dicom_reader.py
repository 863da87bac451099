"""Ultrasound DICOM reader (pydicom): single frames and cine loops, every US photometric.

Spacing comes, in this order of trust, from the Sequence of Ultrasound Regions (the scanner's
calibration of the B-mode area), Pixel Spacing, Imager Pixel Spacing, or nothing (1 mm, flagged as
uncalibrated). Messages never include patient attributes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import (DeflatedExplicitVRLittleEndian, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes,
                         JPEGTransferSyntaxes)

from usvlm.errors import InputError
from usvlm.io.codec_headers import CodecHeaderError, ends_with_end_marker, j2k_frame, jpeg_frame
from usvlm.io.dicom_palette import PaletteError, apply_palette, palette_descriptor
from usvlm.io.geometry import Geometry
from usvlm.io.image import ImageInfo, SpacingSource, UltrasoundRegion, USImage
from usvlm.io.limits import check_frame_size, check_pixel_bytes, check_spacing, max_pixel_bytes

# Modalities whose multi-frame objects are 3D volumes, not cine loops.
VOLUME_MODALITIES = {"CT", "MR", "PT", "NM"}
# SOP classes whose frames are slices of a volume, whatever the modality says.
VOLUME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT", "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR", "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET", "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET",
    "1.2.840.10008.5.1.4.1.1.20": "NM", "1.2.840.10008.5.1.4.1.1.13.1.1": "X-Ray 3D Angiographic",
    "1.2.840.10008.5.1.4.1.1.13.1.2": "X-Ray 3D Craniofacial", "1.2.840.10008.5.1.4.1.1.13.1.3": "Breast Tomosynthesis",
    "1.2.840.10008.5.1.4.1.1.77.1.5.4": "Ophthalmic Tomography",
}
# Images nest sequences a few levels deep; far deeper nesting only serves to overflow the stack
# of recursive code (pydicom's parser, deepcopy, highdicom).
MAX_SEQUENCE_DEPTH = 32
# A deflated data set may inflate to the pixel limit plus this much for the other attributes.
HEADER_ALLOWANCE = 64 * 1024**2
# Values longer than this are read only when used (the pixel data after its length was checked).
DEFER_BYTES = 1024**2
SUPPORTED_PHOTOMETRICS = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422",
                          "YBR_RCT", "YBR_ICT", "PALETTE COLOR"}
CM_TO_MM = 10.0


def read_dicom(path: str | Path) -> USImage:
    path = Path(path)
    with _quiet_pydicom():
        try:
            return _read_dicom(path)
        except InputError:
            raise
        except RecursionError:
            raise InputError(path, f"DICOM sequences nested too deeply (more than {MAX_SEQUENCE_DEPTH} "
                                   "levels)") from None
        # pydicom parses elements lazily: a damaged header raises on first access, from anywhere.
        except (NotImplementedError, ValueError, TypeError, AttributeError, KeyError, IndexError,
                EOFError, OverflowError, struct.error, BytesLengthException) as exc:
            raise InputError(path, f"corrupt DICOM file ({type(exc).__name__}: {_reason(exc)})") from exc


def _reason(exc: BaseException) -> str:
    """The first line of a library's message, with quoted text (which can be an attribute value,
    e.g. pydicom's "Invalid value for VR DA: '...'") left out."""
    text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
    return re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", text)


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom logs decoder tracebacks and warns with element values (which can be patient
    attributes) while reading damaged files; every problem becomes one InputError line instead."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 10)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _read_dicom(path: Path) -> USImage:
    source = _DicomSource(path)
    # The header alone first: everything a size or kind of image can be refused for is known
    # before a byte of pixel data is read (a 3D volume, a 20000 x 20000 claim).
    header = source.read(stop_before_pixels=True)
    _check_nesting(path, header)
    rows, columns = _int(path, header, "Rows", 0), _int(path, header, "Columns", 0)
    frames = _int(path, header, "NumberOfFrames", 1)
    modality = str(header.get("Modality", "")) or None
    photometric = str(header.get("PhotometricInterpretation", "")).strip()
    _check_header(path, header, rows, columns, frames, modality, photometric)

    ds = source.read(stop_before_pixels=False)
    _check_pixel_data(path, ds, rows, columns, frames)
    pixels = _decode(path, ds, photometric)
    # pydicom returns (H, W[, 3]) for one frame and (T, H, W[, 3]) for several.
    is_rgb = pixels.ndim == (4 if frames > 1 else 3)
    expected_shape = (frames,) * (frames > 1) + (rows, columns) + (3,) * is_rgb
    if pixels.shape != expected_shape or (is_rgb and photometric.startswith("MONO")):
        raise InputError(path, f"decoded pixels of shape {pixels.shape} do not match the header "
                               f"({frames} frame(s) of {columns} x {rows}, {photometric})")

    info = ImageInfo(path=str(path), format="dicom", modality=modality,
                     photometric=photometric,
                     transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")) or None,
                     frame_time_ms=_frame_time_ms(ds), dicom_header=_header_only(header))
    spacing, calibrated = calibrate(path, ds, info, rows, columns)
    geometry = _geometry(ds, spacing, calibrated)
    return USImage(pixels=pixels, geometry=geometry, info=info, is_rgb=is_rgb, is_cine=frames > 1)


class _DicomSource:
    """A DICOM file, read by pydicom; a deflated data set is inflated once, under a size cap
    (pydicom would inflate all of it, however large, before parsing a single attribute)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.inflated: tuple[bytes | None, Dataset, bytes] | None = _inflate_if_deflated(path)

    def read(self, *, stop_before_pixels: bool) -> Dataset:
        if self.inflated is None:
            return _read_dataset(self.path, stop_before_pixels)
        from pydicom.filereader import read_dataset

        preamble, file_meta, body = self.inflated
        stop = (lambda tag, vr, length: tag == 0x7FE00010) if stop_before_pixels else None
        try:
            dataset = read_dataset(io.BytesIO(body), False, True, stop_when=stop)
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, struct.error) as exc:
            raise InputError(self.path, f"corrupt deflated DICOM data set ({type(exc).__name__})") from exc
        ds = FileDataset(str(self.path), dataset, preamble, file_meta, False, True)
        ds.set_original_encoding(False, True, dataset._character_set)
        return ds


def _inflate_if_deflated(path: Path) -> tuple[bytes | None, Dataset, bytes] | None:
    """(preamble, file meta, inflated data set) of a Deflated Explicit VR Little Endian file,
    None for any other file (including ones without a readable file meta group)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        with open(path, "rb") as fp:
            preamble = read_preamble(fp, True)
            file_meta = _read_file_meta_info(fp)
            if file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
                return None
            return preamble, file_meta, _inflate(path, fp)
    except InputError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, struct.error,
            InvalidDicomError, BytesLengthException):
        return None  # not a deflated file meta group: the ordinary reader gives the error


def _inflate(path: Path, fp: io.BufferedReader) -> bytes:
    """The rest of `fp` inflated (raw deflate), refused beyond the pixel limit plus an allowance
    for the other attributes, in pieces so that a bomb never gets further than that."""
    cap = max_pixel_bytes() + HEADER_ALLOWANCE
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = io.BytesIO()
    try:
        while not inflater.eof:
            block = inflater.unconsumed_tail or fp.read(1024**2)
            if not block:
                raise InputError(path, "deflated DICOM data set is truncated (the deflate stream ends early)")
            out.write(inflater.decompress(block, cap + 1 - out.tell()))
            if out.tell() > cap:
                raise InputError(path, f"deflated DICOM data set inflates to more than {cap / 1024**2:.0f} MiB, "
                                       f"beyond the pixel limit (set USVLM_MAX_PIXEL_BYTES to raise it)")
    except zlib.error:
        raise InputError(path, "deflated DICOM data set is not a valid deflate stream") from None
    return out.getvalue()


def _read_dataset(path: Path, stop_before_pixels: bool = False) -> Dataset:
    options = dict(stop_before_pixels=stop_before_pixels, defer_size=None if stop_before_pixels else DEFER_BYTES)
    try:
        ds = pydicom.dcmread(path, force=False, **options)
    except InvalidDicomError:
        # Files without the 128-byte preamble are still common; accept them only if they parse
        # into something with pixel attributes.
        try:
            ds = pydicom.dcmread(path, force=True, **options)
        except RecursionError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file for the user
            raise InputError(path, f"not a readable DICOM file ({type(exc).__name__})") from exc
        if "Rows" not in ds:
            raise InputError(path, "not a DICOM file (no DICOM preamble and no image attributes)")
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, zlib.error) as exc:
        raise InputError(path, f"truncated or corrupt DICOM file ({type(exc).__name__})") from exc
    return ds


def _check_nesting(path: Path, ds: Dataset) -> None:
    """Refuse sequences nested deeper than MAX_SEQUENCE_DEPTH, walking them without recursion."""
    pending = [(ds, 0)]
    while pending:
        dataset, depth = pending.pop()
        for raw in dataset.elements():
            if (raw.VR or _dictionary_vr(raw.tag)) != "SQ":
                continue
            if depth >= MAX_SEQUENCE_DEPTH:
                raise InputError(path, f"DICOM sequences nested too deeply (more than {MAX_SEQUENCE_DEPTH} "
                                       "levels)")
            try:
                items = dataset[raw.tag].value
            except RecursionError:
                raise
            except Exception:  # noqa: BLE001 - an unparsable private sequence is never used
                continue
            pending.extend((item, depth + 1) for item in items)


def _dictionary_vr(tag: int) -> str | None:
    """The VR the data dictionary gives a tag (implicit VR files carry none)."""
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _int(path: Path, ds: Dataset, keyword: str, default: int) -> int:
    """An integer header attribute; missing or empty gives `default`, garbage an InputError."""
    try:
        value = ds.get(keyword, default)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError, OverflowError):
        raise InputError(path, f"invalid {keyword} in the DICOM header") from None


def _check_header(path: Path, ds: Dataset, rows: int, columns: int, frames: int,
                  modality: str | None, photometric: str) -> None:
    """Everything the header alone can refuse, before the pixel data is read."""
    if rows == 0 and columns == 0 and "Rows" not in ds:
        _refuse_no_image(path, ds, "")
    problem = check_frame_size(rows, columns)
    if problem:
        raise InputError(path, problem)
    if frames < 1:
        raise InputError(path, f"NumberOfFrames is {frames}")
    if modality in VOLUME_MODALITIES and frames > 1:
        raise InputError(path, f"a 3D {modality} volume of {frames} slices, not 2D ultrasound")
    volume_class = VOLUME_SOP_CLASSES.get(str(ds.get("SOPClassUID", "")))
    if volume_class is not None:
        raise InputError(path, f"a 3D volume ({volume_class} Storage), not 2D ultrasound")
    if photometric not in SUPPORTED_PHOTOMETRICS:
        raise InputError(path, f"unsupported photometric interpretation {photometric!r}")
    samples = _int(path, ds, "SamplesPerPixel", 1)
    bits = _int(path, ds, "BitsAllocated", 8)
    if samples not in (1, 3) or bits not in (1, 8, 16, 32):
        raise InputError(path, f"unsupported pixel layout: SamplesPerPixel {samples}, BitsAllocated {bits}")
    out_bytes = samples * max(bits // 8, 1)
    if photometric == "PALETTE COLOR":
        try:
            palette_descriptor(ds)
        except PaletteError as exc:
            raise InputError(path, str(exc)) from None
        out_bytes += 3 * 2  # the indices, then RGB of up to 16 bits
    problem = check_pixel_bytes(rows * columns * frames * out_bytes)
    if problem:
        raise InputError(path, problem)
    syntax = ds.file_meta.get("TransferSyntaxUID", None)
    if syntax:
        try:
            syntax.is_compressed
        except ValueError:  # pydicom: "UID is not a transfer syntax" (private or another kind of UID)
            raise InputError(path, f"unknown transfer syntax UID {str(syntax)[:64]!r}") from None


def _refuse_no_image(path: Path, ds: Dataset, kind: str) -> None:
    sop_class = str(getattr(ds.get("SOPClassUID"), "name", "unknown"))
    raise InputError(path, f"DICOM file holds no image{kind}; SOP class "
                           f"{sop_class if sop_class.isprintable() else repr(sop_class)}")


def _check_pixel_data(path: Path, ds: Dataset, rows: int, columns: int, frames: int) -> None:
    """The pixel data must be there and hold what the header says: native data of the right
    length (checked before it is read), encapsulated data with one codestream per frame whose own
    header agrees with Rows/Columns and which is not cut short."""
    raw = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
    length = getattr(raw, "length", None) if raw is not None and raw.value is None else None
    if raw is None or (length is None and not ds.PixelData) or length == 0:
        kind = "" if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds else " (no pixel data)"
        _refuse_no_image(path, ds, kind)
    syntax = ds.file_meta.get("TransferSyntaxUID", None)
    samples = _int(path, ds, "SamplesPerPixel", 1)
    bits = _int(path, ds, "BitsAllocated", 8)
    if syntax and syntax.is_compressed:
        _check_fragments(path, ds, syntax, rows, columns, frames, samples, bits)
        return
    expected = rows * columns * frames * samples * bits // 8
    actual = length if length is not None else len(ds.PixelData)
    frame_bytes = max(rows * columns * samples * bits // 8, 1)
    # Odd lengths are padded to even; a whole frame or more of surplus means the header lies.
    if actual < expected or actual - expected >= frame_bytes:
        raise InputError(path, f"pixel data has {actual} bytes, {rows} x {columns} x {frames} frames "
                               f"x {samples} samples need {expected}")


def _check_fragments(path: Path, ds: Dataset, syntax: str, rows: int, columns: int, frames: int,
                     samples: int, bits: int) -> None:
    """Encapsulated data needs at least one fragment per frame: refuse a frame-count claim (a
    2,000-frame cine with data for 4) before the decoder allocates the claimed frames. Each
    frame's codestream header must describe the frame the DICOM header describes (decoders
    allocate what the codestream says), and each frame must end in its end marker."""
    from pydicom.encaps import generate_fragmented_frames, parse_fragments

    try:
        items = parse_fragments(ds.PixelData)[0]
    except (ValueError, TypeError, EOFError) as exc:
        raise InputError(path, f"encapsulated pixel data is corrupt ({str(exc).splitlines()[0][:120]})") from None
    if items - 1 < frames:  # the first item is the basic offset table
        raise InputError(path, f"encapsulated pixel data holds {max(items - 1, 0)} fragment(s), "
                               f"fewer than the {frames} frames the header claims")
    if syntax in JPEG2000TransferSyntaxes:
        read_header = j2k_frame
    elif syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        read_header = jpeg_frame
    else:
        return  # RLE decodes to the header's size by construction; other codecs are refused later
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        for index, fragments in enumerate(generate_fragmented_frames(
                ds.PixelData, number_of_frames=frames, extended_offsets=extended)):
            where = f"frame {index + 1}: " if frames > 1 else ""
            head = b"".join(fragments[:4])[:65536]  # the header lies within the first bytes
            try:
                frame = read_header(head)
            except CodecHeaderError as exc:
                raise InputError(path, f"{where}{exc}") from None
            if (frame.rows, frame.columns) != (rows, columns):
                raise InputError(path, f"{where}the {frame.codec} frame header says {frame.columns} x "
                                       f"{frame.rows} pixels, which does not match the DICOM header's "
                                       f"{columns} x {rows}")
            if frame.components != samples:
                raise InputError(path, f"{where}the {frame.codec} frame header has {frame.components} "
                                       f"component(s), the DICOM header {samples} sample(s) per pixel")
            if frame.precision > max(bits, 8):
                raise InputError(path, f"{where}the {frame.codec} frame header has {frame.precision}-bit "
                                       f"samples, more bits than the DICOM header allocates ({bits})")
            tail = fragments[-1][-32:] if fragments else b""
            if not ends_with_end_marker(tail):
                raise InputError(path, f"{where}the {frame.codec} codestream is truncated (no end marker)")
            if index + 1 == frames:
                break
    except (ValueError, TypeError, EOFError, struct.error) as exc:
        raise InputError(path, f"encapsulated pixel data is corrupt ({str(exc).splitlines()[0][:120]})") from None


def _decode(path: Path, ds: Dataset, photometric: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # pydicom converts YBR_* to RGB (the default of its pixel handlers).
            pixels = ds.pixel_array
            if photometric == "PALETTE COLOR":
                pixels = apply_palette(pixels, ds)
                pixels = _palette_to_8bit(pixels, ds)
    except PaletteError as exc:
        raise InputError(path, str(exc)) from None
    except NotImplementedError as exc:
        raise InputError(path, f"cannot decode transfer syntax "
                               f"{ds.file_meta.TransferSyntaxUID.name}: {exc}") from exc
    except MemoryError:
        raise InputError(path, "not enough memory to decode the pixel data") from None
    except (ValueError, RuntimeError, KeyError, AttributeError, TypeError, IndexError, StopIteration,
            EOFError, OverflowError) as exc:
        raise InputError(path, f"pixel data cannot be decoded ({type(exc).__name__}: {_reason(exc)})") from exc
    if photometric == "MONOCHROME1":
        pixels = pixels.max() - pixels if np.issubdtype(pixels.dtype, np.unsignedinteger) else -pixels
    if np.issubdtype(pixels.dtype, np.floating) and not np.all(np.isfinite(pixels)):
        raise InputError(path, "pixel data holds NaN or infinite values")
    return np.ascontiguousarray(pixels)


def _palette_to_8bit(rgb: np.ndarray, ds: Dataset) -> np.ndarray:
    """Ultrasound palettes are 8-bit colours. LUTs declared 16-bit usually hold them in the high
    byte, but some writers (and byte-swapped copies) store plain 0-255 values in 16-bit entries:
    scale only when values actually exceed 8 bits."""
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    if descriptor is not None and int(descriptor[2]) == 16 and rgb.max(initial=0) > 255:
        return (rgb >> 8).astype(np.uint8)
    return rgb.astype(np.uint8) if rgb.max(initial=0) <= 255 else rgb


def _header_only(header: Dataset) -> Dataset:
    """The header read before the pixel data (nothing from the pixel data element on)."""
    for keyword in ("FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            del header[keyword]
    return header


def calibrate(path: Path, ds: Dataset, info: ImageInfo, rows: int,
              columns: int) -> tuple[tuple[float, float], bool]:
    """The pixel spacing (x, y) in mm and whether it is calibrated, by the one rule of USVLM
    (the 2D tissue ultrasound region, else Pixel Spacing, else Imager Pixel Spacing, else none);
    fills `info`'s regions, spacing source, field of view and warnings. Needs the header only."""
    info.regions = _regions(ds)
    spacing, info.spacing_source, calibrated = _spacing(path, ds, info)
    _set_field_of_view(info, rows, columns)
    return spacing, calibrated


def _regions(ds: Dataset) -> list[UltrasoundRegion]:
    regions = []
    for item in ds.get("SequenceOfUltrasoundRegions", []):
        try:
            regions.append(UltrasoundRegion(
                x0=int(item.RegionLocationMinX0), y0=int(item.RegionLocationMinY0),
                x1=int(item.RegionLocationMaxX1), y1=int(item.RegionLocationMaxY1),
                spatial_format=int(item.get("RegionSpatialFormat", 0) or 0),
                data_type=int(item.get("RegionDataType", 0) or 0),
                units_x=int(item.get("PhysicalUnitsXDirection", 0) or 0),
                units_y=int(item.get("PhysicalUnitsYDirection", 0) or 0),
                delta_x=float(item.get("PhysicalDeltaX", 0.0) or 0.0),
                delta_y=float(item.get("PhysicalDeltaY", 0.0) or 0.0)))
        except (AttributeError, TypeError, ValueError):
            continue  # an incomplete region item carries no usable calibration
    return regions


def tissue_region(regions: list[UltrasoundRegion], rows: int, columns: int) -> UltrasoundRegion | None:
    """The 2D tissue region with cm units; the largest visible one when there are several."""
    candidates = [r for r in regions if r.is_2d_tissue_in_cm]

    def visible_area(r: UltrasoundRegion) -> int:
        w = min(r.x1, columns - 1) - max(r.x0, 0) + 1
        h = min(r.y1, rows - 1) - max(r.y0, 0) + 1
        return max(w, 0) * max(h, 0)

    return max(candidates, key=visible_area, default=None)


def _spacing(path: Path, ds: Dataset, info: ImageInfo) -> tuple[tuple[float, float], SpacingSource, bool]:
    region = tissue_region(info.regions, int(ds.Rows), int(ds.Columns))
    found: tuple[float, float] | None = None
    source: SpacingSource = "none"
    if region is not None:
        found, source = (region.delta_x * CM_TO_MM, region.delta_y * CM_TO_MM), "ultrasound_region"
    else:
        for keyword, name in (("PixelSpacing", "pixel_spacing"), ("ImagerPixelSpacing", "imager_pixel_spacing")):
            try:
                value = ds.get(keyword)
                pair = (float(value[1]), float(value[0])) if value is not None and len(value) == 2 else None
            except (TypeError, ValueError, OverflowError):
                raise InputError(path, f"invalid {keyword} in the DICOM header (not two numbers)") from None
            if pair is not None and pair[0] > 0 and pair[1] > 0:
                # DICOM gives (row spacing, column spacing) = (y, x).
                found, source = pair, name  # type: ignore[assignment]
                break
    if found is None:
        info.warnings.append("no pixel spacing in the file: sizes are in pixels, not calibrated (1 mm assumed)")
        return (1.0, 1.0), "none", False
    problem = check_spacing(found, source)
    if problem:
        raise InputError(path, problem)
    return found, source, True


def _set_field_of_view(info: ImageInfo, rows: int, columns: int) -> None:
    region = tissue_region(info.regions, rows, columns)
    if region is None:
        return
    x0, y0 = max(region.x0, 0), max(region.y0, 0)
    x1, y1 = min(region.x1, columns - 1), min(region.y1, rows - 1)
    if x1 < x0 or y1 < y0:
        info.warnings.append("the ultrasound region lies outside the image; field of view unknown")
        return
    if (x0, y0, x1, y1) != (region.x0, region.y0, region.x1, region.y1):
        info.warnings.append(
            f"ultrasound region [{region.x0}, {region.y0}, {region.x1}, {region.y1}] extends beyond "
            f"the {columns} x {rows} image; clipped to [{x0}, {y0}, {x1}, {y1}]")
    info.field_of_view = (x0, y0, x1, y1)
    info.field_of_view_source = "ultrasound_region"


def _frame_time_ms(ds: Dataset) -> float | None:
    value = ds.get("FrameTime")
    if value is None and ds.get("FrameTimeVector"):
        vector = [float(v) for v in ds.FrameTimeVector[1:]]
        value = sum(vector) / len(vector) if vector else None
    try:
        return float(value) if value is not None and float(value) > 0 else None
    except (TypeError, ValueError):
        return None


def _geometry(ds: Dataset, spacing: tuple[float, float], calibrated: bool) -> Geometry:
    """Image plane from ImagePositionPatient/ImageOrientationPatient when given, else ITK's default."""
    position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if position is not None and orientation is not None and len(position) == 3 and len(orientation) == 6:
        row_dir = np.asarray(orientation[:3], dtype=float)
        col_dir = np.asarray(orientation[3:], dtype=float)
        normal = np.cross(row_dir, col_dir)
        if np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
            return Geometry.from_lps((spacing[0], spacing[1], 1.0), position,
                                     np.column_stack([row_dir, col_dir, normal]), calibrated=calibrated)
    return Geometry.for_pixels(spacing[0], spacing[1], calibrated=calibrated)

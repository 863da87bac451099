"""PALETTE COLOR pixels to RGB, with the lookup tables bounded before anything is expanded.

A palette table has at most 65536 entries (PS3.3 C.7.6.3.1.5), but a *segmented* table
(C.7.9.2) is a little program: linear segments repeat a value up to 65535 times each and indirect
segments replay earlier segments, so a 240 KB table can expand to billions of entries (pydicom
expands it into a Python list). Here the expansion stops at the descriptor's entry count, and the
number of segments replayed is bounded too, so a hostile table costs at most a few hundred
kilobytes and a fraction of a second.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

MAX_ENTRIES = 65536
_CHANNELS = ("Red", "Green", "Blue")


class PaletteError(ValueError):
    """The palette tables are unusable (the message never holds attribute values)."""


def palette_descriptor(ds: Dataset) -> tuple[int, int, int]:
    """(entries, first mapped value, bits per entry) of the red table, checked."""
    try:
        entries, first, bits = (int(v) for v in ds.RedPaletteColorLookupTableDescriptor)
    except (AttributeError, TypeError, ValueError) as exc:
        raise PaletteError("the palette colour table descriptor is missing or not three numbers") from exc
    entries = entries or MAX_ENTRIES  # 0 means 2^16
    if not 0 < entries <= MAX_ENTRIES or bits not in (8, 16):
        raise PaletteError(f"unusable palette colour table descriptor ({entries} entries of {bits} bits)")
    return entries, first, bits


def apply_palette(indices: np.ndarray, ds: Dataset) -> np.ndarray:
    """RGB (..., 3) of the palette indices, uint8 or uint16 as the tables store them."""
    entries, first, bits = palette_descriptor(ds)
    luts = [_channel_lut(ds, channel, entries, bits) for channel in _CHANNELS]
    # Indices below the first mapped value take the first entry, above the table the last one.
    index = np.clip(indices.astype(np.int64, copy=False) - first, 0, entries - 1)
    out = np.empty(indices.shape + (3,), dtype=luts[0].dtype)
    for channel, lut in enumerate(luts):
        out[..., channel] = lut[index]
    return out


def _channel_lut(ds: Dataset, channel: str, entries: int, bits: int) -> np.ndarray:
    little = _is_little_endian(ds)
    plain = ds.get(f"{channel}PaletteColorLookupTableData")
    if plain is not None:
        data = bytes(plain)
        # pydicom's convention: the stored width follows from the length (8-bit entries are
        # sometimes stored one per 16-bit word).
        if len(data) == entries:
            return np.frombuffer(data, np.uint8)
        if len(data) in (2 * entries, 2 * entries + 1):
            return np.frombuffer(data[:2 * entries], "<u2" if little else ">u2").astype(np.uint16)
        raise PaletteError(f"the {channel.lower()} palette table holds {len(data)} bytes for "
                           f"{entries} entries")
    segmented = ds.get(f"Segmented{channel}PaletteColorLookupTableData")
    if segmented is None:
        raise PaletteError(f"no {channel.lower()} palette colour table")
    data = bytes(segmented)
    width = 1 if bits == 8 else 2
    words = struct.unpack(f"{'<' if little else '>'}{len(data) // width}{'B' if width == 1 else 'H'}",
                          data[:len(data) // width * width])
    lut = expand_segmented_lut(words, entries, byte_entries=width == 1, little_endian=little)
    if len(lut) < entries:
        raise PaletteError(f"the segmented {channel.lower()} palette table expands to {len(lut)} "
                           f"entries, fewer than the {entries} of its descriptor")
    return np.asarray(lut, np.uint8 if bits == 8 else np.uint16)


def _is_little_endian(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        return bool(syntax.is_little_endian) if syntax else True
    except (AttributeError, ValueError):
        return True


def expand_segmented_lut(data: Sequence[int], max_entries: int, *, byte_entries: bool = False,
                         little_endian: bool = True) -> list[int]:
    """Expand segmented palette table data (PS3.3 C.7.9.2) into at most `max_entries` values.

    Follows pydicom's reading of the segment types (discrete 0, linear 1, indirect 2, the
    indirect offset counted in entries). Refuses a table that expands beyond `max_entries`, an
    indirect segment inside a replayed one, and more replayed segments than the data could
    describe for a table of that size."""
    out: list[int] = []
    budget = [len(data) + max_entries]  # segments that may still be processed (replays count)
    _expand(data, 0, None, out, max_entries, budget, byte_entries, little_endian, replaying=False)
    return out


def _expand(data: Sequence[int], offset: int, count: int | None, out: list[int], max_entries: int,
            budget: list[int], byte_entries: bool, little_endian: bool, *, replaying: bool) -> None:
    done = 0
    while offset + 1 < len(data) and (count is None or done < count):
        budget[0] -= 1
        if budget[0] < 0:
            raise PaletteError("the segmented palette table replays too many segments")
        opcode, length = data[offset], data[offset + 1]
        offset += 2
        if opcode == 0:  # discrete: `length` values follow
            _extend(out, data[offset:offset + length], max_entries)
            offset += length
        elif opcode == 1:  # linear: from the previous value to y1 in `length` steps
            if not out:
                raise PaletteError("the segmented palette table starts with a linear segment")
            if offset >= len(data):
                break
            y0, y1 = out[-1], data[offset]
            offset += 1
            if length + len(out) > max_entries:
                raise PaletteError(f"the segmented palette table expands beyond {max_entries} entries")
            if y0 == y1:
                out.extend([y1] * length)
            elif length:
                step = (y1 - y0) / length
                out.extend(int(v) for v in np.around(np.linspace(y0 + step, y1, length)))
        elif opcode == 2:  # indirect: replay `length` segments found at an offset
            if replaying:
                raise PaletteError("the segmented palette table nests indirect segments")
            if not out:
                raise PaletteError("the segmented palette table starts with an indirect segment")
            if byte_entries:
                if offset + 4 > len(data):
                    break
                b = [data[offset + i] for i in ([3, 2, 1, 0] if little_endian else [2, 3, 0, 1])]
                target = (b[0] << 8 | b[1]) << 16 | (b[2] << 8 | b[3])
                offset += 4
            else:
                if offset + 2 > len(data):
                    break
                target = data[offset + 1] << 16 | data[offset]
                offset += 2
            _expand(data, target, length, out, max_entries, budget, byte_entries, little_endian,
                    replaying=True)
        else:
            raise PaletteError(f"the segmented palette table has an unknown segment type {opcode}")
        done += 1


def _extend(out: list[int], values: Sequence[int], max_entries: int) -> None:
    if len(out) + len(values) > max_entries:
        raise PaletteError(f"the segmented palette table expands beyond {max_entries} entries")
    out.extend(values)

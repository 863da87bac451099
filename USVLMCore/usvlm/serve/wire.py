"""The binary framing of engine requests and replies (`application/vnd.usvlm.frame`).

One frame = 4-byte big-endian length N of the header, N bytes of UTF-8 JSON (an object), then the
raw bytes of each array the header lists under "arrays", in order, back to back:

    {"arrays": [{"name": "image", "dtype": "|u1", "shape": [480, 640], "encoding": "raw"}], ...}

`raw`: the C-order bytes of the array in the named numpy dtype (always little-endian or one byte).
`bits`: a boolean array packed 8 pixels per byte, most significant bit first (numpy.packbits of
the flattened C-order array), ceil(size / 8) bytes: how masks travel.

A stream (`application/vnd.usvlm.frame-stream`) is frames back to back; each header has "event":
"progress", "result" or "error". The Slicer-side copy of this code is
USVLMSegment/USVLMSegmentLib/engine_client.py (it may not import usvlm); tests keep them agreeing.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from usvlm.serve.errors import RequestError

FRAME_TYPE = "application/vnd.usvlm.frame"
STREAM_TYPE = "application/vnd.usvlm.frame-stream"
PREFIX = struct.Struct(">I")
MAX_HEADER_BYTES = 64 * 1024  # prompts, options and array specs: far below this
MAX_ARRAYS = 8
MAX_DIMS = 4
ENCODINGS = ("raw", "bits")
# Pixel types a scalar volume can have in Slicer, little-endian on the wire.
DTYPES = ("|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<f4", "<f8")
BOOL = "|b1"


def bad(message: str, status: int = 400, kind: str = "bad_request") -> RequestError:
    return RequestError(status, kind, message)


@dataclass(frozen=True)
class ArraySpec:
    """One array named in a frame header."""

    name: str
    dtype: str  # numpy dtype string, one of DTYPES, or BOOL with the bits encoding
    shape: tuple[int, ...]
    encoding: str = "raw"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes on the wire."""
        if self.encoding == "bits":
            return (self.size + 7) // 8
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def decoded_nbytes(self) -> int:
        """Bytes once decoded (a bit-packed mask becomes one byte per pixel)."""
        return self.size * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "encoding": self.encoding}

    @classmethod
    def from_json(cls, data: Any) -> "ArraySpec":
        if not isinstance(data, dict):
            raise bad("each entry of 'arrays' must be an object")
        name, dtype, shape = data.get("name"), data.get("dtype"), data.get("shape")
        encoding = data.get("encoding", "raw")
        if not isinstance(name, str) or not name or len(name) > 64:
            raise bad("an array needs a 'name' of 1-64 characters")
        if encoding not in ENCODINGS:
            raise bad(f"array {name!r}: encoding must be one of {', '.join(ENCODINGS)}")
        allowed = (BOOL,) if encoding == "bits" else DTYPES
        if dtype not in allowed:
            raise bad(f"array {name!r}: dtype {str(dtype)[:20]!r} not accepted (use one of "
                      f"{', '.join(allowed)})")
        if (not isinstance(shape, list) or not 1 <= len(shape) <= MAX_DIMS
                or not all(type(s) is int and 0 <= s < 2**31 for s in shape)):
            raise bad(f"array {name!r}: shape must be a list of 1-{MAX_DIMS} whole numbers >= 0")
        return cls(name, dtype, tuple(shape), encoding)


@dataclass
class Frame:
    header: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def parse_header(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], list[ArraySpec], int]:
    """The JSON header and array specs at the start of `data`, and where the payload starts.
    `data` must hold at least the prefix and the whole header."""
    if len(data) < PREFIX.size:
        raise bad("frame shorter than its 4-byte header length")
    (length,) = PREFIX.unpack_from(data)
    if length > MAX_HEADER_BYTES:
        raise bad(f"frame header of {length} bytes is over the limit of {MAX_HEADER_BYTES}", 413,
                  "too_large")
    end = PREFIX.size + length
    if len(data) < end:
        raise bad("frame ends inside its header")
    try:
        header = json.loads(bytes(data[PREFIX.size:end]).decode("utf-8"),
                            parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"frame header is not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(header, dict):
        raise bad("frame header must be a JSON object")
    listed = header.pop("arrays", [])
    if not isinstance(listed, list) or len(listed) > MAX_ARRAYS:
        raise bad(f"'arrays' must be a list of at most {MAX_ARRAYS} entries")
    specs = [ArraySpec.from_json(a) for a in listed]
    if len({s.name for s in specs}) != len(specs):
        raise bad("two arrays have the same name")
    return header, specs, end


def header_bytes(needed: bytes | bytearray | memoryview) -> int | None:
    """How many bytes the prefix and header take, once the 4-byte prefix is there."""
    if len(needed) < PREFIX.size:
        return None
    return PREFIX.size + PREFIX.unpack_from(needed)[0]


def decode_arrays(specs: Iterable[ArraySpec], payload: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
    """The arrays of a frame from its payload (no copy for raw arrays of a writable buffer)."""
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for spec in specs:
        chunk = payload[offset:offset + spec.nbytes]
        if len(chunk) != spec.nbytes:
            raise bad(f"array {spec.name!r} is cut short ({len(chunk)} of {spec.nbytes} bytes)")
        if spec.encoding == "bits":
            bits = np.unpackbits(np.frombuffer(chunk, np.uint8), count=spec.size)
            arrays[spec.name] = bits.view(bool).reshape(spec.shape)
        else:
            arrays[spec.name] = np.frombuffer(chunk, np.dtype(spec.dtype)).reshape(spec.shape)
        offset += spec.nbytes
    if offset != len(payload):
        raise bad(f"frame has {len(payload) - offset} bytes after its last array")
    return arrays


def decode_frame(data: bytes | bytearray | memoryview) -> Frame:
    header, specs, start = parse_header(data)
    return Frame(header, decode_arrays(specs, memoryview(data)[start:]))


def wire_array(array: np.ndarray, encoding: str = "raw") -> tuple[np.ndarray, str]:
    """`array` in a wire dtype: bits for masks, little-endian otherwise."""
    a = np.asarray(array)
    if encoding == "bits":
        return a.astype(bool, copy=False), BOOL
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    if a.dtype.str not in DTYPES:
        raise ValueError(f"arrays of dtype {a.dtype} do not travel")
    return a, a.dtype.str


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_frame(header: Mapping[str, Any], arrays: Iterable[tuple[str, np.ndarray, str]] = ()) -> bytes:
    """One frame: `header` (JSON-able, without "arrays") and (name, array, encoding) triples."""
    specs, parts = [], []
    for name, array, encoding in arrays:
        a, dtype = wire_array(array, encoding)
        specs.append(ArraySpec(name, dtype, tuple(a.shape), encoding).to_json())
        parts.append(np.packbits(a.ravel()).data if encoding == "bits"
                     else np.ascontiguousarray(a).data)
    text = json.dumps({**header, "arrays": specs}, separators=(",", ":"),
                      default=_json_default).encode()
    return b"".join([PREFIX.pack(len(text)), text, *parts])

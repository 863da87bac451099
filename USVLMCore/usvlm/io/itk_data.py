"""Checks of the pixel data a NRRD / MetaImage / NIfTI header points at, before ITK opens it.

- A detached data file must lie in the header's folder or below it (after resolving links and
  `..`), so a header cannot pull `/etc/shadow` or a file of another patient into the outputs.
- Every data file must be a regular file: a FIFO would hang the reader, a device never ends.
- The data must have the size the header implies: raw data exactly (detached) or at least
  (attached); text data at least two characters per value; compressed data is decompressed here
  in a streaming pass, capped at the implied size, so a lying header or a short stream (which
  ITK's NIfTI reader zero-fills silently) is refused without allocating anything.
"""

from __future__ import annotations

import os
import stat
import zlib
from pathlib import Path

import numpy as np

from usvlm.errors import InputError
from usvlm.io.itk_header import DataPart, HeaderFacts

# Deflate cannot expand data more than about 1032-fold.
MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20


def check_data(path: Path, facts: HeaderFacts) -> None:
    """Refuse (`InputError`) data that lies outside the header's folder, is not a regular file or
    does not hold what the header says."""
    folder = path.parent.resolve()
    count = len(facts.parts)
    checked = []
    for index, part in enumerate(facts.parts):  # where every file lies, before any is opened
        what = (f"data file {index + 1} of {count}" if count > 1 else "data file") if facts.detached else "the file"
        file = _confined(path, folder, part.file, what) if facts.detached else part.file
        try:
            info = os.stat(file)
        except OSError as exc:
            raise InputError(path, f"{what} cannot be opened ({exc.strerror or type(exc).__name__})") from None
        if not stat.S_ISREG(info.st_mode):
            raise InputError(path, f"{what} is not a regular file (a folder, FIFO or device)")
        checked.append((part, file, info.st_size, what))
    for part, file, size, what in checked:
        _check_amount(path, facts, part, file, size, what, count)


def _confined(path: Path, folder: Path, file: Path, what: str) -> Path:
    try:
        resolved = file.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise InputError(path, f"{what} cannot be resolved (a link loop)") from None
    if not resolved.is_relative_to(folder):
        raise InputError(path, f"{what} lies outside the header's folder (absolute path, '..' or a link "
                               "out of it); data files must be in the header's folder or below it")
    return resolved


def _check_amount(path: Path, facts: HeaderFacts, part: DataPart, file: Path, size: int, what: str,
                  parts: int) -> None:
    share = facts.nbytes // parts
    values = facts.values // parts
    start = _skip_lines(path, file, part.offset, part.line_skip) if part.line_skip else part.offset
    available = size - start
    if facts.encoding == "raw":
        skip = max(part.byte_skip, 0)
        # A detached raw file holds exactly the data (and the skipped bytes); attached data may
        # be followed by padding, and 'byte skip -1' only says the data ends the file.
        exact = facts.detached and part.byte_skip >= 0 and not part.line_skip
        if available - skip < share or (exact and available - skip != share):
            raise InputError(path, f"{what} holds {max(available - skip, 0)} bytes of pixel data, its "
                                   f"header implies {share}")
        if facts.float_format:
            data_at = size - share if part.byte_skip == -1 else start + skip
            _check_finite_raw(path, file, data_at, values, facts.float_format)
    elif facts.encoding == "ascii":
        # Every value takes at least one digit and one separator.
        if available < 2 * values - 1:
            raise InputError(path, f"{what} holds {max(available, 0)} bytes of text, too few for the "
                                   f"{values} values its header claims")
    elif facts.encoding == "hex":
        if available < 2 * share:
            raise InputError(path, f"{what} holds {max(available, 0)} hex digits, too few for the "
                                   f"{share} bytes its header claims")
    else:  # gzip (NRRD, NIfTI) or zlib (MetaImage): byte skip counts decompressed bytes
        skip = max(part.byte_skip, 0)
        if available * MAX_DEFLATE_RATIO < share + skip:
            raise InputError(path, f"header claims {share} bytes of pixel data, more than {max(available, 0)} "
                                   "bytes of compressed data can hold")
        _check_stream(path, file, start, share + skip, skip, facts.encoding, facts.float_format, what)


def _skip_lines(path: Path, file: Path, start: int, lines: int) -> int:
    """Offset after `lines` text lines from `start` (NRRD 'line skip'), reading at most 1 MiB."""
    with open(file, "rb") as fh:
        fh.seek(start)
        text = fh.read(_CHUNK)
    at = 0
    for _ in range(lines):
        at = text.find(b"\n", at) + 1
        if at == 0:
            raise InputError(path, "NRRD line skip runs past the data")
    return start + at


def _decompressor(encoding: str):  # noqa: ANN202
    return zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)


def _check_stream(path: Path, file: Path, start: int, expected: int, data_at: int, encoding: str,
                  float_format: str | None, what: str) -> None:
    """Decompress `file` from `start` in chunks, never holding more than a few MiB: the stream
    must give exactly `expected` bytes (the data from `data_at`), and finite floats."""
    produced = 0
    carry = b""
    inflate = _decompressor(encoding)
    with open(file, "rb") as fh:
        fh.seek(start)
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            while chunk:
                try:
                    out = inflate.decompress(chunk, _CHUNK)
                except zlib.error:
                    raise InputError(path, f"{what} holds corrupt compressed pixel data") from None
                chunk = inflate.unconsumed_tail
                if inflate.eof:
                    chunk = inflate.unused_data + chunk  # concatenated gzip members, or trailing bytes
                    if encoding != "gzip" or not chunk.startswith(b"\x1f\x8b"):
                        chunk = b""
                    else:
                        inflate = _decompressor(encoding)
                if produced + len(out) > expected:
                    raise InputError(path, f"{what} holds more compressed pixel data than the {expected} "
                                           "bytes its header implies")
                if float_format and out:
                    carry = _check_finite_chunk(path, carry, out, produced, data_at, float_format)
                produced += len(out)
    if produced < expected:
        raise InputError(path, f"{what} holds {max(produced - data_at, 0)} bytes of compressed pixel data, "
                               f"its header implies {expected - data_at}")


def _check_finite_chunk(path: Path, carry: bytes, out: bytes, produced: int, data_at: int, fmt: str) -> bytes:
    """NaN/Inf check of decompressed float data arriving in chunks; returns the incomplete tail."""
    skip = max(data_at - produced, 0)
    data = carry + out[skip:]
    itemsize = np.dtype(fmt).itemsize
    whole = len(data) - len(data) % itemsize
    if whole and not np.isfinite(np.frombuffer(data[:whole], dtype=fmt)).all():
        raise InputError(path, "pixel data holds NaN or infinite values")
    return data[whole:]


def _check_finite_raw(path: Path, file: Path, start: int, values: int, fmt: str) -> None:
    """ITK's NIfTI reader replaces NaN/Inf by 0 without a word: check the floats, in chunks."""
    itemsize = np.dtype(fmt).itemsize
    step = _CHUNK // itemsize
    with open(file, "rb") as fh:
        fh.seek(start)
        left = values
        while left > 0:
            n = min(step, left)
            data = np.frombuffer(fh.read(n * itemsize), dtype=fmt)
            if not np.isfinite(data).all():
                raise InputError(path, "pixel data holds NaN or infinite values")
            left -= n

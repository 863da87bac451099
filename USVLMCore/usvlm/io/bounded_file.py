"""Reading a small user-supplied file (a manifest, a prompt bank, a checksum) safely.

Opened without blocking and checked on the open descriptor, so a FIFO, a device (a symlink to
/dev/zero) or a folder is refused at once instead of hanging or filling memory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from usvlm.errors import InputError


def read_bounded_file(path: str | os.PathLike[str], what: str, limit: int,
                      error: type[InputError] = InputError) -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    Opened without blocking and checked on the open descriptor, so a FIFO, a device (a symlink
    to /dev/zero) or a folder is refused at once instead of hanging or filling memory.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(path, f"{what} file does not exist") from None
    except OSError as exc:
        raise error(path, f"cannot read the {what}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(path, f"not a regular file (a FIFO, device or folder), so not a {what}")
        if info.st_size > limit:
            raise error(path, f"{info.st_size} bytes: too large for a {what} (at most {limit})")
        data = os.read(fd, limit + 1)
        while len(data) <= limit and (chunk := os.read(fd, limit + 1 - len(data))):
            data += chunk
    except OSError as exc:
        raise error(path, f"cannot read the {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise error(path, f"too large for a {what} (at most {limit} bytes)")
    return data

"""Opening the files a user names, safely: every reader here checks what a path is before it
reads it, never blocks, and bounds what a file can make it allocate.

A path that is not a regular file (a FIFO, a socket, a device, a directory) is a UserError
saying what it is: opening a FIFO for reading would wait forever for a writer. Paths are
checked with stat before they are opened, opened with O_NONBLOCK and checked again on the
descriptor. Sizes are bounded before the bytes are read; gzip data is inflated as a stream
and never beyond what the reader asked for.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mnist_jax.errors import UserError

CHUNK = 16 << 20  # Bytes read at a time from a stream.

_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def kind_name(mode: int) -> str:
    """What a stat mode is, in words ("a FIFO", "a directory", ...)."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _stat(path: Path, missing: str) -> os.stat_result:
    """os.stat(path) (links followed); a path that cannot be stat'ed is a UserError."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        broken = os.path.islink(path)
        raise UserError(f"{path}: is a broken symbolic link" if broken else missing) from None
    except NotADirectoryError:
        raise UserError(f"{path}: a parent of it is not a directory") from None
    except (OSError, ValueError) as e:  # ELOOP, ENAMETOOLONG, EACCES, an embedded NUL...
        raise UserError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def check_file(path: str | os.PathLike) -> os.stat_result:
    """The stat of `path`, which must be a regular file (after links); anything else (missing,
    a directory, a FIFO, a device, a socket) is a UserError saying which. Opens nothing, so it
    never blocks."""
    path = Path(path)
    st = _stat(path, f"{path}: file not found")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path}: is {kind_name(st.st_mode)}, not a regular file")
    return st


def check_dir(path: str | os.PathLike, what: str = "data directory") -> Path:
    """`path`, which must be a directory; otherwise a UserError naming what it is."""
    path = Path(path)
    st = _stat(path, f"{what} {path} does not exist")
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {path} is {kind_name(st.st_mode)}, not a directory")
    return path


def check_tree(directory: str | os.PathLike) -> None:
    """Every entry under `directory` is a directory or a regular file (a FIFO in a crafted
    checkpoint would make its reader wait forever)."""
    for root, dirs, names in os.walk(directory):
        for name in dirs + names:
            path = Path(root) / name
            if not os.path.lexists(path):  # Removed by a live writer since the listing.
                continue
            try:
                if name in dirs:
                    check_dir(path, "directory")
                else:
                    check_file(path)
            except UserError:
                if os.path.lexists(path):  # Not a race: a FIFO, a broken link, a socket...
                    raise


def open_file(path: str | os.PathLike, max_bytes: int | None = None) -> BinaryIO:
    """A regular file opened for binary reading. It is checked before it is opened, opened
    without blocking and checked again on the open descriptor (no race makes a FIFO hang us);
    a file over `max_bytes` is refused."""
    path = Path(path)
    check_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UserError(f"{path}: is {kind_name(st.st_mode)}, not a regular file")
    os.set_blocking(fd, True)
    if max_bytes is not None and st.st_size > max_bytes:
        os.close(fd)
        raise UserError(_too_big(path, max_bytes))
    return os.fdopen(fd, "rb")


def _too_big(path: Path, max_bytes: int) -> str:
    return f"{path}: larger than the {max_bytes / 2**20:g} MiB this input may hold"


@contextlib.contextmanager
def open_data(
    path: str | os.PathLike, max_bytes: int | None = None
) -> Iterator[tuple[BinaryIO, int | None]]:
    """(stream, size) of a data file, gunzipped as it is read when it is gzip data (size is
    then None: unknown until read). Errors while reading are UserErrors naming the file."""
    path = Path(path)
    with open_file(path) as f:
        gz = f.peek(2)[:2] == b"\x1f\x8b"
        if not gz and path.suffix == ".gz":
            raise UserError(f"{path}: named .gz but is not gzip data")
        size = None if gz else os.fstat(f.fileno()).st_size
        if size is not None and max_bytes is not None and size > max_bytes:
            raise UserError(_too_big(path, max_bytes))
        stream = gzip.GzipFile(fileobj=f, mode="rb") if gz else f
        try:
            with stream:
                yield stream, size
        except (OSError, EOFError, zlib.error) as e:
            what = "corrupt or truncated gzip data" if gz else "cannot read"
            raise UserError(f"{path}: {what} ({e})") from None


def read_file(path: str | os.PathLike, max_bytes: int, gunzip: bool = True) -> bytes:
    """A regular file's bytes (gunzipped if `gunzip` and gzip data), at most `max_bytes`
    of them: a larger file, or one that inflates beyond it, is refused before it is read."""
    path = Path(path)
    if not gunzip:
        with open_file(path, max_bytes) as f:
            try:
                return f.read()  # Its size was checked on the open descriptor.
            except OSError as e:
                raise UserError(f"{path}: cannot read ({e.strerror})") from None
    chunks, total = [], 0
    with open_data(path, max_bytes) as (stream, _):
        while chunk := stream.read(min(CHUNK, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise UserError(_too_big(path, max_bytes) + " once gunzipped")
    return b"".join(chunks)

"""All-or-nothing file writes: a kill at any moment leaves the old content or the new one, never a mix.

A write that the system refuses (a folder where the file goes, no permission, a name too long, a full disk) is a
``WriteError``: one line naming the file, the reason and the fix. It is a ``NasError`` (the CLI prints it and exits
with code 2) and an ``OSError`` (callers that catch write failures still do).
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nas.errors import NasError

TMP = ".tmp-"  # prefix of in-flight files; readers ignore them, writers clean them up

_FIX = {errno.EISDIR: "a folder has this file's name: move or delete that folder",
        errno.EEXIST: "a file has this folder's name: move or delete that file",
        errno.ENOTDIR: "a part of this path is a file, not a folder: move it or write elsewhere",
        errno.EACCES: "this user cannot write there: change the folder's permissions or write elsewhere",
        errno.EPERM: "this user cannot write there: change the folder's permissions or write elsewhere",
        errno.EROFS: "the file system is read-only: write elsewhere",
        errno.ENAMETOOLONG: "the name or path is longer than the file system allows: use a shorter one",
        errno.ENOSPC: "the disk is full: free some space"}


class WriteError(NasError, OSError):
    """A file or folder that could not be written (see the module docstring)."""


def write_error(e: OSError, path: str | os.PathLike, what: str = "write this file") -> WriteError:
    """``e`` as a one-line ``WriteError`` naming ``path``, the reason and, where known, the fix."""
    if isinstance(e, WriteError):
        return e
    from nas.limits import shown

    fix = _FIX.get(e.errno or 0)
    err = WriteError(f"cannot {what}: {e.strerror or e}" + (f"; {fix}" if fix else ""), file=shown(path))
    err.errno, err.strerror = e.errno, e.strerror
    return err


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; a refusal is a ``WriteError``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, path, "create this folder") from None
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds: the rename is still atomic, only less durable
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """The temp file to write ``path``'s new content into (same folder); when the block ends it replaces ``path``
    (``os.replace``, then the folder is fsynced). A block that raises leaves ``path`` as it was and removes the
    temp file; a refusal by the system is a ``WriteError`` naming ``path``."""
    path = Path(path)
    make_dirs(path.parent)
    tmp = path.with_name(f"{TMP}{path.name}.{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise write_error(e, path) from None
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``path`` all or nothing: temp file in the same folder, fsync, ``os.replace``. A refusal is a
    ``WriteError`` naming ``path`` (the old content, if any, is kept)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())

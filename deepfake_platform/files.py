"""Writing files whole or not at all, on any filesystem.

Every file the platform writes goes through `write_atomic`: the bytes go to a temporary file in the
destination's own folder, are flushed to disk, and the temporary file is renamed over the destination.
A rename within one folder never crosses filesystems, so this holds wherever the output home is (a
tmpfs /tmp, a separate /home, NFS on a cluster); a crash or a Ctrl-C mid-write leaves the previous file.

`link_or_copy` gives a second name to a large file (a checkpoint): a hard link where the filesystem
allows one, else an atomic copy. Nothing here hard-links or renames from one folder into another.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# The prefix and suffix of the temporary files below: `remove_partial_writes` finds what a killed writer left.
PARTIAL_SUFFIX = ".tmp"


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object], *, mode: int | None = None) -> Path:
    """Call `write(handle)` on a temporary file beside `path`, fsync it, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); other users of a shared output home read it too.
        os.chmod(tmp, 0o644 if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_to_path_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """For writers that take a file name (pyarrow, ONNX): `write(temporary path)`, then the same rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` whole or not at all."""
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` whole or not at all."""
    return write_atomic(path, lambda handle: handle.write(data))


def copy_atomic(source: str | Path, target: str | Path) -> Path:
    """Copy `source` to `target` (any two filesystems) so that `target` is never seen half-written."""
    with open(source, "rb") as src:
        return write_atomic(target, lambda handle: shutil.copyfileobj(src, handle, 16 * 1024 * 1024))


def link_or_copy(source: str | Path, target: str | Path) -> Path:
    """Make `target` hold `source`'s bytes, atomically: a hard link when the filesystem allows (no second
    write of a 1 GB checkpoint), else a copy. Works across filesystems and on ones without hard links."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.link{PARTIAL_SUFFIX}")
    staging.unlink(missing_ok=True)
    try:
        os.link(source, staging)
    except OSError:
        # EXDEV (another filesystem), EPERM/ENOTSUP (no hard links: some network and FUSE mounts).
        return copy_atomic(source, target)
    try:
        os.replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return target

"""The one atomic file write of ssrconv (reports, predictions, annotated images).

A temporary file in the destination directory is written, fsynced, renamed onto the
destination, and the directory fsynced: a crash or a failed run leaves either the old file or
the new one, never half of one. The file gets the mode an ordinary ``open()`` would give it
(0666 less the umask, i.e. 0644 under the usual 022), the same as the exported artifacts:
``tempfile.mkstemp`` creates 0600 files, and reports written through it stayed 0600.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from ssrconv.errors import SsrconvError


def umask_mode(base: int = 0o666) -> int:
    """``base`` less the process umask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def write_atomic(path: str | os.PathLike, data: bytes | str, mode: int | None = None) -> None:
    """Write ``data`` (str as UTF-8) to ``path`` atomically, with ``mode`` (default: from the
    umask). An unwritable destination is one SsrconvError line naming it."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    tmp = directory / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fchmod(fh.fileno(), umask_mode() if mode is None else mode)
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(directory)
    except OSError as err:
        raise SsrconvError(f"{path}: cannot write ({err.strerror or err})") from None


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some filesystems refuse to open a directory: the rename
    itself is still atomic there."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""Durable, atomic writes: the one helper every writer of ssrconv uses (artifacts, manifests,
the index, reports, predictions, downloaded assets).

The protocol (docs/READ_PATH.md): write a temporary file in the destination's own directory,
fsync it, rename it over the destination, fsync the directory. A reader sees the old file or the
new one, never a mix, and after a crash or power loss the rename is either on disk or not.
Directory packages (``.mlpackage``, ``.openvino``, ...) are swapped with
``renameat2(RENAME_EXCHANGE)`` on Linux, so the destination never goes missing; elsewhere the
old package is moved aside for the instant between two renames (documented fallback).
Signals are deferred, for the whole process, while a commit runs (:func:`deferred_signals`).
Every temporary made here (and every scratch directory, :func:`scratch_dir`) is tracked, so the
CLI's signal handler can remove what a command leaves unfinished without unwinding its stack
(:func:`remove_tracked`; why not unwinding: docs/READ_PATH.md, "Signals").
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from ssrconv.errors import SsrconvError


def _umask_mode(base: int = 0o666) -> int:
    """``base`` under the process umask (what ``open()`` would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def fsync_path(path: Path) -> None:
    """fsync a file, or every file and directory of a package, then the path itself."""
    path = Path(path)
    if path.is_dir():
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files:
                _fsync_fd(Path(root) / name, os.O_RDONLY)
            _fsync_fd(Path(root), os.O_RDONLY)
    else:
        _fsync_fd(path, os.O_RDONLY)


def fsync_dir(directory: Path) -> None:
    """fsync a directory, so the renames inside it are on disk (no-op where unsupported)."""
    _fsync_fd(Path(directory), os.O_RDONLY)


def _fsync_fd(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:
        if sys.platform == "win32":  # directories cannot be opened there; NTFS journals renames
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and directories on some platforms) do not support fsync
    finally:
        os.close(fd)


# Temporaries (files or directories) and directories a command created, in creation order, for
# remove_tracked(). A renamed temporary's name no longer exists, so a stale entry removes nothing.
_TRACKED: dict[Path, None] = {}
_CREATED_DIRS: dict[Path, None] = {}


def track(path: Path) -> Path:
    """Register a temporary file or directory for :func:`remove_tracked`; returns ``path``."""
    _TRACKED[Path(path)] = None
    return Path(path)


def track_created_dir(directory: Path) -> None:
    """Register a directory this process created: :func:`remove_tracked` removes it if empty."""
    _CREATED_DIRS[Path(directory)] = None


def remove_tracked() -> None:
    """Remove every tracked temporary still present (newest first), then every tracked created
    directory left empty. Safe in a signal handler: plain filesystem calls, errors ignored."""
    for path in reversed(list(_TRACKED)):
        try:
            remove_path(path)
        except OSError:
            pass
    for directory in reversed(list(_CREATED_DIRS)):
        try:
            directory.rmdir()
        except OSError:  # not empty, or already gone
            pass


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A tracked temporary directory under the system's temp dir, removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        track(Path(name))
        try:
            yield Path(name)
        finally:
            _TRACKED.pop(Path(name), None)


def temp_path(final: Path, suffix: str = ".tmp") -> Path:
    """A hidden, unique, tracked temporary name beside ``final`` (same directory: renames stay
    atomic)."""
    final = Path(final)
    return track(final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}{suffix}"))


def write_temp(final: Path, data: str | bytes, mode: int | None = None) -> Path:
    """Write ``data`` to a fsynced temporary file beside ``final``; the caller renames it.
    ``mode`` defaults to what a new file gets under the umask (reports read like artifacts)."""
    tmp = temp_path(final)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode() if mode is None else mode)
    except BaseException:
        remove_path(tmp)
        raise
    return tmp


def write_atomic(path: str | os.PathLike, data: str | bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically and durably; SsrconvError naming the path when it
    cannot be written (nothing half-written is left behind)."""
    path = Path(path)
    try:
        tmp = write_temp(path, data, mode)
        try:
            place(tmp, path)
        except BaseException:
            remove_path(tmp)
            raise
        fsync_dir(path.parent if str(path.parent) else Path("."))
    except OSError as err:
        raise SsrconvError(f"{path}: cannot write ({err.strerror or err})") from None


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2():
    """libc's ``renameat2`` (glibc 2.28+), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    return getattr(libc, "renameat2", None)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``). False when the
    platform or filesystem cannot (the caller falls back); OSError for real failures."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = _renameat2()
    if renameat2 is None:  # glibc < 2.28 or another libc
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # the filesystem cannot exchange
        return False
    raise OSError(code, os.strerror(code), str(b))


def remove_path(path: Path) -> None:
    """Remove a file or a package directory, ignoring a missing one."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    _TRACKED.pop(path, None)


def place(tmp: Path, final: Path) -> None:
    """Rename a finished temporary file or package ``tmp`` onto ``final``.

    Files: ``os.replace``. Package directories over an existing one: an atomic exchange (then
    the old package, now at ``tmp``, is removed), so ``final`` is never missing; where exchange
    is unsupported, the old package is moved aside first (a moment without ``final``).
    """
    tmp, final = Path(tmp), Path(final)
    if tmp.is_dir() and final.exists():
        if exchange(tmp, final):
            remove_path(tmp)
            return
        old = temp_path(final, ".old")
        os.replace(final, old)
        os.replace(tmp, final)
        remove_path(old)
    else:
        os.replace(tmp, final)
    _TRACKED.pop(tmp, None)


_DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Defer SIGINT and SIGTERM for the whole process while the block runs; a signal that
    arrived is delivered to the previous handler afterwards.

    Python runs signal handlers in the main thread whichever OS thread took the signal (the C
    handler only sets a flag), so swapping the Python-level handler defers the signal even when
    one of TensorFlow's or onnxruntime's pool threads receives it. (``pthread_sigmask`` masks
    only the calling thread: it did not.) Outside the main thread handlers cannot be changed;
    the block then runs undeferred.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    for signum in _DEFERRED:
        previous[signum] = signal.signal(signum, lambda s, frame: pending.append(s))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(pending):
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


class CommitPause:
    """A test hook: ``SSRCONV_TEST_COMMIT_PAUSE="<step>=<seconds>"`` sleeps at that step of a
    commit, so tests can signal or SIGKILL a process inside it (steps: ``model``, ``manifest``,
    ``index``: after that file was renamed into place)."""

    @staticmethod
    def at(step: str) -> None:
        value = os.environ.get("SSRCONV_TEST_COMMIT_PAUSE", "")
        if "=" not in value:
            return
        name, seconds = value.split("=", 1)
        if name == step:
            import time

            sys.stderr.write(f"ssrconv: test pause at commit step {step}\n")
            sys.stderr.flush()
            time.sleep(float(seconds))


__all__ = ["CommitPause", "deferred_signals", "exchange", "fsync_dir", "fsync_path", "place",
           "remove_path", "remove_tracked", "scratch_dir", "temp_path", "track",
           "track_created_dir", "write_atomic", "write_temp"]

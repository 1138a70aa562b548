"""Results of expensive, deterministic steps (data-free calibration inputs, a fine-tuned
integer-only int8 file) kept under the cache directory by a content hash of what they depend
on, so a second export of the same weights recomputes nothing.

Each entry is two files, ``<kind>/<key><suffix>`` and ``<kind>/<key>.json`` (the data's sha256
and the caller's record): an entry whose bytes do not match its sha256 (a partial or corrupt
write) is treated as absent and recomputed, never read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ssrconv.assets import cache_dir
from ssrconv.atomic import write_atomic


def entry_path(kind: str, key: str, suffix: str) -> Path:
    """Where the entry ``key`` of ``kind`` (a folder of the cache directory) keeps its data."""
    return cache_dir() / kind / f"{key}{suffix}"


def read_entry(kind: str, key: str, suffix: str) -> tuple[bytes, dict] | None:
    """The data and record :func:`write_entry` stored for ``key``; None when there is none or
    when the data no longer matches the sha256 recorded with it."""
    path = entry_path(kind, key, suffix)
    record_path = path.with_suffix(".json")
    if not (path.is_file() and record_path.is_file()):
        return None
    data = path.read_bytes()
    try:
        stored = json.loads(record_path.read_text())
    except ValueError:
        return None
    if hashlib.sha256(data).hexdigest() != stored.get("sha256") or "record" not in stored:
        return None
    return data, stored["record"]


def write_entry(kind: str, key: str, suffix: str, data: bytes, record: dict) -> str | None:
    """Store ``data`` and ``record`` (JSON-serialisable) as the entry ``key`` of ``kind``,
    atomically. Returns None when stored, else why not: a read-only or full cache costs the
    next run time, not this one its result."""
    path = entry_path(kind, key, suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
        write_atomic(path.with_suffix(".json"), json.dumps(
            {"sha256": hashlib.sha256(data).hexdigest(), "record": record}, indent=1))
    except OSError as err:
        return f"{err.strerror}: {path.parent}"
    return None

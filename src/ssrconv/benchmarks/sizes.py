"""Size of an artifact on disk: file bytes, gzip bytes, nominal parameter bytes, paper ratio."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from ssrconv.benchmarks import stats
from ssrconv.benchmarks.kinds import row_kind

# The original ssrnet_3_3_3_64_1.0_1.0.h5 (one head): the paper's "0.32 MB". Kept equal to
# ssrconv.info.PAPER_MODEL_BYTES without importing it (info imports the assets registry).
PAPER_MODEL_BYTES = 326_368

PARAM_METHOD = ("stored parameters of the reference (weights + batch-norm statistics, "
                f"{stats.PARAMS_PER_HEAD:,} per head, as in the original .h5) x bytes per parameter "
                "of the precision (fp32 4, fp16 2, dynamic/int8 1; int8 biases and scales not "
                "counted: a floor)")


def _files(path: Path) -> list[Path]:
    """The file itself, or every file of a directory package in sorted relative order."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def file_bytes(paths: list[Path]) -> int:
    """Bytes on disk of the files (a .mlpackage directory counts the sum of its files)."""
    return sum(f.stat().st_size for p in paths for f in _files(Path(p)))


def gzip_bytes(paths: list[Path], level: int = 9) -> int:
    """Bytes of the files' contents gzip-compressed at ``level`` (a package's files are
    concatenated in sorted order and compressed as one stream, as a download would be)."""
    compressor = gzip.compress
    data = b"".join(f.read_bytes() for p in paths for f in _files(Path(p)))
    return len(compressor(data, compresslevel=level, mtime=0))


def size_info(paths: list[str | os.PathLike], precision: str, heads: int,
              params_per_head: int = stats.PARAMS_PER_HEAD) -> dict:
    """The size block of one row: ``paths`` are the artifact (or the Keras weights files)."""
    paths = [Path(p) for p in paths]
    size = file_bytes(paths)
    params = params_per_head * heads
    nominal = stats.param_bytes(params, precision)
    return {
        "files": [str(p) for p in paths],
        "file_bytes": size,
        "gzip_bytes": gzip_bytes(paths),
        "heads": heads,
        "params": params,
        "param_bytes": nominal,
        "param_bytes_method": PARAM_METHOD,
        "paper_bytes": PAPER_MODEL_BYTES,
        "ratio_to_paper": size / PAPER_MODEL_BYTES,
        "bytes_per_head": size / heads if heads else None,
        "ratio_to_paper_per_head": size / heads / PAPER_MODEL_BYTES if heads else None,
    }


def _size_paths(entry) -> list[str]:
    """The files a row's size is of: its artifact, or the reference's .h5 weights."""
    if entry.path:
        return [entry.path]
    files = entry.info.get("weights_files")
    if files:
        return files
    kind = row_kind(entry.backend)
    if kind is None or not kind.from_weights:
        return []
    from ssrconv.assets import DEFAULT_AGE_WEIGHTS, DEFAULT_GENDER_WEIGHTS, locate

    found = [locate(name)[0] for name in (DEFAULT_AGE_WEIGHTS, DEFAULT_GENDER_WEIGHTS)]
    return [str(p) for p in found if p is not None]


def measure_sizes(entries: list) -> None:
    """Fill each row's size block (a missing file is reported, not fatal)."""
    for entry in entries:
        heads = len(entry.heads) or 1
        params = entry.info.get("params_per_head", stats.PARAMS_PER_HEAD)
        try:
            paths = _size_paths(entry)
            entry.size = size_info(paths, entry.precision, heads, params) if paths else None
        except OSError as err:
            entry.size = {"error": f"cannot read: {err.strerror or err}"}

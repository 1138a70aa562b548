"""Read MXNet's ``.params`` (a binary NDArray list) and ``-symbol.json`` as data, without MXNet.

The ``.params`` layout (MXNet src/ndarray/ndarray.cc, ``NDArray::Save``/``Load`` and
``mx.nd.save``'s list format), all little-endian:

- uint64 magic 0x112, uint64 reserved;
- uint64 array count, then per array: uint32 magic (0xF993FAC9 = V2 with a storage type,
  0xF993FAC8 = V1), [V2: int32 storage type, 0 = dense], uint32 ndim, int64 dims[ndim]; for
  ndim > 0: int32 device type, int32 device id, int32 type flag (0 float32, 1 float64,
  2 float16, 3 uint8, 4 int32, 5 int8, 6 int64), then the raw data;
- uint64 name count, then per name: uint64 length and the bytes (``arg:<name>`` for weights,
  ``aux:<name>`` for BatchNorm statistics).

Only dense V1/V2 arrays are read (a checkpoint's format); anything else is a WeightsError.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssrconv.errors import WeightsError

_LIST_MAGIC = 0x112
_V1_MAGIC = 0xF993FAC8
_V2_MAGIC = 0xF993FAC9
_DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8,
           6: np.int64}
_MAX_NDIM = 8


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise WeightsError(f"{self.path}: truncated MXNet .params file (needed {n} bytes at "
                               f"offset {self.pos} of {len(self.data)})")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def _read_array(reader: _Reader) -> np.ndarray:
    (magic,) = reader.unpack("I")
    if magic == _V2_MAGIC:
        (stype,) = reader.unpack("i")
        if stype != 0:
            raise WeightsError(f"{reader.path}: sparse NDArray (storage type {stype}) in a "
                               ".params file: only dense arrays are read")
    elif magic != _V1_MAGIC:
        raise WeightsError(f"{reader.path}: unknown NDArray magic {magic:#x} (an MXNet .params "
                           "file saved before MXNet 0.9 or not a .params file)")
    (ndim,) = reader.unpack("I")
    if ndim > _MAX_NDIM:
        raise WeightsError(f"{reader.path}: an NDArray with {ndim} dimensions: damaged file")
    shape = reader.unpack(f"{ndim}q") if ndim else ()
    if ndim == 0:
        return np.zeros((0,), np.float32)
    if any(d < 0 for d in shape):
        raise WeightsError(f"{reader.path}: negative NDArray dimension: damaged file")
    _dev_type, _dev_id, type_flag = reader.unpack("iii")
    if type_flag not in _DTYPES:
        raise WeightsError(f"{reader.path}: unknown NDArray type flag {type_flag}")
    dtype = np.dtype(_DTYPES[type_flag]).newbyteorder("<")
    count = int(np.prod(shape))
    return np.frombuffer(reader.take(count * dtype.itemsize), dtype).reshape(shape).copy()


def read_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{name: array} of an MXNet ``.params`` file, names without their ``arg:``/``aux:``
    prefix."""
    path = Path(path)
    reader = _Reader(path.read_bytes(), path)
    magic, _reserved = reader.unpack("QQ")
    if magic != _LIST_MAGIC:
        raise WeightsError(f"{path}: not an MXNet .params file (magic {magic:#x}, "
                           f"expected {_LIST_MAGIC:#x})")
    (count,) = reader.unpack("Q")
    if count > 100_000:
        raise WeightsError(f"{path}: claims {count} arrays: damaged file")
    arrays = [_read_array(reader) for _ in range(count)]
    (name_count,) = reader.unpack("Q")
    if name_count != count:
        raise WeightsError(f"{path}: {count} arrays but {name_count} names: damaged file")
    names = []
    for _ in range(name_count):
        (length,) = reader.unpack("Q")
        names.append(reader.take(length).decode("utf-8", "replace"))
    return {n.split(":", 1)[1] if n.startswith(("arg:", "aux:")) else n: a
            for n, a in zip(names, arrays)}


@dataclass(frozen=True)
class Symbol:
    """An MXNet symbol graph read as data: nodes (op, name, attrs, input node ids) and heads."""

    path: Path
    nodes: list[dict]
    heads: list[int]


def read_symbol(path: str | os.PathLike) -> Symbol:
    """An MXNet ``-symbol.json`` as data (nothing in it is evaluated)."""
    path = Path(path)
    try:
        graph = json.loads(path.read_text(encoding="utf-8"))
        nodes = [{"op": n["op"], "name": n["name"],
                  "attrs": dict(n.get("attrs", n.get("param")) or {}),
                  "inputs": [int(i[0]) for i in n["inputs"]]} for n in graph["nodes"]]
        heads = [int(h[0]) for h in graph["heads"]]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise WeightsError(f"{path}: not a readable MXNet symbol file ({err})") from None
    return Symbol(path=path, nodes=nodes, heads=heads)


def symbol_for(params: Path) -> Path | None:
    """The deploy symbol beside ``<prefix>-<epoch>.params``: ``<prefix>-symbol.json``."""
    stem = params.name[: -len(".params")]
    prefix = stem.rsplit("-", 1)[0] if "-" in stem else stem
    candidate = params.with_name(f"{prefix}-symbol.json")
    return candidate if candidate.is_file() else None

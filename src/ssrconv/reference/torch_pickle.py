"""Read a PyTorch ``.pth``/``.pt`` file into numpy without torch and without executing anything.

PyTorch saves with pickle, and unpickling calls whatever callables the file names: a crafted
``.pth`` runs code on ``torch.load`` (without ``weights_only=True``). This reader's unpickler
resolves only the names a tensor checkpoint needs, each to a function of ours that builds data:

- ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_tensor``: a tensor view of a storage;
- ``torch.<Type>Storage``: the element type of a storage (its bytes are read as numpy);
- ``collections.OrderedDict``: a dict.

Any other global (``os.system``, ``builtins.eval``, ``torch.nn.Module``, ...) is refused with
one line naming it, before it is called. Storages are persistent ids, resolved to numpy arrays
read from the file's bytes.

Both container formats are read (torch/serialization.py):
- zip (torch >= 1.6): ``<root>/data.pkl`` and one raw little-endian ``<root>/data/<key>``
  entry per storage;
- legacy (a sequence of pickles): magic number, protocol version, system info, the object
  (storages as persistent ids), the list of storage keys, then each storage as an int64
  element count followed by its raw bytes, in that list's order.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ssrconv.errors import WeightsError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Storage:
    """A storage named by the file: element type, key, element count; data filled in later."""

    def __init__(self, dtype, key: str, numel: int):
        self.dtype = np.dtype(dtype)
        self.key = key
        self.numel = numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """A tensor as a view of a storage, resolved to a numpy array once the storage is read."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def array(self, path: Path) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsError(f"{path}: storage {self.storage.key} has no data; the file is "
                               "damaged or truncated")
        end = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if self.offset < 0 or any(s < 0 for s in self.stride) or (
                all(self.size) and end > data.size):
            raise WeightsError(f"{path}: a tensor reads past the end of storage "
                               f"{self.storage.key}; the file is damaged")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size,
                                               strides=[s * item for s in self.stride],
                                               writeable=False)
        return np.array(view)


def _storage_type(name: str):
    """A storage class resolves to its numpy dtype (a plain value, never called)."""
    return ("storage-type", _STORAGE_DTYPES[name])


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    return _TensorRef(storage, storage_offset, size, stride)


def _ordered_dict(*args):
    return OrderedDict(*args)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only tensor, storage and OrderedDict names (module docstring)."""

    def __init__(self, file, path: Path, storages: dict[str, _Storage]):
        super().__init__(file)
        self.path = path
        self.storages = storages

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return _ordered_dict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _storage_type(name)
        raise WeightsError(f"{self.path}: refused to load: the pickle names {module}.{name}, "
                           "which is not a tensor or a plain container (a .pth is read as data, "
                           "never run); re-save the file as a plain state_dict")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.60}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if not (isinstance(storage_type, tuple) and storage_type[0] == "storage-type"):
            raise pickle.UnpicklingError("storage without a known element type")
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError("storage with a bad element count")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type[1], key, numel)
        return self.storages[key]


def _resolve(value, path: Path):
    """The unpickled object with every tensor reference replaced by its numpy array."""
    if isinstance(value, _TensorRef):
        return value.array(path)
    if isinstance(value, dict):
        return type(value)((k, _resolve(v, path)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, path) for v in value)
    return value


def _load_zip(path: Path) -> object:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise WeightsError(f"{path}: a zip file without one data.pkl: not a PyTorch file")
        root = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        result = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path, storages).load()
        for key, storage in storages.items():
            entry = f"{root}data/{key}"
            if entry not in names:
                raise WeightsError(f"{path}: storage {key} is missing from the archive")
            raw = archive.read(entry)
            need = storage.numel * storage.dtype.itemsize
            if len(raw) < need:
                raise WeightsError(f"{path}: storage {key} holds {len(raw)} bytes, "
                                   f"{need} expected; the file is damaged")
            storage.data = np.frombuffer(raw[:need], storage.dtype.newbyteorder("<"))
    return result


def _load_legacy(path: Path) -> object:
    with open(path, "rb") as handle:
        header = [_RestrictedUnpickler(handle, path, {}).load() for _ in range(3)]
        if header[0] != _LEGACY_MAGIC:
            raise WeightsError(f"{path}: not a PyTorch file (no zip archive, no legacy magic "
                               "number)")
        storages: dict[str, _Storage] = {}
        result = _RestrictedUnpickler(handle, path, storages).load()
        keys = _RestrictedUnpickler(handle, path, {}).load()
        if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
            raise WeightsError(f"{path}: the storage list does not match the tensors; "
                               "the file is damaged")
        for key in map(str, keys):
            storage = storages[key]
            count = handle.read(8)
            if len(count) != 8:
                raise WeightsError(f"{path}: truncated before storage {key}")
            (numel,) = struct.unpack("<q", count)
            need = numel * storage.dtype.itemsize
            raw = handle.read(need)
            if numel != storage.numel or len(raw) != need:
                raise WeightsError(f"{path}: storage {key} is truncated or damaged")
            storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<"))
    return result


def load_torch_file(path: str | os.PathLike) -> object:
    """The object saved in a PyTorch ``.pth``/``.pt`` with tensors as numpy arrays; nothing
    in the file is executed (module docstring). WeightsError on anything else."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            result = _load_zip(path)
        else:
            result = _load_legacy(path)
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, struct.error, zipfile.BadZipFile, OverflowError, MemoryError) as err:
        raise WeightsError(f"{path}: not a readable PyTorch file ({type(err).__name__}: "
                           f"{str(err)[:120]})") from None
    return _resolve(result, path)


def state_dict_of(obj, path: Path) -> dict[str, np.ndarray]:
    """The tensors of a state_dict: the object itself or a checkpoint's ``state_dict``/
    ``model``/``model_state_dict`` entry; ``module.`` prefixes (DataParallel) dropped."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(v, np.ndarray) for v in obj.values()):
        raise WeightsError(f"{path}: holds no state_dict (a dict of tensor names to tensors)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}

"""The .mnn read side: the MNN module import (banner off stdout), verify, describe, file
precision (the bizCode the converter writes) and the runtime options a file needs."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from ssrconv.errors import ModelFileError


@contextlib.contextmanager
def stdout_to_stderr():
    """MNN's C++ prints banners ("The device supports: ...", "MNN use high precision") on fd 1,
    which carries predict's JSON: send them to fd 2 while MNN is set up."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def mnn_module():
    """The ``MNN`` package, imported with its banner kept off stdout."""
    with stdout_to_stderr():
        import MNN
    return MNN


# MNN keeps the bizCode in the file: "ssrconv-<run key>", a key of RUN_OPTIONS (run_key reads
# it back).
BIZ_CODE = "ssrconv-{run_key}"

# MNN::Interpreter::HintMode ids, for RuntimeManager.set_hint (the Python binding takes ints).
HINT_IDS = {"WINOGRAD_MEMORY_LEVEL": 3}
# What an .mnn must be run with: the options cannot travel in the file (an MNN Net has no
# per-op algorithm or runtime-hint field), so the converter writes its key into the bizCode
# and the options into the manifest, and MnnRuntime runs every file with them
# (docs/CONVERTERS.md "MNN", docs/ARM64.md).
# Winograd off (WINOGRAD_MEMORY_LEVEL 0) for all: in fp32 its transforms cost 0.0034 y on x86;
# at precision low on an ARMv8.2 CPU (fp16 arithmetic, MNN's Arm82 backend) the fp16 file with
# Winograd measured max 0.53 / mean 0.091 y on the 300 dev faces (budget 0.25 / 0.05), without
# it (and with rounded weights) 0.18 / 0.033. fp32 runs at precision high, so an fp16-capable
# CPU keeps fp32 arithmetic there. "fp16-fp32-arithmetic": float16 weights computed in float32
# (precision normal), for a model whose fp16 arithmetic breaks the fp16 budget even so: the
# PyTorch port (stage-1 maps 8 x 8 where the original's are 4 x 4) measured mean 0.063 y at
# precision low on arm64 and 0.012 at normal (48 dev faces, docs/ARM64.md). "weights": the
# file's precision class (its parity budget); "why": appended to the manifest's reason.
RUN_OPTIONS = {
    "fp32": {"weights": "fp32", "precision": "high", "hints": {"WINOGRAD_MEMORY_LEVEL": 0},
             "why": ""},
    "fp16": {"weights": "fp16", "precision": "low", "hints": {"WINOGRAD_MEMORY_LEVEL": 0},
             "why": ""},
    "fp16-fp32-arithmetic": {"weights": "fp16", "precision": "normal",
                             "hints": {"WINOGRAD_MEMORY_LEVEL": 0},
                             "why": "; this model's fp16 file is outside it in fp16 arithmetic "
                                    "even without Winograd: precision normal (float32 "
                                    "arithmetic)"},
}


def verify(path: Path) -> None:
    """Cheap structural check of an .mnn (a FlatBuffers ``Net``) before MNN is handed the bytes:
    a root table offset and its vtable inside the file."""
    import struct

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read ({err.strerror or err})") from None
    if len(data) < 16:
        raise ModelFileError(f"{path}: {len(data)} bytes, too short for an MNN model; re-export it")
    root = struct.unpack_from("<I", data, 0)[0]
    if not 4 <= root <= len(data) - 4:
        raise ModelFileError(f"{path}: not an MNN model (root offset {root} outside the file)")
    vtable = root - struct.unpack_from("<i", data, root)[0]
    if not 0 <= vtable <= len(data) - 4:
        raise ModelFileError(f"{path}: not an MNN model (vtable offset {vtable} outside the file)")
    vt_size, table_size = struct.unpack_from("<HH", data, vtable)
    if vt_size < 4 or vt_size % 2 or vtable + vt_size > len(data) or root + table_size > len(data):
        raise ModelFileError(f"{path}: not an MNN model (malformed root table); re-export it")


def run_key(path: Path) -> str:
    """The RUN_OPTIONS key an .mnn runs with, from the bizCode ssrconv wrote into it ("fp32"
    for a file ssrconv did not write: MNN's converter writes float32 weights unless told
    --fp16)."""
    verify(path)
    mnn = mnn_module()
    with stdout_to_stderr():
        return run_key_of(mnn.nn.load_module_from_file(str(path), [], []).get_info())


def run_key_of(info: dict) -> str:
    """The RUN_OPTIONS key named by the bizCode of a loaded module's ``get_info()``."""
    key = info.get("bizCode", "").removeprefix("ssrconv-")
    return key if key in RUN_OPTIONS else "fp32"


def file_precision(path: Path) -> str:
    """The precision class of an .mnn (its weights' storage: fp32, fp16), from its bizCode."""
    return RUN_OPTIONS[run_key(path)]["weights"]


def describe(path: Path) -> dict:
    """Inputs/outputs (names, shapes), op counts, MNN version and bizCode, read back by MNN."""
    from collections import Counter

    verify(path)
    mnn = mnn_module()
    variables = mnn.expr.load_as_dict(str(path))
    info = mnn.nn.load_module_from_file(str(path), [], []).get_info()

    def io(names):
        out = []
        for name in names:
            var = variables.get(name)
            shape = list(var.shape) if var is not None else None
            if shape:
                shape[0] = None  # the batch: MNN resizes to the batch it is given
            out.append({"name": name, "shape": shape, "dtype": "float32", "quantization": None})
        return out

    ops = Counter(v.op_type for v in variables.values())
    return {"inputs": io(info["inputNames"]), "outputs": io(info["outputNames"]),
            "ops": dict(sorted(ops.items())), "float_ops": dict(sorted(ops.items())),
            "integer_only": False, "mnn_version": info.get("version"),
            "biz_code": info.get("bizCode")}

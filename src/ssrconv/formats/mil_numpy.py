"""A numpy interpreter for the MIL program inside a CoreML ``.mlpackage`` (ML Program).

CoreML itself only runs on macOS (``coremltools.libcoremlpython`` is missing on Linux), so
this module lets Linux CI check what a CoreML export actually contains: it reads the
package's spec and weight blob with coremltools' pure-protobuf loader (no CoreML runtime),
and evaluates the program's ops one by one, in program (topological) order, with numpy::

    prog = MilProgram.from_mlpackage("ssrnet.mlpackage")
    out = prog.run({"face_bgr": batch})        # {"age": (N, 1), "p_male": (N, 1)}
    prog.op_types                              # Counter({"const": 437, "relu": 44, ...})

Semantics follow the MIL op definitions (``coremltools/converters/mil/mil/ops/defs/iOS15``).
Only the ops SSR-Net exports use are implemented (see :data:`SUPPORTED_OPS`); any other op
raises :class:`UnsupportedMilOp` when the program is loaded, naming the op type and op name.

Precision. Every op's result is stored in the dtype the program declares for it, so a program
that casts to fp16 (``compute_precision=FLOAT16``) runs in ``np.float16`` from that cast on:

* elementwise ops (add, mul, real_div, relu, tanh) run on float16 arrays; numpy evaluates
  them in float32 and rounds each result to float16, i.e. one correctly rounded fp16 result
  per element, as fp16 hardware gives;
* ops that accumulate (conv, linear, reduce_sum, avg_pool) multiply and add in float32 and
  round to float16 once at the end, bias included. fp16 x fp16 products are exact in
  float32, so this models fp32 accumulators (CoreML's GPU path; the Neural Engine's
  accumulators are not documented). The fp16 error it reproduces is then the rounding of
  weights, of every stored activation and of every elementwise result; it does not add
  the extra error of fp16 accumulation.

A float32 program runs entirely in float32 (never float64), like the runtime.

Inputs. A multi-array input takes an array of its declared shape (flexible dimensions within
the spec's ``shapeRange``/``enumeratedShapes``), cast to the program's input dtype, as the
runtime casts an ``MLMultiArray``. An image input (``ct.ImageType``) takes N x H x W x C
pixel values (C = 3 in the image's own channel order, BGR for a BGR image; C = 1 or none for
grayscale), as float, transposed here to the N x C x H x W tensor the program reads. In an ML
Program the ImageType's ``scale`` and ``bias`` are not spec preprocessing but ``mul``/``add``
ops at the top of the program, so they are applied by interpreting the program; values are
not rounded to 8 bits (integer-valued inputs are exactly what CoreML would see).
If every input has a fixed batch dimension of 1 (as image inputs do) and the feeds carry
N > 1 rows, the program runs once per row and the outputs are concatenated along axis 0,
as ``MLModel.predict`` on a list of N inputs would.

This module imports numpy at import time and coremltools only inside functions (importing
coremltools imports TensorFlow when that is installed: `ssrconv._imports.coremltools()` does it quietly).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ssrconv._imports import coremltools
from ssrconv.errors import InputError, SsrconvError

__all__ = ["MilProgram", "UnsupportedMilOp", "MilRuntimeError", "SUPPORTED_OPS"]

WEIGHTS_SUBDIR = ("Data", "com.apple.CoreML", "weights")  # the usual place; the manifest wins


class UnsupportedMilOp(SsrconvError):
    """The program contains an op this interpreter does not implement."""

    def __init__(self, op_type: str, op_name: str):
        self.op_type = op_type
        self.op_name = op_name
        super().__init__(
            f"MIL op type {op_type!r} (op {op_name!r}) is not supported by the numpy MIL "
            f"interpreter; supported: {', '.join(sorted(SUPPORTED_OPS))}")


class MilRuntimeError(SsrconvError):
    """An op could not be evaluated, or produced a shape other than the program declares."""


# ----------------------------------------------------------------------------------------
# dtypes

_NP_BY_DTYPE_STRING = {
    "fp16": np.float16, "fp32": np.float32, "fp64": np.float64,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "bool": np.bool_,
}


def _np_dtype(builtin) -> np.dtype | None:
    """numpy dtype of a MIL builtin scalar type (None for str and other non-numeric types)."""
    from coremltools.converters.mil.mil import types

    try:
        name = types.builtin_to_string(builtin)
    except Exception:  # noqa: BLE001 - unknown builtin: leave values as they are
        return None
    dtype = _NP_BY_DTYPE_STRING.get(name)
    return None if dtype is None else np.dtype(dtype)


def _accumulator(dtype: np.dtype) -> np.dtype:
    """float32 accumulation for fp16 (and fp32) programs; ints keep their own dtype."""
    return np.dtype(np.float32) if dtype == np.float16 else dtype


# ----------------------------------------------------------------------------------------
# geometry shared by conv and pools (defs/_utils.py: aggregated_pad, spatial_dimensions_out_shape)

def _pads(pad_type: str, in_sizes, kernel, strides, dilations, pad) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dimension, as MIL defines it."""
    n = len(kernel)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        pad = [int(p) for p in pad]
        if len(pad) != 2 * n:
            raise MilRuntimeError(f"custom pad {pad} needs {2 * n} values")
        return [(pad[2 * d], pad[2 * d + 1]) for d in range(n)]
    if pad_type in ("same", "same_lower"):
        result = []
        for i, k, s, dl in zip(in_sizes, kernel, strides, dilations):
            eff = (k - 1) * dl + 1
            total = max(0, s * math.ceil(i / s) - i + eff - s)
            small, large = total // 2, total - total // 2
            # "same": any odd pixel goes after (bottom/right), as TF SAME; "same_lower": before
            result.append((small, large) if pad_type == "same" else (large, small))
        return result
    raise MilRuntimeError(f"unknown pad_type {pad_type!r}")


def _out_size(i: int, pads: tuple[int, int], eff_k: int, s: int, ceil_mode: bool) -> int:
    total = pads[0] + pads[1]
    if not ceil_mode:
        return (i + total - eff_k) // s + 1
    out = (i + total - eff_k + s - 1) // s + 1
    if (out - 1) * s >= i + total / 2 and total > 0:  # as in MIL's spatial_dimensions_out_shape
        out -= 1
    return out


def _windows(x: np.ndarray, kernel, strides, dilations, pads, out_sizes, fill) -> np.ndarray:
    """View of x (N, C, *D) as (N, C, *D_out, *K): the input values each output reads.

    ``x`` is padded with ``fill`` by ``pads`` and, when the last window reaches further (ceil
    mode), by as much more as it needs.
    """
    n = len(kernel)
    widths = [(0, 0), (0, 0)]
    for d in range(n):
        eff = (kernel[d] - 1) * dilations[d] + 1
        need = (out_sizes[d] - 1) * strides[d] + eff  # extent of the padded input read
        after = max(pads[d][1], need - pads[d][0] - x.shape[2 + d])
        widths.append((pads[d][0], after))
    if any(w != (0, 0) for w in widths):
        x = np.pad(x, widths, mode="constant", constant_values=fill)
    effs = [(kernel[d] - 1) * dilations[d] + 1 for d in range(n)]
    view = sliding_window_view(x, effs, axis=tuple(range(2, 2 + n)))
    index = (slice(None), slice(None))
    index += tuple(slice(0, (out_sizes[d] - 1) * strides[d] + 1, strides[d]) for d in range(n))
    index += tuple(slice(None, None, dilations[d]) for d in range(n))
    return view[index]


def _ints(value, default) -> list[int]:
    if value is None:
        return list(default)
    return [int(v) for v in np.atleast_1d(value)]


# ----------------------------------------------------------------------------------------
# op implementations: f(args, out_dtype) -> ndarray. args maps input name -> value (absent
# when the op does not set an optional input; the MIL default applies).

def _op_conv(a, out_dtype):
    x, w = a["x"], a["weight"]
    n_sp = x.ndim - 2
    kernel = list(w.shape[2:])
    strides = _ints(a.get("strides"), [1] * n_sp)
    dilations = _ints(a.get("dilations"), [1] * n_sp)
    groups = int(a.get("groups", 1))
    pads = _pads(str(a.get("pad_type", "valid")), x.shape[2:], kernel, strides, dilations,
                 a.get("pad", [0] * 2 * n_sp))
    outs = [_out_size(x.shape[2 + d], pads[d], (kernel[d] - 1) * dilations[d] + 1,
                      strides[d], False) for d in range(n_sp)]
    acc = _accumulator(out_dtype)
    c_in, c_out = x.shape[1], w.shape[0]
    if c_in % groups or c_out % groups or w.shape[1] != c_in // groups:
        raise MilRuntimeError(f"conv: C_in={c_in}, weight {w.shape}, groups={groups} disagree")
    cg, og = c_in // groups, c_out // groups
    sp_axes = list(range(2 + n_sp, 2 + 2 * n_sp))  # kernel axes of the window view
    parts = []
    for g in range(groups):
        xg = x[:, g * cg:(g + 1) * cg].astype(acc, copy=False)
        patches = _windows(xg, kernel, strides, dilations, pads, outs, 0)  # N,Cg,*Do,*K
        wg = w[g * og:(g + 1) * og].astype(acc, copy=False)               # Og,Cg,*K
        y = np.tensordot(patches, wg, axes=([1, *sp_axes], list(range(1, 2 + n_sp))))
        parts.append(np.moveaxis(y, -1, 1))                                # N,Og,*Do
    y = parts[0] if groups == 1 else np.concatenate(parts, axis=1)
    if a.get("bias") is not None:
        y = y + np.asarray(a["bias"]).astype(acc).reshape((1, c_out) + (1,) * n_sp)
    return y


def _pool_common(a):
    x = a["x"]
    n_sp = x.ndim - 2
    kernel = _ints(a["kernel_sizes"], None)
    strides = _ints(a.get("strides"), [1] * n_sp)
    ceil_mode = bool(a.get("ceil_mode", False))
    pad_type = str(a.get("pad_type", "valid")).lower()
    pads = _pads(pad_type, x.shape[2:], kernel, strides, [1] * n_sp,
                 a.get("pad", [0] * 2 * n_sp))
    outs = [_out_size(x.shape[2 + d], pads[d], kernel[d], strides[d], ceil_mode)
            for d in range(n_sp)]
    return x, n_sp, kernel, strides, pads, outs


def _op_max_pool(a, out_dtype):
    x, n_sp, kernel, strides, pads, outs = _pool_common(a)
    win = _windows(x, kernel, strides, [1] * n_sp, pads, outs, -np.inf)
    return win.max(axis=tuple(range(-n_sp, 0)))  # exact in any dtype


def _op_avg_pool(a, out_dtype):
    x, n_sp, kernel, strides, pads, outs = _pool_common(a)
    acc = _accumulator(out_dtype)
    axes = tuple(range(-n_sp, 0))
    ones = [1] * n_sp
    sums = _windows(x.astype(acc, copy=False), kernel, strides, ones, pads, outs, 0).sum(axes)
    # Divisor: the window's elements that are input (exclude_padding_from_average) or input
    # or explicit padding (not the extra cells ceil mode reads past the padded input).
    spatial = x.shape[2:]
    if bool(a.get("exclude_padding_from_average", False)):
        counted = np.ones((1, 1) + spatial, dtype=acc)
        count_pads = pads
    else:
        padded = tuple(spatial[d] + pads[d][0] + pads[d][1] for d in range(n_sp))
        counted = np.ones((1, 1) + padded, dtype=acc)
        count_pads = [(0, 0)] * n_sp
    counts = _windows(counted, kernel, strides, ones, count_pads, outs, 0).sum(axes)
    return sums / counts


def _op_linear(a, out_dtype):
    acc = _accumulator(out_dtype)
    x = a["x"].astype(acc, copy=False)
    w = np.asarray(a["weight"]).astype(acc, copy=False)  # [D_out, D_in]
    y = x @ w.T
    if a.get("bias") is not None:
        y = y + np.asarray(a["bias"]).astype(acc, copy=False)
    return y


def _op_reduce_sum(a, out_dtype):
    x = a["x"]
    axes = a.get("axes")
    axes = None if axes is None else tuple(int(v) for v in np.atleast_1d(axes))
    return np.sum(x.astype(_accumulator(out_dtype), copy=False), axis=axes,
                  keepdims=bool(a.get("keep_dims", False)))


def _op_reshape(a, out_dtype):
    x = a["x"]
    shape = [int(v) for v in np.atleast_1d(a["shape"])]
    if len(shape) == x.ndim:  # 0 keeps the input's dimension (only when ranks agree)
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return np.reshape(x, shape)


def _op_transpose(a, out_dtype):
    return np.transpose(a["x"], [int(p) for p in a["perm"]])


def _op_cast(a, out_dtype):
    name = str(a["dtype"])
    if name not in _NP_BY_DTYPE_STRING:
        raise MilRuntimeError(f"cast to unknown dtype {name!r}")
    return np.asarray(a["x"]).astype(_NP_BY_DTYPE_STRING[name])  # float -> int truncates


def _binary(fn):
    def op(a, out_dtype):
        return fn(np.asarray(a["x"]), np.asarray(a["y"]))
    return op


def _op_real_div(a, out_dtype):
    x, y = np.asarray(a["x"]), np.asarray(a["y"])
    if np.issubdtype(out_dtype, np.integer):
        return np.trunc(np.true_divide(x, y))
    return np.true_divide(x, y)


def _op_relu(a, out_dtype):
    x = a["x"]
    return np.maximum(x, np.zeros((), dtype=x.dtype))


def _op_tanh(a, out_dtype):
    return np.tanh(a["x"])


def _op_matmul(a, out_dtype):
    acc = _accumulator(out_dtype)
    x = np.asarray(a["x"]).astype(acc, copy=False)
    y = np.asarray(a["y"]).astype(acc, copy=False)
    if bool(a.get("transpose_x", False)):
        x = np.swapaxes(x, -1, -2)
    if bool(a.get("transpose_y", False)):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _op_slice_by_index(a, out_dtype):
    from coremltools.converters.mil.mil.ops.defs._utils import (
        get_squeeze_axes,
        solve_slice_by_index_slice,
    )

    x = a["x"]
    rank = x.ndim

    def flags(key, default):
        value = a.get(key)
        return [default] * rank if value is None else [bool(v) for v in np.atleast_1d(value)]

    stride = a.get("stride")
    slices = solve_slice_by_index_slice(
        x.shape, [int(v) for v in np.atleast_1d(a["begin"])],
        [int(v) for v in np.atleast_1d(a["end"])],
        [1] * rank if stride is None else [int(v) for v in np.atleast_1d(stride)],
        flags("begin_mask", False), flags("end_mask", False), flags("squeeze_mask", False))
    out = x[tuple(slices)]
    squeeze = get_squeeze_axes(flags("squeeze_mask", False), rank)
    return np.squeeze(out, axis=tuple(squeeze)) if squeeze else out


def _op_concat(a, out_dtype):
    if bool(a.get("interleave", False)):
        raise MilRuntimeError("concat with interleave=True is not implemented")
    return np.concatenate([np.asarray(v) for v in a["values"]], axis=int(a["axis"]))


def _op_const(a, out_dtype):  # never called: consts are read when the program is prepared
    raise AssertionError


_OPS: dict[str, Callable[[dict[str, Any], np.dtype], np.ndarray]] = {
    "const": _op_const,
    "conv": _op_conv,
    "linear": _op_linear,
    "relu": _op_relu,
    "tanh": _op_tanh,
    "avg_pool": _op_avg_pool,
    "max_pool": _op_max_pool,
    "mul": _binary(np.multiply),
    "add": _binary(np.add),
    "real_div": _op_real_div,
    "reduce_sum": _op_reduce_sum,
    "reshape": _op_reshape,
    "transpose": _op_transpose,
    "cast": _op_cast,
    "slice_by_index": _op_slice_by_index,
    "concat": _op_concat,
    "matmul": _op_matmul,
}
SUPPORTED_OPS = frozenset(_OPS)


# ----------------------------------------------------------------------------------------
# feeds

def _is_symbolic(dim) -> bool:
    return not isinstance(dim, (int, np.integer))


class _InputSpec:
    """What one program input accepts: from the spec's feature description and the MIL var."""

    def __init__(self, var, feature):
        self.name = var.name
        self.var = var
        self.dtype = _np_dtype(var.dtype) or np.dtype(np.float32)
        self.shape = tuple(var.shape)  # what the program reads (NCHW for images)
        self.kind = "multiArray"
        self.ranges = None      # [(lo, hi or None)] per dim
        self.enumerated = None  # [tuple] allowed shapes
        self.color = None
        if feature is not None:
            self._read_feature(feature)
        # a leading batch axis: every input but a rank-3 (C, H, W) image and scalars
        self.has_batch = bool(self.shape) and not (self.kind == "image" and len(self.shape) == 3)

    def _read_feature(self, feature) -> None:
        which = feature.type.WhichOneof("Type")
        if which == "imageType":
            self.kind = "image"
            from coremltools.proto import FeatureTypes_pb2 as ft

            self.color = ft.ImageFeatureType.ColorSpace.Name(feature.type.imageType.colorSpace)
        elif which == "multiArrayType":
            m = feature.type.multiArrayType
            if m.WhichOneof("ShapeFlexibility") == "shapeRange":
                self.ranges = [(int(r.lowerBound), None if r.upperBound < 0 else int(r.upperBound))
                               for r in m.shapeRange.sizeRanges]
            elif m.WhichOneof("ShapeFlexibility") == "enumeratedShapes":
                self.enumerated = [tuple(int(d) for d in shape.shape)
                                   for shape in m.enumeratedShapes.shapes]

    def describe(self) -> str:
        dims = ["?" if _is_symbolic(d) else str(d) for d in self.shape]
        if self.kind == "image":
            dims = dims[:-3] + dims[-2:] + dims[-3:-2]  # what the caller passes: [N,] H, W, C
            return f"image {self.color} {'N x ' * (len(dims) - 3)}H x W x C ({', '.join(dims)})"
        return f"{self.dtype.name} ({', '.join(dims)})"

    def to_tensor(self, value, any_batch: bool = False) -> np.ndarray:
        """The caller's feed as the tensor the program reads, or InputError.

        ``any_batch``: accept any leading dimension (the caller splits the batch).
        """
        x = np.asarray(value)
        if self.kind == "image":
            rank = len(self.shape)  # N,C,H,W or C,H,W
            if x.ndim == rank - 1 and self.shape[-3] == 1:  # grayscale without a channel axis
                x = x[..., None]
            if x.ndim != rank or rank not in (3, 4):
                raise InputError(f"input {self.name!r}: expected {self.describe()}, "
                                 f"got shape {x.shape}")
            x = np.moveaxis(x, -1, -3)  # ..., H, W, C -> ..., C, H, W
        x = x.astype(self.dtype, copy=False)
        if x.ndim != len(self.shape):
            raise InputError(f"input {self.name!r}: expected {self.describe()}, got shape "
                             f"{np.shape(value)}")
        for d, (got, want) in enumerate(zip(x.shape, self.shape)):
            if d == 0 and any_batch:
                continue
            bad = (not _is_symbolic(want) and got != want)
            if self.ranges is not None and d < len(self.ranges):
                lo, hi = self.ranges[d]
                bad = bad or got < lo or (hi is not None and got > hi)
            if bad:
                rng = "" if self.ranges is None else f" (allowed ranges {self.ranges})"
                raise InputError(f"input {self.name!r}: expected {self.describe()}{rng}, got "
                                 f"shape {np.shape(value)}")
        if self.enumerated is not None and tuple(x.shape) not in self.enumerated:
            raise InputError(f"input {self.name!r}: shape {x.shape} is not one of the "
                             f"enumerated shapes {self.enumerated}")
        return x


# ----------------------------------------------------------------------------------------

class MilProgram:
    """One function of a MIL program, ready to run with numpy.

    Build it with :meth:`from_mlpackage` (or :meth:`from_spec`); ``function`` is a pymil
    ``Function`` as ``coremltools.converters.mil.frontend.milproto.load`` returns them.
    """

    def __init__(self, function, description=None, source: str = "<program>"):
        self.source = source
        self._function = function
        block_ops = list(function.operations)
        self.op_types = Counter(op.op_type for op in block_ops)
        for op in block_ops:
            if op.op_type not in _OPS or getattr(op, "blocks", None):
                raise UnsupportedMilOp(op.op_type, op.name)

        features = {}
        if description is not None:
            features = {f.name: f for f in description.input}
        self._inputs = [_InputSpec(var, features.get(name))
                        for name, var in function.inputs.items()]
        self._output_vars = list(function.outputs)

        # Constants are read once; the other ops, in program order, are the plan to run.
        self._consts: dict[int, Any] = {}
        self._plan = []
        for op in block_ops:
            if op.op_type == "const":
                out = op.outputs[0]
                self._consts[id(out)] = self._const_value(out)
            else:
                self._plan.append(op)
        # Free each intermediate after its last reader (large batches stay within memory).
        keep = {id(v) for v in self._output_vars}
        last_use: dict[int, int] = {}
        for i, op in enumerate(self._plan):
            for var in self._input_vars(op).values():
                last_use[id(var)] = i
        self._release = [[] for _ in self._plan]
        for var_id, i in last_use.items():
            if var_id not in keep and var_id not in self._consts:
                self._release[i].append(var_id)

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_mlpackage(cls, path: str | os.PathLike, function_name: str | None = None
                       ) -> "MilProgram":
        """Load ``path`` (an ``.mlpackage`` directory holding an ML Program) without CoreML."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"CoreML package not found: {path}")
        if not path.is_dir():
            raise InputError(f"{path} is not an .mlpackage directory (an ML Program is saved "
                             "as a package; .mlmodel files hold neural networks)")
        coremltools("running a .mlpackage")  # quiet import (it pulls in TensorFlow and logs proxy warnings off macOS)
        from coremltools.models import utils as ct_utils

        try:
            spec = ct_utils.load_spec(str(path))
        except Exception as err:  # noqa: BLE001 - libmodelpackage/protobuf give bare errors
            raise InputError(f"cannot read the CoreML package {path}: {err}") from err
        return cls.from_spec(spec, _weights_dir(path), function_name, source=str(path))

    @classmethod
    def from_spec(cls, spec, weights_dir: str | os.PathLike | None = None,
                  function_name: str | None = None, source: str = "<spec>") -> "MilProgram":
        """Build from a ``Model_pb2.Model`` whose weights (if any) are in ``weights_dir``."""
        if spec.WhichOneof("Type") != "mlProgram":
            raise InputError(f"{source} holds a {spec.WhichOneof('Type')!r} model, not an ML "
                             "Program (convert with convert_to='mlprogram')")
        from coremltools.converters.mil.frontend.milproto.load import load

        weights = "" if weights_dir is None else str(weights_dir)
        try:
            program = load(spec, spec.specificationVersion, file_weights_dir=weights)
        except Exception as err:  # noqa: BLE001 - the loader raises bare errors
            raise InputError(f"cannot load the MIL program of {source} (weights {weights or '-'}"
                             f"): {type(err).__name__}: {err}") from err
        name = function_name or spec.description.defaultFunctionName or "main"
        if name not in program.functions:
            raise InputError(f"{source} has no MIL function {name!r} "
                             f"(functions: {', '.join(program.functions)})")
        return cls(program.functions[name], spec.description, source=source)

    # -- description -------------------------------------------------------------------

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self._inputs]

    @property
    def output_names(self) -> list[str]:
        return [var.name for var in self._output_vars]

    @property
    def compute_dtypes(self) -> Counter:
        """How many non-const ops produce each dtype, e.g. Counter({"fp16": 280, "fp32": 2})."""
        from coremltools.converters.mil.mil import types

        return Counter(types.builtin_to_string(op.outputs[0].dtype) for op in self._plan)

    def __repr__(self) -> str:
        return (f"MilProgram({self.source!r}, inputs={self.input_names}, "
                f"outputs={self.output_names}, ops={sum(self.op_types.values())})")

    # -- running -----------------------------------------------------------------------

    def intermediate_names(self) -> dict[str, tuple]:
        """{variable name: declared shape} of every op result (for locating stage tensors)."""
        return {op.outputs[0].name: tuple(op.outputs[0].shape or ()) for op in self._plan}

    def run(self, feeds: Mapping[str, Any], capture: frozenset[str] = frozenset()
            ) -> dict[str, np.ndarray]:
        """Evaluate the program: {input name: array} -> {output name: array}, plus the
        intermediate variables named in ``capture`` (by variable name)."""
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise InputError(f"{self.source}: feeds must be exactly {self.input_names}"
                             + (f"; missing {missing}" if missing else "")
                             + (f"; unknown {extra}" if extra else ""))
        fixed_one = all(spec.has_batch and not _is_symbolic(spec.shape[0]) and spec.shape[0] == 1
                        for spec in self._inputs)
        tensors = {spec.name: spec.to_tensor(feeds[spec.name], any_batch=fixed_one)
                   for spec in self._inputs}
        batches = {t.shape[0] for t in tensors.values()}
        if fixed_one and batches != {1}:
            if len(batches) != 1:
                raise InputError(f"{self.source}: inputs disagree on the batch size {batches}")
            rows = [self._run_once({k: v[i:i + 1] for k, v in tensors.items()}, capture)
                    for i in range(batches.pop())]
            return {name: np.concatenate([r[name] for r in rows], axis=0) for name in rows[0]}
        return self._run_once(tensors, capture)

    def _run_once(self, tensors: dict[str, np.ndarray], capture: frozenset[str] = frozenset()
                  ) -> dict[str, np.ndarray]:
        captured: dict[str, np.ndarray] = {}
        env: dict[int, Any] = dict(self._consts)
        for spec in self._inputs:
            env[id(spec.var)] = tensors[spec.name]
        for i, op in enumerate(self._plan):
            args = {}
            for key, var in self._input_vars(op).items():
                if id(var) in env:
                    args[key] = env[id(var)]
                elif var.op is not None and var.op.op_type == "const":  # e.g. a default input
                    args[key] = self._const_value(var)
                else:
                    raise MilRuntimeError(f"op {op.name!r} ({op.op_type}) reads {var.name!r} "
                                          "before it is computed")
            for key, value in op.inputs.items():
                if isinstance(value, (list, tuple)):
                    args[key] = [args.pop(f"{key}.{i}") for i in range(len(value))]
            if len(op.outputs) != 1:  # none of the supported ops has several outputs
                raise MilRuntimeError(f"op {op.name!r} ({op.op_type}) has "
                                      f"{len(op.outputs)} outputs")
            out = op.outputs[0]
            out_dtype = _np_dtype(out.dtype)
            try:
                value = _OPS[op.op_type](args, out_dtype)
            except (MilRuntimeError, UnsupportedMilOp):
                raise
            except Exception as err:  # noqa: BLE001 - name the op that failed
                raise MilRuntimeError(f"op {op.name!r} ({op.op_type}) failed: "
                                      f"{type(err).__name__}: {err}") from err
            value = np.asarray(value)
            if out_dtype is not None:
                value = value.astype(out_dtype, copy=False)  # the program's declared dtype
            self._check_shape(op, out, value)
            env[id(out)] = value
            if out.name in capture:
                captured[out.name] = value
            for var_id in self._release[i]:
                env.pop(var_id, None)
        return {**captured, **{var.name: np.asarray(env[id(var)]) for var in self._output_vars}}

    # -- helpers -----------------------------------------------------------------------

    @staticmethod
    def _input_vars(op) -> dict[str, Any]:
        """Every input variable; a tuple input (concat's ``values``) as ``key.i`` entries."""
        out = {}
        for k, v in op.inputs.items():
            if isinstance(v, (list, tuple)):
                out.update({f"{k}.{i}": item for i, item in enumerate(v)})
            else:
                out[k] = v
        return out

    @staticmethod
    def _const_value(var):
        value = var.val
        dtype = _np_dtype(var.dtype)
        if dtype is not None and value is not None and not isinstance(value, str):
            value = np.asarray(value).astype(dtype, copy=False)
        return value

    @staticmethod
    def _check_shape(op, out, value: np.ndarray) -> None:
        """The result must have the program's declared rank and every static dimension."""
        declared = tuple(out.shape) if out.shape is not None else ()
        ok = len(declared) == value.ndim and all(
            _is_symbolic(d) or int(d) == got for d, got in zip(declared, value.shape))
        if not ok:
            raise MilRuntimeError(f"op {op.name!r} ({op.op_type}) gave shape {value.shape}, "
                                  f"the program declares {declared}")


def _weights_dir(package: Path) -> str:
    """The package's weights directory (from its manifest when readable)."""
    try:
        from coremltools.libmodelpackage import ModelPackage

        if ModelPackage.isValid(str(package)):
            item = ModelPackage(str(package)).findItemByNameAuthor(
                "weights", "com.apple.CoreML")
            if item is not None:
                return item.path()
    except Exception:  # noqa: BLE001 - fall back to the standard layout
        pass
    return str(package.joinpath(*WEIGHTS_SUBDIR))

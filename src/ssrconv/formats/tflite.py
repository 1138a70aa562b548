"""The .tflite read side: the checked flatbuffer reader, the LiteRT interpreter loader, verify,
describe, file precision and static batch (shared by the TFLite converter and runtimes)."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from ssrconv.errors import ModelFileError, clip


# Larger than any tensor an SSR-Net export has (the biggest activation is 64x64x32 float32,
# 512 KB per face) by a wide margin, and far below what a corrupt shape asks for: one flipped
# bit in a dimension made allocate_tensors try to fill 19 GB and hang the process (docs/BAD_INPUTS.md).
MAX_TENSOR_BYTES = 256 * 2**20


def _itemsizes() -> dict[int, int | None]:
    """Schema TensorType value -> bytes per element, derived from the type names of the schema
    (FLOAT32 -> 4, COMPLEX64 -> 8, INT4 -> 1 rounded up, BOOL -> 1; STRING, RESOURCE and
    VARIANT have no fixed size: None)."""
    import re

    from ssrconv.formats.tflite_flatbuffer import schema

    types = schema().TensorType
    sizes: dict[int, int | None] = {}
    for name in dir(types):
        value = getattr(types, name)
        if name.startswith("_") or not isinstance(value, int):
            continue
        bits = re.search(r"(\d+)$", name)
        sizes[value] = (1 if name == "BOOL" else None if bits is None
                        else max(1, int(bits.group(1)) // 8))
    return sizes


_ITEMSIZE = _itemsizes()


def check_flatbuffer(data: bytes, path: Path) -> None:
    """Refuse a .tflite whose tables point outside themselves or whose tensors cannot be sane.

    The runtime's own flatbuffer verifier checks the layout only; the interpreter then trusts
    indices and shapes. Mutated files showed what slips through: tensor names that are not
    UTF-8 (UnicodeDecodeError in the Python wrapper) and a dimension grown to 33,554,448
    (a 19 GB allocation: the process hangs). This walks the model with the schema's own
    reader before any byte reaches C++: operator and signature indices in range, shapes
    non-negative with bounded sizes, constant buffers exactly as long as their shape says.
    """
    from ssrconv.formats.tflite_flatbuffer import schema as flatbuffer_schema

    schema = flatbuffer_schema()

    def bad(why: str) -> ModelFileError:
        return ModelFileError(f"{path}: not a loadable TFLite model ({why}); re-export it with "
                              "ssrconv export")

    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise bad("no TFL3 flatbuffer identifier")
    try:
        model = schema.Model.GetRootAs(data, 0)
        n_buffers, n_codes = model.BuffersLength(), model.OperatorCodesLength()
        buffer_bytes = {}
        for b in range(n_buffers):
            buffer = model.Buffers(b)
            size = buffer.Size() if buffer.Offset() > 1 else buffer.DataLength()
            if buffer.Offset() > 1 and buffer.Offset() + size > len(data):
                raise bad(f"buffer {b} lies beyond the end of the file")
            buffer_bytes[b] = size
        for g in range(model.SubgraphsLength()):
            graph = model.Subgraphs(g)
            n_tensors = graph.TensorsLength()
            for t in range(n_tensors):
                tensor = graph.Tensors(t)
                (tensor.Name() or b"").decode("utf-8")
                shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
                if any(d < 0 for d in shape):
                    raise bad(f"tensor {t} has a negative dimension {shape}")
                itemsize = _ITEMSIZE.get(tensor.Type())  # None: no fixed size (string, resource)
                count = 1
                for d in shape:
                    count *= d
                if count * (itemsize or 1) > MAX_TENSOR_BYTES:
                    raise bad(f"tensor {t} declares shape {shape} ({count * (itemsize or 1):,} bytes)")
                if not 0 <= tensor.Buffer() < max(n_buffers, 1):
                    raise bad(f"tensor {t} points at buffer {tensor.Buffer()} of {n_buffers}")
                stored = buffer_bytes.get(tensor.Buffer(), 0)
                if (stored and itemsize and tensor.Sparsity() is None
                        and stored != count * itemsize):
                    raise bad(f"tensor {t} has shape {shape} but {stored:,} bytes of data")
            def tensor_list(vector) -> list[int]:
                values = [] if isinstance(vector, int) else [int(i) for i in vector]  # 0: absent
                for i in values:
                    if not -1 <= i < n_tensors:
                        raise bad(f"subgraph {g} refers to tensor {i} of {n_tensors}")
                return values

            # Data flow, in execution (operator) order: every tensor an operator reads is a
            # graph input, a constant, a variable or the output of an earlier operator, and no
            # tensor is written twice. A flipped offset that pointed one CONV_2D at another
            # operator's tensor lists passed every check above and crashed XNNPACK (SIGSEGV).
            available = set(tensor_list(graph.InputsAsNumpy()))
            for t in range(n_tensors):
                tensor = graph.Tensors(t)
                if buffer_bytes.get(tensor.Buffer(), 0) or tensor.IsVariable():
                    available.add(t)
            for o in range(graph.OperatorsLength()):
                op = graph.Operators(o)
                if not 0 <= op.OpcodeIndex() < n_codes:
                    raise bad(f"operator {o} has opcode {op.OpcodeIndex()} of {n_codes}")
                for i in tensor_list(op.InputsAsNumpy()):
                    if i >= 0 and i not in available:
                        raise bad(f"operator {o} reads tensor {i}, which no earlier operator "
                                  "writes")
                for i in tensor_list(op.OutputsAsNumpy()):
                    if i in available:
                        raise bad(f"operator {o} writes tensor {i}, which is already written")
                    available.add(i)
            for i in tensor_list(graph.OutputsAsNumpy()):
                if i not in available:
                    raise bad(f"subgraph {g} output tensor {i} is never written")
        for s in range(model.SignatureDefsLength()):
            signature = model.SignatureDefs(s)
            (signature.SignatureKey() or b"").decode("utf-8")
            if not 0 <= signature.SubgraphIndex() < model.SubgraphsLength():
                raise bad(f"signature {s} refers to subgraph {signature.SubgraphIndex()}")
            n_tensors = model.Subgraphs(signature.SubgraphIndex()).TensorsLength()
            maps = [signature.Inputs(i) for i in range(signature.InputsLength())]
            maps += [signature.Outputs(i) for i in range(signature.OutputsLength())]
            for tensor_map in maps:
                (tensor_map.Name() or b"").decode("utf-8")
                if not 0 <= tensor_map.TensorIndex() < n_tensors:
                    raise bad(f"signature {s} refers to tensor {tensor_map.TensorIndex()}")
    except ModelFileError:
        raise
    except UnicodeDecodeError:
        raise bad("a tensor or signature name is not UTF-8 text") from None
    except Exception as err:  # noqa: BLE001 - the generated reader fails with struct/index errors
        raise bad(f"corrupt or truncated flatbuffer: {clip(str(err)) or type(err).__name__}") from None


def read_model(path: Path) -> bytes:
    """The bytes of a .tflite file, checked by :func:`check_flatbuffer`; ModelFileError for an
    unreadable or corrupt file."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read ({err.strerror or err})") from None
    check_flatbuffer(data, path)
    return data


def load_interpreter(path: Path, num_threads: int | None = None, use_xnnpack: bool = True,
                     preserve_all_tensors: bool = False, data: bytes | None = None):
    """An ai-edge-litert Interpreter (no TensorFlow import), with or without XNNPACK.

    The interpreter (C++) gets bytes checked by :func:`read_model`: ``data`` when the caller
    already has them, else the file read once. ModelFileError for an unreadable, corrupt or
    unloadable file.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from ssrconv._imports import silenced_fd2

    if data is None:
        data = read_model(path)
    kwargs = {"model_content": data, "num_threads": num_threads}
    if not use_xnnpack or preserve_all_tensors:
        # A delegate's internal tensors are not preserved: debugging reads need the builtins.
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if preserve_all_tensors:
        kwargs["experimental_preserve_all_tensors"] = True
    # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." goes to fd 2 from C++;
    # real failures raise ValueError/RuntimeError with their message.
    try:
        with silenced_fd2(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging"
            interpreter = Interpreter(**kwargs)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise ModelFileError(f"{path}: not a loadable TFLite model "
                             f"({clip(str(err))})") from None
    return interpreter


def _quantization(detail) -> dict | None:
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []))
    if scales.size == 0:
        return None
    zero_points = np.asarray(params.get("zero_points", []))
    if scales.size == 1:
        return {"scale": float(scales[0]), "zero_point": int(zero_points[0])}
    return {"scale": scales.tolist(), "zero_point": zero_points.tolist(),
            "axis": int(params.get("quantized_dimension", 0))}


def describe(path: Path) -> dict:
    """Signature inputs/outputs (with quantization), op counts and ops computing in float."""
    interpreter = load_interpreter(path, use_xnnpack=False)  # reading only: no delegate needed
    runner = interpreter.get_signature_runner()

    def io_list(details):
        out = []
        for name, d in details.items():
            shape = [None if s < 0 else int(s) for s in d["shape_signature"]]
            out.append({"name": name, "shape": shape, "dtype": np.dtype(d["dtype"]).name,
                        "quantization": _quantization(d), "tensor": d["name"]})
        return out

    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops = Counter()
    float_ops = Counter()
    macs = 0
    for op in interpreter._get_ops_details():  # the public API has no op listing
        ops[op["op_name"]] += 1
        indices = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if any(np.dtype(tensors[i]["dtype"]).kind == "f" for i in indices if i in tensors):
            float_ops[op["op_name"]] += 1
        macs += _op_macs(op, tensors)
    from ssrconv.formats.tflite_flatbuffer import integer_only_violations

    integer_only = bool(ops) and not integer_only_violations(read_model(path))
    return {"inputs": io_list(runner.get_input_details()),
            "outputs": io_list(runner.get_output_details()),
            "ops": dict(sorted(ops.items())), "float_ops": dict(sorted(float_ops.items())),
            "integer_only": integer_only, "macs_per_face": macs}


def _op_macs(op: dict, tensors: dict) -> int:
    """Multiply-adds of one CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED for one face (the
    tensors' batch is 1 until resized; a static batch N is divided out)."""
    name = op["op_name"]
    if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        return 0
    out = [int(s) for s in tensors[op["outputs"][0]]["shape"]]
    kernel = [int(s) for s in tensors[op["inputs"][1]]["shape"]]
    if name == "FULLY_CONNECTED":  # kernel (units, inputs); output (..., units)
        return int(np.prod(out)) * kernel[1] // max(out[0], 1)
    # CONV_2D kernel (O, kh, kw, I / groups); DEPTHWISE (1, kh, kw, O): one input per output
    taps = kernel[1] * kernel[2] * (kernel[3] if name == "CONV_2D" else 1)
    return int(np.prod(out)) * taps // max(out[0], 1)


def static_batch(path: Path) -> int | None:
    """The input batch fixed by ``export --batch N``, None for a variable batch."""
    from ssrconv.formats import tflite_flatbuffer

    return tflite_flatbuffer.static_batch(read_model(path))


def verify(path: Path) -> None:
    """Refuse a corrupt .tflite before the C++ interpreter is handed its bytes."""
    read_model(path)


def file_precision(path: Path) -> str:
    """The precision a .tflite file computes in, read from its tensors: int8 when operators
    produce 8-bit activations (the integer int8 file's int16 head included), int16x8 when they
    produce int16 ones and no 8-bit ones, dynamic when only weights are int8, fp16 for float16
    weights, else fp32."""
    interpreter = load_interpreter(path, use_xnnpack=False)
    tensors = {d["index"]: np.dtype(d["dtype"]) for d in interpreter.get_tensor_details()}
    produced = {i for op in interpreter._get_ops_details() for i in op["outputs"] if i >= 0}
    kinds = {tensors[i] for i in tensors}
    if any(tensors[i] in (np.dtype(np.int8), np.dtype(np.uint8)) for i in produced if i in tensors):
        return "int8"
    if any(tensors[i] == np.dtype(np.int16) for i in produced if i in tensors):
        return "int16x8"
    if np.dtype(np.int8) in kinds:
        return "dynamic"
    if np.dtype(np.float16) in kinds:
        return "fp16"
    return "fp32"


def output_names(path: Path) -> list[str]:
    """The signature names of a .tflite's outputs, in subgraph output order (what a runtime that
    names outputs after their tensors, e.g. OpenVINO's ``StatefulPartitionedCall_1:0``, maps
    back to the heads)."""
    from ssrconv.formats import tflite_flatbuffer

    return tflite_flatbuffer.signature_output_names(tflite_flatbuffer.load(path.read_bytes()))

"""The .onnx read side: the checked reader, verify, describe, file precision and static batch
(shared by the ONNX converters and the onnxruntime/tract/browser runtimes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


_ONNX_DTYPES = {1: "float32", 10: "float16", 3: "int8", 2: "uint8", 6: "int32", 7: "int64"}


def describe(path: Path) -> dict:
    """Inputs, outputs (name, shape with None for dynamic dims, dtype), ops and opset, read back."""
    from collections import Counter

    import onnx

    proto = onnx.load(str(path))

    def io(values):
        out = []
        for v in values:
            tt = v.type.tensor_type
            shape = [d.dim_value if d.dim_value else None for d in tt.shape.dim]
            out.append({"name": v.name, "shape": shape,
                        "dtype": _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type)),
                        "quantization": None})
        return out

    ops = Counter(node.op_type for node in proto.graph.node)
    integer_ops, float_ops = _split_qdq(proto)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    described = {"inputs": io(proto.graph.input), "outputs": io(proto.graph.output),
                 "ops": dict(sorted(ops.items())), "float_ops": dict(sorted(float_ops.items())),
                 "integer_only": bool(ops) and not float_ops, "opset": opset,
                 "metadata": {p.key: p.value for p in proto.metadata_props}}
    if integer_ops:
        described["integer_ops"] = dict(sorted(integer_ops.items()))
        described["onnxruntime_ops"] = _runtime_ops(path)
    return described


QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def _split_qdq(proto):
    """(integer, float) op counts of a QDQ graph. A node computes in integer when each of its
    activations is an integer tensor or a float one read from a DequantizeLinear (inputs) /
    written only into QuantizeLinear nodes (outputs), and any float constant it reads directly
    is a scalar (an exponent; weights come through DequantizeLinear): the groups onnxruntime
    fuses into QLinear* kernels, and the data-movement nodes (Slice, Transpose, Reshape,
    Concat) working on integer tensors. QuantizeLinear / DequantizeLinear themselves are
    counted in neither. A tensor whose type ONNX cannot infer counts as float."""
    from collections import Counter

    import onnx

    graph = proto.graph
    initializers = {i.name: i for i in graph.initializer}
    types = {i.name: i.data_type for i in graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(proto).graph
    except Exception:  # noqa: BLE001 - an unknown op or type: every activation counts as float
        inferred = graph
    for value in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        types[value.name] = value.type.tensor_type.elem_type
    floating_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                      onnx.TensorProto.BFLOAT16, onnx.TensorProto.UNDEFINED}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}

    def is_float(name: str) -> bool:
        return types.get(name, onnx.TensorProto.UNDEFINED) in floating_types

    def input_ok(name: str) -> bool:
        if name in initializers:
            return not is_float(name) or int(np.prod(initializers[name].dims)) <= 1
        return not is_float(name) or (name in producer
                                      and producer[name].op_type == "DequantizeLinear")

    def output_ok(name: str) -> bool:
        if not is_float(name):
            return True
        return (name not in graph_outputs and bool(consumers.get(name))
                and all(c.op_type == "QuantizeLinear" for c in consumers[name]))

    integer, floating = Counter(), Counter()
    for node in graph.node:
        if node.op_type in QDQ_OPS:
            continue
        activations = [i for i in node.input if i and i not in initializers]
        ok = (bool(activations) and all(input_ok(i) for i in node.input if i)
              and all(output_ok(o) for o in node.output))
        (integer if ok else floating)[node.op_type] += 1
    return integer, floating


def _runtime_ops(path: Path) -> dict:
    """Op counts of the graph onnxruntime (CPU, default optimizations) actually runs: shows
    which DequantizeLinear/QuantizeLinear groups it fused into QLinear* kernels."""
    from collections import Counter

    import onnx
    import onnxruntime as ort

    from ssrconv.atomic import scratch_dir

    with scratch_dir("ssrconv-ort-opt-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    ops = Counter(node.op_type for node in optimized.graph.node)
    return {"onnxruntime": ort.__version__, "ops": dict(sorted(ops.items()))}


def read_model(path: Path):
    """The parsed, checked ModelProto of an .onnx file; ModelFileError for an unreadable,
    corrupt or invalid file. (onnxruntime's own parse errors quote the corrupt bytes and then
    fail to decode them, after printing a banner: onnx sees the bytes first.)"""
    import onnx

    from ssrconv.errors import ModelFileError, clip

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        proto = onnx.load_model_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as err:  # noqa: BLE001 - protobuf DecodeError, ValidationError, ...
        first = clip(str(err)) or type(err).__name__
        raise ModelFileError(f"{path}: not a valid ONNX model ({first}); re-export it with "
                             "ssrconv export") from None
    return proto


def static_batch(path: Path) -> int | None:
    """The input batch fixed by ``export --batch N``, None for a variable (named) batch."""
    dim = read_model(path).graph.input[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None


def verify(path: Path) -> None:
    """Refuse a corrupt .onnx before onnxruntime is handed its bytes."""
    read_model(path)


_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                  "QLinearMatMul", "MatMulInteger", "ConvInteger"}


def file_precision(path: Path) -> str:
    """The precision an .onnx file computes in, read from the graph: int8 when it quantizes,
    fp16 when its weights are float16, else fp32."""
    import onnx

    proto = read_model(path)
    if any(node.op_type in _QUANTIZED_OPS for node in proto.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        return "fp16"
    return "fp32"

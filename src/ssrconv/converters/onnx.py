"""ONNX export with tf2onnx (works on the Keras 3 model directly; max diff 0 on real faces)."""

from __future__ import annotations

import re
from pathlib import Path


from ssrconv.reference.preprocess import INPUT_SIZE


def to_proto(model, opset: int, batch: int | None = None):
    """tf2onnx of ``model``: input ``face_bgr`` with a dynamic ``batch`` dim (or the static
    ``batch`` given), outputs named as the model's."""
    from ssrconv._extras import require

    tf2onnx = require("tf2onnx", "export", "ONNX export")

    from ssrconv._imports import tensorflow

    tf = tensorflow("ONNX export")
    spec = [tf.TensorSpec((batch, INPUT_SIZE, INPUT_SIZE, 3), tf.float32, name="face_bgr")]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=int(opset))
    canonical_names(proto)
    for value in list(proto.graph.input) + list(proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_param or not dim.dim_value:
            dim.dim_param = "batch"  # tf2onnx names it "unk__NN"
    return proto


_GENERATED = re.compile(r"__\d+")


def canonical_names(proto) -> None:
    """Make a tf2onnx graph the same bytes for the same model, in place.

    tf2onnx numbers the names of the nodes and constants it inserts from a process-wide
    counter (``utils.make_name``: "const_axes__310" in a process that converted before,
    "const_axes__10" in a fresh one), in an order that varies between two conversions of one
    model in one process (which of two equal constants survives its merge, and so its name,
    varies too), and lists its initializers in that varying order: the bytes of
    every ONNX-derived file (ONNX, MNN, OpenVINO, the web folder) depended on what the command
    exported before (docs/CONVERTERS.md, "Byte-reproducible exports"). The node order itself
    is stable, so every generated name is renumbered by its first appearance in node order
    (generated constants named ``const__<n>``) and the initializers and value infos are sorted
    by name. Names are labels: the function is unchanged.
    """
    graph = proto.graph
    constants = {tensor.name for tensor in graph.initializer}
    renamed: dict[str, str] = {}

    def name(old: str) -> str:
        if not old or not _GENERATED.search(old):
            return old
        if old not in renamed:
            # A generated constant is named after its first user's role ("const_starts__21"),
            # but tf2onnx merges equal constants and keeps whichever it meets first, so the
            # same tensor came out as const_starts__21 or const_axes__21: constants get a
            # neutral name, other generated names keep their base.
            number = f"__{len(renamed)}"
            renamed[old] = f"const{number}" if old in constants else _GENERATED.sub(number, old)
        return renamed[old]

    for node in graph.node:
        node.name = name(node.name)
        node.input[:] = [name(i) for i in node.input]
        node.output[:] = [name(o) for o in node.output]
    for tensor in graph.initializer:
        tensor.name = name(tensor.name)
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        value.name = name(value.name)
    for field in (graph.initializer, graph.value_info):
        ordered = sorted(field, key=lambda item: item.name)
        copies = [type(item)() for item in ordered]
        for copy, item in zip(copies, ordered):
            copy.CopyFrom(item)
        del field[:]
        field.extend(copies)


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Convert ``model`` to ONNX at ``dest`` (fp32, or int8: static QDQ, see
    :mod:`ssrconv.converters.onnx_int8`), the preprocessing contract and provenance in
    metadata_props."""
    import onnx

    extra = {"opset": int(options.opset)}
    if target.precision == "int8":
        from ssrconv.converters import onnx_int8

        proto = onnx_int8.convert_int8(
            model, calibration, lambda keras_model: to_proto(keras_model, options.opset, options.batch))
        extra["int8_recipe"] = onnx_int8.INT8_RECIPE
    else:
        proto = to_proto(model, options.opset, options.batch)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "ssrconv (tf2onnx)" + (" + onnxruntime.quantization"
                                                 if target.precision == "int8" else "")
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(dest))
    return extra


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
    """(integer, float) op counts of a QDQ graph. A node computes in integer when every input
    that is not an initializer comes out of a DequantizeLinear and every output goes only into
    QuantizeLinear nodes (the groups onnxruntime fuses into QLinear* kernels); QuantizeLinear /
    DequantizeLinear themselves are counted in neither."""
    from collections import Counter

    initializers = {i.name for i in proto.graph.initializer}
    producer = {out: node for node in proto.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in proto.graph.output}
    integer, floating = Counter(), Counter()
    for node in proto.graph.node:
        if node.op_type in QDQ_OPS:
            continue
        inputs = [i for i in node.input if i and i not in initializers]
        fed = all(i in producer and producer[i].op_type == "DequantizeLinear" for i in inputs)
        drains = all(o not in graph_outputs and consumers.get(o)
                     and all(c.op_type == "QuantizeLinear" for c in consumers[o])
                     for o in node.output)
        (integer if inputs and fed and drains else floating)[node.op_type] += 1
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

    from ssrconv.errors import ModelFileError

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        proto = onnx.load_model_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as err:  # noqa: BLE001 - protobuf DecodeError, ValidationError, ...
        first = (str(err).splitlines() or [type(err).__name__])[0][:200]
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

"""Integer ONNX of SSR-Net: an integer-only TFLite file converted by tf2onnx's TFLite path,
which writes every quantized TFLite tensor as QuantizeLinear -> DequantizeLinear around the
operators, so the ONNX file carries the same integers as the TFLite file (one recipe, one
file: docs/INT8.md, "Integer ONNX"). The source file per precision (:data:`SOURCES`, the
TFLite row whose file it converts; :data:`RECIPES`):

- ``--to onnx --precision int8-integer``: the ``tflite-int8`` file, made by
  :mod:`ssrconv.converters.tflite_qat` (int8 convolutions, int16 SSR head, fine-tuned by
  distillation; the same cache entry);
- ``--to onnx --precision int16x8`` (A16W8): the 16x8 file of
  :func:`ssrconv.converters.tflite_int8.convert_int16x8` (int16 activations everywhere, int8
  per-channel weights), the form Qualcomm QNN and other ONNX-fed NPUs take.

tf2onnx's output is completed by :func:`complete_qdq` so that every compute node reads its
activations from DequantizeLinear and writes them only into QuantizeLinear (or works on integer
tensors directly: the crop's Slice, the flattening Transpose/Reshape, the merge's
Concat/Slice), what an ONNX-fed NPU compiler takes as an integer graph:

- int64 biases (the int16 layers') become int32 (DequantizeLinear has no int64 input; the
  original's largest is ~1.4e7 steps; a dead channel, int8 weights all zero, that TFLite
  stored at an epsilon scale beyond int32 takes a live channel's scales), and the opset
  becomes 21 (int16 QuantizeLinear/DequantizeLinear);
- each FULLY_CONNECTED (tf2onnx: MatMul, then Add of the bias) becomes one Gemm with its bias
  as third input, the QDQ Gemm pattern;
- a fused ReLU after a Conv/Gemm is dropped when its QuantizeLinear's zero point is the type's
  minimum (the clamp is the ReLU: exact), else gets a copy of that QuantizeLinear/
  DequantizeLinear pair in front of it (rounding commutes with the ReLU: exact);
- RSQRT (tf2onnx: Sqrt, then Reciprocal, with a float tensor between) becomes one
  ``Pow(x, -0.5)``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ssrconv.converters.tool import run_tool
from ssrconv.errors import ConverterError, Int8RecipeError
from ssrconv.targets import INT16_QDQ_OPSET, TARGETS, TF2ONNX_OPSETS


def convert_integer(model, target, calibration, opset: int, batch: int | None = None):
    """The integer ONNX ModelProto of ``model`` (the fast graph of ``target``, whose precision is
    ``int8-integer`` or ``int16x8``, a key of :data:`SOURCES`) at ``opset`` and what the TFLite
    recipe reports (``fine_tuning`` and ``cache`` for int8-integer; nothing for 16x8): input
    ``face_bgr``, outputs named as the model's; tf2onnx's generated names as it numbers them
    (the caller canonicalizes: ``converters.onnx.canonical_names``)."""
    from ssrconv._extras import require
    from ssrconv.atomic import scratch_dir
    from ssrconv.formats.tflite_flatbuffer import fix_batch, load, signature_output_names

    require("tf2onnx", "export", "ONNX export")
    from ssrconv.converters.tflite import integer_source

    tfl, info = integer_source(model, TARGETS[SOURCES[target.precision]], calibration)
    if batch is not None:
        tfl = fix_batch(tfl, batch)
    flat = load(tfl)
    graph = flat.subgraphs[0]
    heads = {graph.tensors[i].name.decode(): head
             for i, head in zip(graph.outputs, signature_output_names(flat))}
    with scratch_dir("ssrconv-onnx-integer-") as tmp:
        path = Path(tmp) / "integer.tflite"
        path.write_bytes(tfl)
        proto = _from_tflite(path, Path(tmp) / "integer.onnx")
    try:
        _name_io(proto, heads)
        _canonical_order(proto)
        _name_dequantized(proto)
        proto = complete_qdq(proto, opset)
    except KeyError as missing:  # a tf2onnx whose graph names or omits what these rewrites read
        import tf2onnx

        raise ConverterError(f"tf2onnx {tf2onnx.__version__} wrote an integer graph the QDQ "
                             f"completion does not know (no {missing}): install the tf2onnx "
                             "version pyproject.toml pins") from None
    # shape-inference hints tf2onnx leaves (706 entries, 76 KB): optional, and tract takes them
    # as facts (onnx_int8.convert_int8 drops them too)
    del proto.graph.value_info[:]
    return proto, info


TF2ONNX_TIMEOUT_S = 900


def _from_tflite(source: Path, dest: Path):
    """tf2onnx's conversion of the .tflite ``source`` (written to ``dest``, returned loaded),
    run by its command line in a child process whose string hash seed is fixed
    (PYTHONHASHSEED=0): its graph optimizers iterate sets of names, so the node order, and
    which of two merged equal constants keeps its name, changed from one process to the next
    (two exports, two sha256; with the seed fixed the order is the same).

    tf2onnx reads the shapes through TensorFlow's tf.lite.Interpreter, whose QUANTIZE refuses
    int8 -> int16 (the head's entry; LiteRT runs it): it logs that and takes the shapes stored
    in the file, which are the interpreter's here (static but the batch)."""
    import onnx

    command = [sys.executable, "-m", "tf2onnx.convert", "--tflite", str(source), "--output",
               str(dest), "--opset", str(TF2ONNX_OPSETS[1])]
    env = {**os.environ, "PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run_tool(command, "tf2onnx on the integer TFLite file", TF2ONNX_TIMEOUT_S, env=env)
    proto = onnx.load(str(dest))
    proto.graph.doc_string = ""  # "converted from /tmp/<scratch dir>/integer.tflite"
    return proto


def _canonical_order(proto) -> None:
    """The nodes in one topological order whatever order tf2onnx wrote them in, equal constants
    merged into one, and the constants renamed ``const__<n>`` by first use in that order.
    tf2onnx's TFLite path lists the DequantizeLinear nodes of constants in an order that varies
    from run to run with the hash seed fixed (two conversions of one .tflite: 214 of 708
    positions differed), merges a varying choice of equal constants (a scale shared by two
    DequantizeLinear nodes in one file, two copies in the next) and names a merged one after
    whichever duplicate it kept ("t133" or "const__49"), so the file's bytes varied. Each node
    gets a signature from what it computes (operator, attributes, its inputs' signatures; a
    constant's by its values; the graph input by position), never from a generated name; the
    order is Kahn's, the smallest signature first among the ready nodes."""
    import hashlib
    import heapq

    graph = proto.graph
    values = {t.name: hashlib.sha256(repr((t.data_type, tuple(t.dims))).encode() + _payload(t))
              .hexdigest() for t in graph.initializer}
    signature = {"": ""}
    signature.update({value.name: f"input{k}" for k, value in enumerate(graph.input)})
    signature.update(values)
    nodes = list(graph.node)
    node_signature = []
    for node in nodes:  # tf2onnx's order is topological: every input is known by now
        text = repr((node.op_type, node.domain, [a.SerializeToString() for a in node.attribute],
                     [signature[i] for i in node.input]))
        digest = hashlib.sha256(text.encode()).hexdigest()
        node_signature.append(digest)
        for k, output in enumerate(node.output):
            signature[output] = f"{digest}:{k}"
    producer = {o: k for k, node in enumerate(nodes) for o in node.output}
    waiting = [len({producer[i] for i in node.input if i in producer}) for node in nodes]
    consumers: dict[int, set[int]] = {}
    for k, node in enumerate(nodes):
        for i in node.input:
            if i in producer:
                consumers.setdefault(producer[i], set()).add(k)
    ready = [(node_signature[k], k) for k, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, k = heapq.heappop(ready)
        order.append(k)
        for c in sorted(consumers.get(k, ())):
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, (node_signature[c], c))
    if len(order) != len(nodes):
        raise ConverterError("tf2onnx wrote a graph with a cycle: cannot order it")
    _set_nodes(proto, [nodes[k] for k in order])
    by_content: dict[str, str] = {}  # a constant's values -> its one name
    for node in graph.node:
        for i in node.input:
            if i in values:
                by_content.setdefault(values[i], f"const__{len(by_content)}")
    for node in graph.node:
        node.input[:] = [by_content[values[i]] if i in values else i for i in node.input]
    kept = {}
    for tensor in graph.initializer:
        name = by_content.get(values[tensor.name])
        if name is not None and name not in kept:
            tensor.name = name
            kept[name] = tensor
    unique = [type(t)() for t in kept.values()]
    for copy, tensor in zip(unique, kept.values()):
        copy.CopyFrom(tensor)
    del graph.initializer[:]
    graph.initializer.extend(unique)


def _payload(tensor) -> bytes:
    """The values of an initializer as bytes, whichever field tf2onnx stored them in."""
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor).tobytes()


def _name_io(proto, heads: dict[str, str]) -> None:
    """The input ``face_bgr`` and the outputs their head names (tf2onnx keeps TFLite's tensor
    names: "serving_default_face_bgr:0", "StatefulPartitionedCall_1:0"); a dynamic batch named
    "batch", as the fp32 export's."""
    renamed = {proto.graph.input[0].name: "face_bgr"}
    renamed.update((o.name, heads[o.name]) for o in proto.graph.output)
    for node in proto.graph.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.name = renamed[value.name]
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_param or not dim.dim_value:
            dim.dim_param = "batch"


def _name_dequantized(proto) -> None:
    """Each DequantizeLinear's output (and the node) named after its input, "<input>/dq".
    tf2onnx names them after the consumer it made them for, then merges the equal ones of one
    tensor and keeps one of the names (converters.onnx.canonical_names renumbers generated
    names, not these)."""
    outputs = {o.name for o in proto.graph.output}
    renamed: dict[str, str] = {}
    taken: set[str] = set()
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or node.output[0] in outputs:
            continue
        name, k = f"{node.input[0]}/dq", 1
        while name in taken:  # two DequantizeLinear of one tensor (different parameters)
            name, k = f"{node.input[0]}/dq{k}", k + 1
        taken.add(name)
        renamed[node.output[0]] = name
        node.output[0] = node.name = name
    for node in proto.graph.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]


class _Graph:
    """Producers and consumers of a graph's tensors, for the rewrites below."""

    def __init__(self, proto):
        self.graph = proto.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def only_consumer(self, name: str):
        readers = self.consumers.get(name, [])
        outputs = {o.name for o in self.graph.output}
        return readers[0] if len(readers) == 1 and name not in outputs else None

    def constant(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name])


def complete_qdq(proto, opset: int = INT16_QDQ_OPSET):
    """``proto`` (tf2onnx's conversion of an integer-only .tflite) rewritten so that every
    compute node sits between DequantizeLinear and QuantizeLinear (the module docstring lists
    the rewrites; each computes the same integers, Pow(x, -0.5) up to the last bit of a float
    against 1 / sqrt(x)), at ``opset`` (the row's: INT16_QDQ_OPSET or above, int16 QDQ).
    Returns a new ModelProto (``proto`` is not changed)."""
    import onnx
    from onnx import version_converter

    original, proto = proto, onnx.ModelProto()
    proto.CopyFrom(original)  # the caller's graph stays as it was
    _matmul_add_to_gemm(proto)
    _int64_biases_to_int32(proto)
    _qdq_relus(proto)
    _rsqrt_as_pow(proto)
    proto = version_converter.convert_version(proto, opset)
    proto.ir_version = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    return proto


def _int64_biases_to_int32(proto) -> None:
    import onnx
    from onnx import numpy_helper

    g = _Graph(proto)
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in g.inits:
            continue
        for name in node.input[::2]:  # the integers and the zero point
            tensor = g.inits.get(name)
            if tensor is None or tensor.data_type != onnx.TensorProto.INT64:
                continue
            values = numpy_helper.to_array(tensor)
            if np.abs(values).max(initial=0) >= 2**31:
                if name != node.input[0]:
                    raise Int8RecipeError(f"integer ONNX: zero point {name} needs more than "
                                          f"int32{_TFLITE_INSTEAD}")
                values = _dead_channels_rescaled(g, node, values)
            tensor.CopyFrom(numpy_helper.from_array(values.astype(np.int32), name))


def _dead_channels_rescaled(g: _Graph, bias_dq, values: np.ndarray) -> np.ndarray:
    """The int64 bias ``values`` of ``bias_dq`` (read by a Conv/Gemm) in int32, when every
    channel beyond int32 is dead: its int8 weights all zero. TFLite's quantizer gives such a
    channel the scale epsilon (the PyTorch port's 16x8 file: weight scale 4.8e-36, bias scale
    1.5e-40, the bias saturated at int64's maximum), so its bias in those units overflows. The
    channel gets the weight and bias scales of the layer's widest channel within int32
    instead: its weights are zero at any scale, its bias (~1e-21 there) rounds to the same
    output integer (the port's layer is dead in every channel: its outputs are its biases).
    Anything else beyond int32 is an Int8RecipeError."""
    from onnx import numpy_helper

    name = bias_dq.input[0]
    refusal = (f"integer ONNX: bias {name} needs more than int32 (DequantizeLinear reads no "
               "int64)")
    reader = g.only_consumer(bias_dq.output[0])
    weights = (g.producer.get(reader.input[1])
               if reader is not None and len(reader.input) > 2 else None)
    if (weights is None or reader.op_type not in ("Conv", "Gemm")
            or reader.input[2] != bias_dq.output[0] or weights.op_type != "DequantizeLinear"
            or weights.input[0] not in g.inits or len(g.consumers[name]) != 1):
        raise Int8RecipeError(refusal + _TFLITE_INSTEAD)
    axis = next((a.i for a in weights.attribute if a.name == "axis"), 1)
    kernel = g.constant(weights.input[0])
    dead = ~np.moveaxis(kernel, axis, 0).reshape(kernel.shape[axis], -1).any(axis=1)
    w_scale, b_scale = g.constant(weights.input[1]).copy(), g.constant(bias_dq.input[1]).copy()
    over = np.abs(values) >= 2**31
    if (w_scale.size != values.size or b_scale.size != values.size or not dead[over].all()
            or over.all() or any(len(g.consumers[n]) != 1
                                 for n in (weights.input[1], bias_dq.input[1]))):
        raise Int8RecipeError(refusal + " in a channel whose weights are not all zero"
                              + _TFLITE_INSTEAD)
    # any channel within int32 holds a consistent pair (bias scale = input scale x weight
    # scale); the widest one (a live one when there is one)
    donor = int(np.argmax(np.where(over, -np.inf, w_scale)))
    real = values.astype(np.float64) * b_scale.astype(np.float64)
    w_scale[over], b_scale[over] = w_scale[donor], b_scale[donor]
    values = values.copy()
    rescaled = np.round(real[over] / float(b_scale[donor]))
    if np.abs(rescaled).max() >= 2**31:  # the donor's scale is as small (a layer dead throughout)
        raise Int8RecipeError(refusal + " at any of its channels' scales" + _TFLITE_INSTEAD)
    values[over] = rescaled.astype(values.dtype)
    for tensor_name, array in ((weights.input[1], w_scale), (bias_dq.input[1], b_scale)):
        g.inits[tensor_name].CopyFrom(numpy_helper.from_array(array, tensor_name))
    return values


def _matmul_add_to_gemm(proto) -> None:
    """MatMul(a, DQ(W)) -> Add(., DQ(bias)) as Gemm(a, DQ(W), DQ(bias))."""
    import onnx

    g = _Graph(proto)
    drop = set()
    for node in list(proto.graph.node):
        if node.op_type != "MatMul":
            continue
        add = g.only_consumer(node.output[0])
        if add is None or add.op_type != "Add":
            continue
        bias = [i for i in add.input if i != node.output[0]]
        source = g.producer.get(bias[0]) if len(bias) == 1 else None
        weights = g.producer.get(node.input[1])
        if (source is None or source.op_type != "DequantizeLinear" or source.input[0] not in g.inits
                or weights is None or weights.op_type != "DequantizeLinear"):
            continue
        gemm = onnx.helper.make_node("Gemm", [node.input[0], node.input[1], bias[0]],
                                     list(add.output), name=node.name)
        # in the Add's place: the bias's DequantizeLinear may come after the MatMul (the 16x8
        # graph's stage-3 deltas), never after the Add that reads it
        add.CopyFrom(gemm)
        drop.add(id(node))
    _remove(proto, drop)


def _remove(proto, ids: set[int]) -> None:
    _set_nodes(proto, [n for n in proto.graph.node if id(n) not in ids])


def _set_nodes(proto, nodes: list) -> None:
    """The graph's node list replaced by ``nodes`` (copied first: they may be the list's own
    elements, which clearing it would free)."""
    copies = []
    for node in nodes:
        copy = type(node)()
        copy.CopyFrom(node)
        copies.append(copy)
    del proto.graph.node[:]
    proto.graph.node.extend(copies)


_QMIN = {3: -128, 2: 0, 5: -32768, 4: 0}  # INT8, UINT8, INT16, UINT16


def _qdq_relus(proto) -> None:
    """A ReLU between a compute node and its QuantizeLinear: dropped when every such
    QuantizeLinear's zero point is its type's minimum, else fed through a copy of the pair."""
    import onnx

    g = _Graph(proto)
    drop, inserts = set(), []
    for node in proto.graph.node:
        if node.op_type != "Relu":
            continue
        source = g.producer.get(node.input[0])
        readers = g.consumers.get(node.output[0], [])
        if (source is None or source.op_type in ("DequantizeLinear", "QuantizeLinear")
                or not readers
                or any(r.op_type != "QuantizeLinear" for r in readers)):
            continue
        quantize = readers[0]
        zero = g.inits[quantize.input[2]]
        if all(g.constant(r.input[2]).item() == _QMIN[zero.data_type] for r in readers):
            for reader in readers:
                reader.input[0] = node.input[0]
            drop.add(id(node))
            continue
        if any(list(r.input[1:]) != list(quantize.input[1:]) for r in readers):
            continue
        q_out, dq_out = node.input[0] + "_relu_q", node.input[0] + "_relu_dq"
        inserts.append((node.output[0], [
            onnx.helper.make_node("QuantizeLinear", [node.input[0], *quantize.input[1:]], [q_out],
                                  name=q_out),
            onnx.helper.make_node("DequantizeLinear", [q_out, *quantize.input[1:]], [dq_out],
                                  name=dq_out)]))
        node.input[0] = dq_out
    _remove(proto, drop)
    _insert_before(proto, inserts)


def _insert_before(proto, inserts) -> None:
    """Insert each (output name, nodes) pair's nodes in front of the node writing that output
    first (keeps the topological order)."""
    before = dict(inserts)
    ordered = []
    for node in proto.graph.node:
        ordered.extend(before.get(node.output[0], []))
        ordered.append(node)
    _set_nodes(proto, ordered)


def _rsqrt_as_pow(proto) -> None:
    """Sqrt -> Reciprocal (tf2onnx's RSQRT) as one Pow(x, -0.5)."""
    import onnx
    from onnx import numpy_helper

    g = _Graph(proto)
    drop = set()
    exponent = "rsqrt_exponent"
    for node in proto.graph.node:
        if node.op_type != "Reciprocal" or node.input[0] not in g.producer:
            continue
        sqrt = g.producer[node.input[0]]
        if sqrt.op_type != "Sqrt" or g.only_consumer(sqrt.output[0]) is not node:
            continue
        node.CopyFrom(onnx.helper.make_node("Pow", [sqrt.input[0], exponent], list(node.output),
                                            name=node.name))
        drop.add(id(sqrt))
    if drop:
        proto.graph.initializer.append(
            numpy_helper.from_array(np.array(-0.5, np.float32), exponent))
    _remove(proto, drop)


_QDQ = (
    "converted by tf2onnx's TFLite path: every quantized tensor a QuantizeLinear/"
    "DequantizeLinear pair, every compute node (Conv, Gemm, MaxPool, Tanh, Mul, Add, Relu, Pow) "
    "between them, the crop, flattening and merge slices on integer tensors; opset 21 (int16 "
    "QDQ). Exact rewrites of tf2onnx's output: FULLY_CONNECTED as Gemm, fused ReLUs dropped or "
    "given their own QDQ pair, RSQRT as Pow(x, -0.5), int64 biases as int32. See docs/INT8.md.")
# What to do when the integers do not fit ONNX: ship the TFLite file they come from.
_TFLITE_INSTEAD = "; export the TFLite file instead (--to tflite --precision int8 or int16x8)"
# The TFLite row (a key of ssrconv.targets.TARGETS, its precision one of
# ssrconv.converters.tflite.INTEGER_PRECISIONS) whose integer-only file each ONNX precision of
# this module converts.
SOURCES = {"int8-integer": "tflite-int8", "int16x8": "tflite-int16x8"}
# The manifest's int8_recipe of each precision this module converts (onnx.py dispatches on it).
RECIPES = {
    "int8-integer": "the tflite-int8 file (its recipe: int8 convolutions, int8 "
                    "per-channel weights, int32 biases, the SSR head on int16 activations, "
                    "fine-tuned by distillation; the same cache entry) " + _QDQ,
    "int16x8": "A16W8: the tflite-int16x8 file (its recipe: int16 activations everywhere, int8 "
               "per-channel weights, int64 biases; the SSR head's division as rsqrt(x)^2) "
               + _QDQ,
}

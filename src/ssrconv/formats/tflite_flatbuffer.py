"""Reading, editing and compacting TFLite flatbuffers (the schema's object API, no C++).

The converter's output carries what the runtime never reads: the fused tensor names of the
MLIR converter ('functional_1/ssrnet_age_1/activation_1_1/Relu;functional_1/...', about a
third of an int8 file), one empty buffer record per activation tensor, empty quantization
tables on float tensors and a conversion-metadata buffer. :func:`compact` removes them.
"""

from __future__ import annotations

import re

import numpy as np

# Tensor names parity still needs: the SSR stage tensors, located by layer name
# (ssrconv.stages), and the fused stage layers of the fast graph (ssrconv.graph).
# Every other internal tensor gets the short name ``t<index>``: not blank, because OpenVINO's
# TFLite frontend tells tensors apart by name (with blank names it merged a conv's input with
# its weights: "Argument shapes are inconsistent").
STAGE_NAME = re.compile(r"(pred_\w*?stage\d|delta_s\d|local_delta_stage\d|fused_stage_)")

# DEQUANTIZE reads float16 from op version 3 on.
_DEQUANTIZE_FP16_VERSION = 3


def schema():
    """The TFLite flatbuffer schema module (generated Python, as ai-edge-litert ships it: no
    TensorFlow import)."""
    from ai_edge_litert import schema_py_generated as fb
    return fb


def load(tfl: bytes):
    """The mutable object tree (``ModelT``) of a .tflite flatbuffer."""
    fb = schema()
    return fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(tfl, 0))


def pack(model) -> bytes:
    """Serialize a ``ModelT`` back to .tflite bytes."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def operators(tfl: bytes):
    """``(model, subgraph 0, [(op name, OperatorT), ...])`` in execution order."""
    fb = schema()
    names = {v: k for k, v in fb.BuiltinOperator.__dict__.items() if not k.startswith("_")}
    model = load(tfl)
    subgraph = model.subgraphs[0]
    out = []
    for op in subgraph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        out.append((names[max(code.builtinCode, code.deprecatedBuiltinCode)], op))
    return model, subgraph, out


# numpy dtype of a TensorType (the ones constants and quantized activations here use)
NUMPY_DTYPE = {0: np.float32, 2: np.int32, 4: np.int64, 7: np.int16, 9: np.int8}


def constant(model, tensor) -> np.ndarray | None:
    """The stored data of constant ``tensor`` (None: an activation, no data)."""
    raw = model.buffers[tensor.buffer].data
    if raw is None:
        return None
    return np.frombuffer(bytes(np.asarray(raw, np.uint8)), NUMPY_DTYPE[tensor.type]).reshape(
        tensor.shape)


def quantization(tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """``tensor``'s (scales, zero points), one per channel (None: not quantized)."""
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return None
    return np.asarray(q.scale, np.float64), np.asarray(q.zeroPoint, np.int64)


def set_constant(model, tensor, data: np.ndarray, scale, zero, tensor_type: int | None = None,
                 ) -> None:
    """``tensor`` becomes the constant ``data`` (of ``tensor_type`` when given) with ``scale``
    and ``zero`` point(s): its buffer rewritten in place unless another tensor shares it (the
    converter deduplicates identical constants), then in a buffer of its own."""
    shared = sum(t.buffer == tensor.buffer for g in model.subgraphs for t in g.tensors) > 1
    if shared:
        model.buffers.append(schema().BufferT())
        tensor.buffer = len(model.buffers) - 1
    model.buffers[tensor.buffer].data = np.frombuffer(np.ascontiguousarray(data).tobytes(),
                                                      np.uint8)
    if tensor_type is not None:
        tensor.type = tensor_type
    tensor.quantization.scale = np.asarray(scale, np.float32).reshape(-1)
    tensor.quantization.zeroPoint = np.asarray(zero, np.int64).reshape(-1)


def opcode_index(model, builtin: int, min_version: int) -> int:
    """The index of ``builtin``'s operator code in ``model`` (added when missing), its version
    raised to at least ``min_version``."""
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            code.version = max(code.version, min_version)
            return index
    fb = schema()
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = builtin
    code.version = min_version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _float_constants_to_fp16(model, subgraph, min_elements: int) -> int:
    """Store float32 constants of at least ``min_elements`` as float16 behind a DEQUANTIZE
    (what the fp16 export does; XNNPACK and the builtin kernels expand them once, at load).
    Returns how many were converted."""
    fb = schema()
    dequantize = None
    new_ops = []
    for index, tensor in enumerate(list(subgraph.tensors)):
        data = model.buffers[tensor.buffer].data
        if tensor.type != fb.TensorType.FLOAT32 or data is None or len(data) < 4 * min_elements:
            continue
        if dequantize is None:
            dequantize = opcode_index(model, fb.BuiltinOperator.DEQUANTIZE, _DEQUANTIZE_FP16_VERSION)
        values = np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float32)
        half = fb.TensorT()
        half.shape, half.type, half.name = tensor.shape, fb.TensorType.FLOAT16, b""
        buffer = fb.BufferT()
        buffer.data = np.frombuffer(values.astype(np.float16).tobytes(), np.uint8)
        model.buffers.append(buffer)
        half.buffer = len(model.buffers) - 1
        subgraph.tensors.append(half)
        model.buffers[tensor.buffer].data = None  # the float32 tensor becomes the op's output
        op = fb.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = dequantize, [len(subgraph.tensors) - 1], [index]
        new_ops.append(op)
    subgraph.operators = new_ops + list(subgraph.operators)
    return len(new_ops)


def _unique_name(index: int, taken: set[bytes]) -> bytes:
    """``t<index>`` (``t<index>_`` ... if a kept name is already that), recorded in ``taken``."""
    name = f"t{index}".encode()
    while name in taken:
        name += b"_"
    taken.add(name)
    return name


def compact(tfl: bytes, fp16_constants: bool = False, fp16_min_elements: int = 16) -> bytes:
    """The same model in fewer bytes: internal tensor names shortened to unique ``t<index>``
    (signature tensors and SSR stage tensors keep theirs), empty buffers shared, empty quantization tables and the
    conversion metadata removed. With ``fp16_constants``, float32 weights are stored as float16
    (measured on the int8 export: 0.004 years of age, no speed change)."""
    model = load(tfl)
    if len(model.subgraphs) != 1:  # buffers are shared between subgraphs: leave such models be
        return tfl
    subgraph = model.subgraphs[0]
    if fp16_constants:
        _float_constants_to_fp16(model, subgraph, fp16_min_elements)
    keep = set(subgraph.inputs) | set(subgraph.outputs)
    wanted = {index: tensor.name for index, tensor in enumerate(subgraph.tensors)
              if tensor.name and (index in keep or STAGE_NAME.search(tensor.name.decode()))}
    taken, seen = set(wanted.values()), set()
    for index, tensor in enumerate(subgraph.tensors):
        if index in wanted and tensor.name not in seen:
            seen.add(tensor.name)
        else:  # an internal tensor, or a second tensor of a kept name
            tensor.name = _unique_name(index, taken)
        quantization = tensor.quantization
        if quantization is not None and (quantization.scale is None or len(quantization.scale) == 0):
            tensor.quantization = None
    model.metadata = [m for m in (model.metadata or []) if m.name != b"CONVERSION_METADATA"]
    # Buffer 0 is the schema's shared empty buffer: every tensor without data points at it.
    used = {0}
    for tensor in subgraph.tensors:
        data = model.buffers[tensor.buffer].data
        if data is None or len(data) == 0:
            tensor.buffer = 0
        used.add(tensor.buffer)
    used |= {m.buffer for m in model.metadata}
    order = sorted(used)
    renumber = {old: new for new, old in enumerate(order)}
    model.buffers = [model.buffers[old] for old in order]
    for tensor in subgraph.tensors:
        tensor.buffer = renumber[tensor.buffer]
    for entry in model.metadata:
        entry.buffer = renumber[entry.buffer]
    model.description = b""
    return pack(model)


def fix_batch(tfl: bytes, batch: int = 1) -> bytes:
    """The same model with its batch dimension fixed to ``batch`` (every ``-1`` leading entry
    of a tensor's shape signature, and the stored shapes, set to it).

    For runtimes that cannot resize inputs: LiteRT.js 2.5 (wasm, and its WebGPU delegate)
    refuses the dynamic-batch ``[-1, 64, 64, 3]`` input and has no resize call. The stored
    shapes of the converter's output are already those of a batch of 1, so batch 1 is exact;
    ops that compute shapes at run time (tf2onnx-style dynamic flatten) still run.
    """
    model = load(tfl)
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            signature = tensor.shapeSignature
            if signature is not None and len(signature) and signature[0] == -1:
                signature = list(signature)
                signature[0] = batch
                tensor.shapeSignature = signature
                if tensor.shape is not None and len(tensor.shape):
                    shape = list(tensor.shape)
                    shape[0] = batch
                    tensor.shape = shape
    return pack(model)


def static_batch(tfl: bytes) -> int | None:
    """The fixed batch of the main subgraph's first input (:func:`fix_batch`), None when it is
    variable (-1)."""
    graph = load(tfl).subgraphs[0]
    tensor = graph.tensors[graph.inputs[0]]
    dims = tensor.shapeSignature if tensor.shapeSignature is not None and len(tensor.shapeSignature) \
        else tensor.shape
    return int(dims[0]) if dims is not None and len(dims) and dims[0] > 0 else None


def is_dynamic_batch(tfl: bytes) -> bool:
    """True when an input of the main subgraph has an unknown (-1) dimension (a runtime without
    a resize call, such as LiteRT.js 2.5, cannot run it: see :func:`fix_batch`)."""
    graph = load(tfl).subgraphs[0]
    for index in graph.inputs:
        signature = graph.tensors[index].shapeSignature
        if signature is not None and -1 in list(signature):
            return True
    return False


def signature_output_names(model) -> list[str]:
    """The signature name of each subgraph output of ``model`` (a ``ModelT``), in the
    subgraph's output order ("" for an output no signature names)."""
    graph = model.subgraphs[0]
    by_tensor = {}
    for signature in model.signatureDefs or []:
        for tensor_map in signature.outputs or []:
            by_tensor[tensor_map.tensorIndex] = tensor_map.name.decode()
    return [by_tensor.get(int(t), "") for t in graph.outputs]


def integer_only_violations(flatbuffer: bytes) -> list[str]:
    """The operators of ``flatbuffer`` that read or write a float tensor, other than the one
    QUANTIZE of the input and the DEQUANTIZE of each output ("DEQUANTIZE of weights" and
    any float kernel count): an integer-only file has none."""
    fb = schema()
    _, sg, ops = operators(flatbuffer)
    floats = (fb.TensorType.FLOAT32, fb.TensorType.FLOAT16)
    inputs, outputs = set(sg.inputs), set(sg.outputs)
    bad = []
    for name, op in ops:
        ins = [i for i in op.inputs if i >= 0]
        float_in = [i for i in ins if sg.tensors[i].type in floats]
        float_out = [o for o in op.outputs if sg.tensors[o].type in floats]
        if not float_in and not float_out:
            continue
        if name == "QUANTIZE" and set(float_in) <= inputs and not float_out:
            continue
        if name == "DEQUANTIZE" and set(float_out) <= outputs and not float_in:
            continue
        bad.append(name)
    return bad

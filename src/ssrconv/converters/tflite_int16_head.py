"""An integer-only int8 .tflite with its SSR head widened to int16 activations: the
convolutions keep int8 activations (XNNPACK's QS8 kernels, the int8 arena), the head (every
operator after the flattening RESHAPEs: the Dense layers, the tanh deltas and the merge) runs
on int16 tensors with int8 weights and int64 biases, entered through one QUANTIZE
(int8 -> int16) per flattened map. TFLite's converter has no mixed int8/int16 mode, so the
file is edited after conversion; the result is still integer-only and runs on LiteRT's builtin
kernels and TensorFlow Lite Micro.

With ``int8_maps`` (``Variant.wide_stage1_int8_maps``: the PyTorch port's file) the feature maps
are widened too, all but the named layers': their operators run TFLite's 16x8 kernels (int8
weights, int64 biases), and a QUANTIZE requantizes at each int8 <-> int16 boundary, both ways.
The port's int8 maps summed their rounding past the budget (its input affine's alone 0.06 y of
mean); int16 everywhere but relu_conv2 (44% of its multiply-adds) brings its file within it
(docs/INT8.md, "The PyTorch port's int8-integer file: int16 maps").

Why the head: simulated on the fine-tuned int8 file, the head's int8 rounding is most of the error
(300 dev faces: every tensor int8 mean 0.41 / p99 1.56 y; body int8 and head float
0.19 / 1.08; the merge alone int8 0.31 / 1.26). The merge multiplies three widths
``1 + tanh`` near 1 held on one int8 grid of step 0.015: a step is 1.5% of a width, the
same relative error of the age (docs/INT8.md, "int16 head").
"""

from __future__ import annotations

import copy
import re

import numpy as np

from ssrconv.errors import Int8RecipeError
from ssrconv.formats import tflite_flatbuffer as tfb
from ssrconv.formats.tflite_flatbuffer import (opcode_index, operators, pack, schema,
                                               set_constant)

INT16_MAX = 32767
# A range below this is a tensor that is zero on every calibration input (a dead relu: the int8
# file gives it [0, 2e-6], real head tensors reach 0.04 and more); it gets [-1, 1] instead (any
# range represents zero; a ~0 scale would make the int64 bias of the layer reading it ~1e12
# steps, past float32's exact integers, and lost in the 16x8 file: docs/INT8.md, "The 16x8
# file", point 3). Not tflite_int8.DEAD (1e-30): that one reads calibrate-only min/max, where a
# dead tensor is [0, 1e-38]; in the quantized int8 file the same relu came out [0, 2e-6].
DEAD = 1e-4
TANH_OUTPUT_SCALE = 1.0 / 32768  # TFLite's int16 TANH writes this scale
# Operators allowed in the widened head; each has an int16 kernel in LiteRT and TFLite Micro.
HEAD_OPS = frozenset({"FULLY_CONNECTED", "MUL", "ADD", "TANH", "QUANTIZE", "CONCATENATION",
                      "STRIDED_SLICE", "RESHAPE", "RSQRT"})
# Operators allowed on a widened feature map (``int8_maps``): TFLite's 16x8 kernels (int16
# activations, int8 weights, int64 biases), in LiteRT's builtin kernels and TFLite Micro.
MAP_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "TANH",
                     "RESHAPE", "QUANTIZE"})
_BIASED = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
_SAME_SCALE = ("RESHAPE", "MAX_POOL_2D", "AVERAGE_POOL_2D")


def _params(tensor) -> tuple[float, int]:
    """``tensor``'s per-tensor (scale, zero point)."""
    scales, zeros = tfb.quantization(tensor)
    return float(scales[0]), int(zeros[0])


def _int16_scale(tensor, headroom: float = 1.0) -> float:
    """The symmetric int16 scale covering ``headroom`` times ``tensor``'s int8 range (zero
    point 0, as TFLite's int16 kernels require), as the file stores it (float32)."""
    scale, zero = _params(tensor)
    reach = max(abs((-128 - zero) * scale), abs((127 - zero) * scale))
    return float(np.float32((reach * headroom if reach >= DEAD else 1.0) / INT16_MAX))


def layer_of(tensor_name: bytes, layers) -> str | None:
    """The layer of ``layers`` (fast-graph layer names, with or without a head's ``age_`` /
    ``gender_`` prefix) whose output ``tensor_name`` is, or None: TFLite names a tensor
    ``<model>/<layer>_<n>/<op>`` (fused operators: several such names joined by ``;``)."""
    first = tensor_name.decode().split(";")[0]
    for segment in first.split("/")[1:2]:
        bare = re.sub(r"_\d+$", "", segment)
        bare = re.sub(r"^(age|gender)_", "", bare)
        if bare in layers:
            return bare
    return None


def head_operators(ops, sg, int8_maps: tuple[str, ...] | None = None) -> list[int]:
    """Indices of the operators to widen: the SSR head's (every operator writing a rank <= 2
    tensor, except the RESHAPEs that flatten a feature map, which stay int8: the boundary, and
    the output DEQUANTIZEs); with ``int8_maps`` (fast-graph layer names), also every operator
    writing a feature map except those layers' and the input's QUANTIZE (float I/O; an int8
    input is read through an int16 twin), and the RESHAPEs flattening a widened map."""
    head = []
    inputs = {int(i) for i in sg.inputs}
    for k, (name, op) in enumerate(ops):
        out = sg.tensors[op.outputs[0]]
        if name == "DEQUANTIZE":
            continue
        if len(out.shape) > 2:
            entry = name == "QUANTIZE" and int(op.inputs[0]) in inputs  # float input -> int8
            if int8_maps is not None and not entry and layer_of(out.name, int8_maps) is None:
                head.append(k)
            continue
        if name == "RESHAPE" and len(sg.tensors[op.inputs[0]].shape) > 2 and (
                int8_maps is None or layer_of(sg.tensors[op.inputs[0]].name, int8_maps)):
            continue
        head.append(k)
    return head


def widen_head(tfl: bytes, headroom: float = 1.0,
               int8_maps: tuple[str, ...] | None = None) -> bytes:
    """``tfl`` (an integer-only int8 file) with its SSR head (and with ``int8_maps``, fast-graph
    layer names, every feature map but those layers': :func:`head_operators`) on int16
    activations: each head tensor's int8 range times ``headroom`` on a symmetric int16 grid
    (256 / ``headroom`` times
    finer), except the outputs (their int8 ranges are the outputs' domains already) and the
    TANH outputs (TFLite's int16 scale 1/32768); FULLY_CONNECTED biases requantized to int64
    at the new input scale x weight scale; int8 constants read by the head (the merge's stage
    indices and its 1) requantized to int16; ADD told its scales are not powers of two.

    ``headroom``: ranges calibrated on data-free inputs fall short of the ranges real faces
    reach in the head (the age head's stage-1 delta input 0.58 of the faces' range, the width
    products 0.68-0.75; the PyTorch port's delta inputs 0.27-0.41), and a value beyond its
    range is clipped. A product of two activations (MUL) gets ``headroom`` squared, as the
    16x8 file's (:data:`ssrconv.converters.tflite_int8.HEADROOM`), unless it is an input of a
    concatenation: one factor for the rest keeps the ties TFLite's quantizer made (a
    concatenation's inputs share its scale; TFLite's int16 concatenation does not rescale).
    On an int16 grid a range four times as wide costs two of 15 bits (docs/INT8.md, "int16
    head")."""
    fb = schema()
    model, sg, ops = operators(tfl)
    head = head_operators(ops, sg, int8_maps)
    missing = set(int8_maps or ()) - {layer_of(sg.tensors[op.outputs[0]].name, int8_maps or ())
                                      for _, op in ops}
    if missing:
        raise Int8RecipeError(f"int16 maps: no operator writes {sorted(missing)} (the maps to "
                              "keep int8); export with --precision int16x8 or int8-mixed instead")
    maps = {k for k in head if len(sg.tensors[ops[k][1].outputs[0]].shape) == 4}
    bad = sorted({ops[k][0] for k in set(head) - maps} - HEAD_OPS
                 | {ops[k][0] for k in maps} - MAP_OPS)
    if bad:
        raise Int8RecipeError(f"int16 head: operators {bad} have no int16 path here; export "
                              "with --precision int16x8 (all int16) or int8-mixed instead")
    head_set = set(head)
    producer = {int(o): k for k, (_, op) in enumerate(ops) for o in op.outputs}
    old = {i: (_params(t) if t.quantization is not None and t.quantization.scale is not None
               and len(t.quantization.scale) else None) for i, t in enumerate(sg.tensors)}
    new_scale: dict[int, float] = {}
    dequantized = {int(op.inputs[0]) for name, op in ops if name == "DEQUANTIZE"}
    outputs = dequantized | {int(o) for o in sg.outputs}
    concatenated = {int(i) for name, op in ops if name == "CONCATENATION" for i in op.inputs}
    activations = set(producer) | {int(i) for i in sg.inputs}
    for k in head:
        name, op = ops[k]
        out = int(op.outputs[0])
        # a product of two activations: each factor may fall short alike, the product by the
        # square (unless a concatenation ties it to its neighbours' scale)
        product = (name == "MUL" and out not in concatenated
                   and all(int(i) in activations for i in op.inputs))
        factor = 1.0 if out in outputs else headroom ** 2 if product else headroom
        new_scale[out] = (TANH_OUTPUT_SCALE if name == "TANH" else
                          _int16_scale(sg.tensors[out], factor))
        # an operator that does not rescale (TFLite requires its input's scale) keeps its
        # input's int16 scale: after a TANH 1/32768, after an int8 map its twin's
        x = int(op.inputs[0])
        if int8_maps is not None and name in _SAME_SCALE and old[x] == old[out]:
            new_scale[out] = new_scale[x] if x in new_scale else _int16_scale(sg.tensors[x])
    # the head's int8 constants (stage indices, the 1 of 1 + tanh) must match their int16
    # readers' type
    for k in head:
        name, op = ops[k]
        for position, i in enumerate(int(j) for j in op.inputs):
            t = sg.tensors[i] if i >= 0 else None
            if t is None or i in activations or t.type != fb.TensorType.INT8 or i in new_scale:
                continue
            if name in _BIASED and position == 1:
                continue  # int8 weights stay
            if any(i in op2.inputs for k2, (_, op2) in enumerate(ops) if k2 not in head_set):
                raise Int8RecipeError(f"int16 head: constant {t.name.decode()} is read by the "
                                      "int8 convolutions too; export with --precision "
                                      "int16x8 or int8-mixed instead")
            scale, zero = old[i]
            values = (tfb.constant(model, t).astype(np.float64) - zero) * scale
            new_scale[i] = _int16_scale(t)
            set_constant(model, t, np.round(values / new_scale[i]).astype(np.int16),
                         new_scale[i], 0, fb.TensorType.INT16)
    # boundary: int8 maps read by the head get an int16 twin through a QUANTIZE
    twins: dict[int, int] = {}  # int8 map -> its int16 twin
    source_of: dict[int, int] = {}
    for k in head:
        for i in (int(j) for j in ops[k][1].inputs):
            if (producer.get(i, -1) not in head_set and i in activations and i not in twins
                    and sg.tensors[i].type == fb.TensorType.INT8):  # (not a float input)
                source = sg.tensors[i]
                twin = fb.TensorT()
                twin.name = source.name + b"/int16"
                twin.shape = np.asarray(source.shape, np.int32)
                twin.shapeSignature = (None if source.shapeSignature is None
                                       else np.asarray(source.shapeSignature, np.int32))
                twin.type = fb.TensorType.INT16
                twin.buffer = 0
                twin.quantization = fb.QuantizationParametersT()
                twin.quantization.scale = np.asarray([_int16_scale(source)], np.float32)
                twin.quantization.zeroPoint = np.asarray([0], np.int64)
                sg.tensors.append(twin)
                twins[i] = len(sg.tensors) - 1
                source_of[twins[i]] = i
                new_scale[twins[i]] = _int16_scale(source)
    # and int16 maps read by an int8 operator an int8 twin at the map's int8 range
    narrow: dict[int, int] = {}  # int16 map -> its int8 twin
    for k, (name, op) in enumerate(ops):
        if k in head_set or name == "DEQUANTIZE":
            continue
        for i in (int(j) for j in op.inputs):
            if i in producer and producer[i] in head_set and i not in narrow:
                source = sg.tensors[i]
                twin = copy.deepcopy(source)
                twin.name = source.name + b"/int8"
                twin.buffer = 0
                sg.tensors.append(twin)
                narrow[i] = len(sg.tensors) - 1
        op.inputs = np.asarray([narrow.get(int(i), int(i)) for i in op.inputs], np.int32)
    for k in head:
        name, op = ops[k]
        op.inputs = np.asarray([twins.get(int(i), int(i)) for i in op.inputs], np.int32)
        out = sg.tensors[int(op.outputs[0])]
        out.type = fb.TensorType.INT16
        out.quantization.scale = np.asarray([new_scale[int(op.outputs[0])]], np.float32)
        out.quantization.zeroPoint = np.asarray([0], np.int64)
        if name == "ADD":
            op.builtinOptions.potScaleInt16 = False
        if name in _BIASED and len(op.inputs) > 2 and op.inputs[2] >= 0:
            bias = sg.tensors[int(op.inputs[2])]
            if sum(int(op.inputs[2]) in op2.inputs for _, op2 in ops) > 1:
                raise Int8RecipeError(f"int16 maps: bias {bias.name.decode()} is shared by "
                                      "several operators; export with --precision int16x8")
            weight_scale = np.asarray(sg.tensors[int(op.inputs[1])].quantization.scale, np.float64)
            x = int(op.inputs[0])
            in8 = old[source_of.get(x, x)][0]  # the scale the int32 bias was stored at
            values = tfb.constant(model, bias).astype(np.float64) * (in8 * weight_scale)
            unit = new_scale[x] * weight_scale
            set_constant(model, bias, np.round(values / unit).astype(np.int64),
                         unit, np.zeros(len(unit), np.int64), fb.TensorType.INT64)
    # TFLite runs operators in list order: each QUANTIZE must follow its map's producer
    code = opcode_index(model, fb.BuiltinOperator.QUANTIZE, 1)
    # (a graph input's twin first of all: position -1)
    inserts = sorted(((producer.get(i, -1), i, t) for i, t in (*twins.items(), *narrow.items())),
                     reverse=True)
    for after, source, twin in inserts:
        quantize = fb.OperatorT()
        quantize.opcodeIndex = code
        quantize.inputs = np.asarray([source], np.int32)
        quantize.outputs = np.asarray([twin], np.int32)
        sg.operators.insert(after + 1, quantize)
    return pack(model)

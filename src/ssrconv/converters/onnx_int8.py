"""The int8 ONNX export of SSR-Net: static QDQ quantization with onnxruntime.quantization,
calibrated through the one CalibrationSet (docs/INT8.md, "ONNX int8", has the measurements).

Recipe (convert_int8):
 1. Keras-level preparation on a clone, shared with the int8 TFLite recipe
    (:mod:`ssrconv.converters.int8_prep`): exact rewrites (average pools -> fixed depthwise
    convs, max-pool before tanh, static-shape flatten), cross-layer equalization of the age
    head's relu stream, GPTQ rounding of every int8 conv kernel onto its per-output-channel
    symmetric int8 grid (scale max|w|/127: what ORT computes with per_channel=True, symmetric
    int8 weights and reduce_range=False, so the integers ORT derives are the ones GPTQ chose)
    with bias correction.
 2. One more exact rewrite for onnxruntime: BatchNorm folded into its convolution (per output
    channel, so the GPTQ grid is kept). (The 3 -> 4 input-channel padding of session 2 served
    the int8 first convolution; that block is float now, see INT8_LAYERS.)
 3. tf2onnx, then ``quantize_static``: QDQ format, int8 activations, int8 symmetric
    per-channel weights (S8S8: see the note above INT8_LAYERS), MinMax calibration over the calibration
    faces (the age head's activations: the AGE_RANGE_PERCENTILE percentile instead, through
    TensorQuantOverrides); only the nodes of INT8_LAYERS are quantized (Conv, Relu, MaxPool).
    On the fast graph this needs each head's own convs (the ``per-head`` variant): a grouped
    tensor holding both heads would get one scale. onnxruntime's
    graph optimizer fuses each DequantizeLinear -> Conv -> QuantizeLinear group into a
    QLinearConv at session creation; everything else (the SSR head, ...) runs in float.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import numpy as np

from ssrconv.atomic import scratch_dir
from ssrconv.converters.int8_prep import _keras
from ssrconv.errors import Int8RecipeError

# Activations are int8 (S8S8), not uint8. On x86 CPUs without AVX512-VNNI / AVX-VNNI, MLAS's
# u8s8 kernels multiply with VPMADDUBSW, whose int16 pair sums saturate for uint8 activations x
# int8 weights (2 x 255 x 127 > 32767): the U8S8 file of session 2 measured mean 5.6 y / p99 20 y
# off the reference on an AVX2 AMD EPYC (0.16 / 0.82 y on a VNNI Xeon). Measured on the EPYC, 300
# dev faces: reduce_range (7-bit weights) mean 0.21 / p99 1.10 y (over the budget); 7-bit weights
# with the first block float 0.22 / 1.00 y; S8S8 0.161 / 0.82 y, the VNNI Xeon's U8S8 figures.
# An exported file must be right on any CPU it lands on: S8S8. OpenVINO, reading the same QDQ
# file, converts it to u8 x s8 kernels and saturates the same way in the first convolution (the
# one that reads the raw 0..255 pixels): 10.2 y mean with conv2d_1 in int8; with the first conv
# block float (as in the TFLite recipe) onnxruntime and OpenVINO both measure mean 0.180 /
# p99 0.878 y on the 300 dev faces, AVX2 EPYC.


# Base layer names (without the age_/gender_ prefix) quantized to int8: the relu stream after
# its first convolution (conv2d_2..4 with their BN-folded activations, and the depthwise pools).
# The tanh stream, the 1x1 summary convs and the head stay float, as in the TFLite recipe:
# docs/INT8.md has the parity and latency of the alternatives.
INT8_LAYERS = tuple(
    [f"conv2d_{k}" for k in (2, 3, 4)] + [f"activation_{k}" for k in (2, 3, 4)]
    + [f"average_pooling2d_{k}_dw" for k in (1, 2, 3)])

OP_TYPES = ("Conv", "Relu", "MaxPool")

# The age head's int8 activations get the 99.999th percentile of their calibration values as
# their range (onnxruntime's Percentile calibrator), the gender head's keep MinMax. Measured on
# the 300 dev faces, fast graph (per-head convs), AVX2 EPYC: MinMax everywhere mean 0.178 /
# p99 0.97 / max 1.42 y (data-free: p99 1.02, over the budget); the age head at 99.999: 0.159 /
# 0.81 / 0.93 y (data-free 0.172 / 0.85 / 1.18); 99.99 clips too much (max 2.2 y), 99.9999 is
# MinMax's p99 again (0.82, max 1.15). Percentile on the gender head too moved P(male) by up to
# 0.46 (0.058 with MinMax): its sigmoid reads the tails the percentile clips (docs/INT8.md).
AGE_RANGE_PERCENTILE = 99.999


def fold_batchnorm(model):
    """A clone of ``model`` with every Conv2D -> BatchNormalization pair folded into the conv
    (kernel and bias scaled per output channel; exact in float up to rounding)."""
    from ssrconv.converters.int8_prep import consumers, producer

    keras = _keras()
    readers = consumers(model)
    folds = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            conv = producer(layer)
            if type(conv) is keras.layers.Conv2D and readers.get(conv.name) == [layer.name]:
                folds[layer.name] = conv.name

    def call(layer, *args, **kwargs):
        return args[0] if layer.name in folds else layer(*args, **kwargs)

    new = keras.models.clone_model(model, call_function=call)
    for layer in model.layers:
        if layer.weights and layer.name not in folds:
            new.get_layer(layer.name).set_weights(layer.get_weights())
    for bn_name, conv_name in folds.items():
        bn = model.get_layer(bn_name)
        gamma, beta, mean, var = bn.get_weights()
        factor = gamma / np.sqrt(var + bn.epsilon)
        conv = model.get_layer(conv_name)
        kernel, *bias = conv.get_weights()
        bias = bias[0] if bias else np.zeros(kernel.shape[-1], np.float32)
        new_conv = new.get_layer(conv_name)
        if not new_conv.use_bias:
            raise ValueError(f"{conv_name}: folding BatchNorm needs a conv with a bias")
        new_conv.set_weights([(kernel * factor).astype(np.float32),
                              ((bias - mean) * factor + beta).astype(np.float32)])
    return new


def prepare(model, calibration_inputs: np.ndarray, int8_layers=INT8_LAYERS):
    """Steps 1 and 2 of the recipe on a clone of ``model`` (the reference is not touched)."""
    from ssrconv.converters.int8_prep import (
        ALPHA,
        equalize,
        rewrite,
        round_kernels,
    )

    cal = np.asarray(calibration_inputs, np.float32)
    prepared = rewrite(model)
    equalize(prepared, cal, ALPHA)
    wanted = int8_layer_names(prepared, int8_layers)
    round_kernels(prepared, cal, only=lambda name: name in wanted)
    return fold_batchnorm(prepared)


# A member whose stage-1 maps are wider than the original's (family.wide_stage1: the PyTorch
# port, padding=1) keeps float what the TFLite recipe keeps float in the relu stream: its fourth
# block (int8_prep.STAGE1_BLOCKS) and its second block with the first pool (FLOAT_BACKBONE); int8
# is then the third block and the two pools after it. oukohou-pytorch, 300 dev faces (numpy
# reference), mean / p99 age error: INT8_LAYERS as for the original 0.29 / 1.19 y, without the
# fourth block 0.27 / 1.10, without the second block and first pool too 0.23 / 0.95 (budget
# 0.3 / 1.0; docs/PORTS.md, "int8").
WIDE_STAGE1_FLOAT = ("conv2d_2", "activation_2", "average_pooling2d_1_dw")


def int8_layer_names(model, int8_layers=INT8_LAYERS) -> set[str]:
    """The layers of ``model`` implementing ``int8_layers``; for a member with wide stage-1 maps,
    less its fourth blocks and WIDE_STAGE1_FLOAT."""
    from ssrconv.converters.int8_prep import STAGE1_BLOCKS, recipe_layers
    from ssrconv.graph import stage1_products
    from ssrconv.reference.family import wide_stage1

    wanted = recipe_layers(model, int8_layers)
    if not wide_stage1(stage1_products(model)):
        return wanted
    return wanted - recipe_layers(model, (*STAGE1_BLOCKS, *WIDE_STAGE1_FLOAT))


def node_layers(node_name: str, layer_names: set[str]) -> set[str]:
    """The Keras layers named as scopes in a tf2onnx node name
    ('model_1/age_conv2d_2_1/BiasAdd' -> {'age_conv2d_2'})."""
    found = set()
    for part in node_name.split("/"):
        match = re.fullmatch(r"(.+?)(_\d+)?", part)
        for candidate in (part, match.group(1) if match else part):
            if candidate in layer_names:
                found.add(candidate)
    return found


def int8_nodes(proto, layer_names, int8_layers: set[str], op_types=OP_TYPES) -> list[str]:
    """Names of the ONNX nodes to quantize: of ``op_types``, in one of the Keras layers
    ``int8_layers`` (model layer names, :func:`~ssrconv.converters.int8_prep.recipe_layers`)."""
    names = set(layer_names)
    picked = []
    for node in proto.graph.node:
        if node.op_type in op_types and node_layers(node.name, names) & int8_layers:
            picked.append(node.name)
    return picked


def convert_int8(model, calibration, to_proto, int8_layers=INT8_LAYERS):
    """The quantized ONNX ModelProto of ``model`` (steps 1-3). ``to_proto(keras_model)`` is the
    fp32 converter (tf2onnx with the export's input signature and opset)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from ssrconv._imports import silenced_fd2
    from ssrconv.converters.int8_prep import is_fast_graph

    # The fast graph's GroupedConv2D layers need grappler's remapper off to run in TF (CLE and
    # GPTQ run the model on the calibration faces).
    runnable = contextlib.nullcontext()
    if is_fast_graph(model):
        from ssrconv.graph.builder import grouped_convs_runnable

        runnable = grouped_convs_runnable()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), runnable:
        warnings.simplefilter("ignore")  # Keras warns on every sub-model call of the GPTQ pass
        prepared = prepare(model, calibration.inputs, int8_layers)
        proto = to_proto(prepared)
    nodes = int8_nodes(proto, [layer.name for layer in prepared.layers],
                       int8_layer_names(prepared, int8_layers))
    if not nodes:
        raise Int8RecipeError("no ONNX node matched the int8 layers: tf2onnx node naming changed?")
    input_name = proto.graph.input[0].name
    with scratch_dir("ssrconv-onnx-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, str(src))
        with silenced_fd2(), contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints
            overrides = age_head_ranges(src, proto, prepared, nodes,
                                        calibration.onnx_reader(input_name),
                                        Path(tmp) / "percentile.onnx")
            quantize_static(
                str(src), str(dst), calibration.onnx_reader(input_name),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,  # S8S8: see above
                per_channel=True, reduce_range=False,
                op_types_to_quantize=list(OP_TYPES), nodes_to_quantize=nodes,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                               "TensorQuantOverrides": overrides},
            )
        quantized = onnx.load(str(dst))
    check_on_grid(proto, quantized)
    # quantize_static leaves the shape-inference results of its calibration pass in value_info
    # (265 entries whose batch dim is the symbol "batch" or "unk__N"). They are optional hints,
    # but tract takes them as facts: with the input fixed to a batch of 1 it cannot unify the
    # input Pad's output batch Sym(batch) with Val(1) and refuses the model. Runtimes re-infer
    # shapes from the graph, so none are kept.
    del quantized.graph.value_info[:]
    return quantized


def tensor_heads(proto, model) -> dict[str, str]:
    """The head ("age"/"gender") of each node output of ``proto`` whose node lies in a layer of
    ``model`` that belongs to one head only (its channels all of that head: the reference's
    layers, the per-head convs of the fast graph; not the grouped layers holding both)."""
    from ssrconv.converters.int8_prep import channel_heads

    names = {layer.name for layer in model.layers}
    heads = {}
    for node in proto.graph.node:
        owners = set()
        for layer in node_layers(node.name, names):
            output = model.get_layer(layer).output
            if isinstance(output, (list, tuple)):  # the merge: every head's outputs
                owners.update(("age", "gender"))
                continue
            owners.update(channel_heads(model, layer, output.shape[-1] or 1).tolist())
        if len(owners) == 1:
            head = owners.pop()
            heads.update((output, head) for output in node.output)
    return heads


def age_head_ranges(src: Path, proto, model, nodes, reader, augmented: Path) -> dict:
    """``TensorQuantOverrides`` giving the activations of ``nodes`` (the nodes to quantize) that
    belong to the age head their AGE_RANGE_PERCENTILE range over the calibration
    (onnxruntime's Percentile calibrator on the float model ``src``, ``proto``)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(src, list(OP_TYPES), augmented_model_path=str(augmented),
                                   calibrate_method=CalibrationMethod.Percentile,
                                   extra_options={"percentile": AGE_RANGE_PERCENTILE})
    try:
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
    except ValueError:
        # numpy.histogram of a tensor whose calibration values are all equal (a ReLU that never
        # fires on these faces, seen in the oukohou-pytorch port): no percentile exists, and
        # every activation keeps its MinMax range.
        return {}
    heads = tensor_heads(proto, model)
    weights = {i.name for i in proto.graph.initializer}
    picked = set(nodes)
    quantized = {t for n in proto.graph.node if n.name in picked
                 for t in (*n.input, *n.output) if t not in weights}
    overrides = {}
    for name in ranges:
        if name in quantized and heads.get(name) == "age":
            low, high = (float(np.asarray(v).reshape(-1)[0]) for v in ranges[name].range_value)
            overrides[name] = [{"rmin": np.float32(min(low, 0.0)),
                                "rmax": np.float32(max(high, 0.0))}]
    return overrides


def check_on_grid(float_proto, quantized_proto, tolerance: float = 0.01) -> int:
    """Every int8 weight onnxruntime derived is the integer GPTQ chose: the float kernel of
    the prepared graph divided by its per-channel scale is within ``tolerance`` of a step of
    the stored integer. Returns the number of kernels checked; raises if one is off-grid (a
    scale convention that differs from GPTQ's max|w|/127 would make ORT re-round them)."""
    from onnx import numpy_helper

    floats = {i.name: i for i in float_proto.graph.initializer}
    stored = {i.name: i for i in quantized_proto.graph.initializer}
    checked = 0
    for name, tensor in stored.items():
        base = name[:-len("_quantized")] if name.endswith("_quantized") else None
        if base is None or base not in floats or tensor.data_type != 3:  # 3: INT8
            continue
        q = numpy_helper.to_array(tensor).astype(np.float64)
        w = numpy_helper.to_array(floats[base]).astype(np.float64)
        scale = numpy_helper.to_array(stored[base + "_scale"]).astype(np.float64)
        scale = scale.reshape((-1,) + (1,) * (w.ndim - 1)) if scale.ndim else scale
        off = np.abs(w / scale - q).max()
        if off > tolerance:
            raise Int8RecipeError(f"{base}: int8 weights off the GPTQ grid by {off:.3f} of a "
                                  "step (onnxruntime's weight scale convention changed?)")
        checked += 1
    if not checked:
        raise Int8RecipeError("no int8 weight found to check against its float kernel: "
                              "onnxruntime's naming of quantized initializers changed?")
    return checked


INT8_RECIPE = (
    "static QDQ (onnxruntime.quantization), S8S8: int8 activations, int8 symmetric per-channel "
    "weights (U8S8 saturates in VPMADDUBSW on x86 CPUs without VNNI), MinMax ranges (the age "
    "head's activations: 99.999th percentile); int8: the relu stream "
    "after its first convolution (conv2d_2..4 and the pools; a member with stage-1 maps wider "
    "than the original's: conv2d_3 and the pools after it); float: the first conv block, the "
    "tanh stream, the 1x1 summary convs and the SSR head. BatchNorm folded, cross-layer "
    "equalization (age head), GPTQ rounding with bias correction. See docs/INT8.md.")

"""The mixed int8 TFLite export of SSR-Net (``--precision int8-mixed``; the integer-only files
are made by :mod:`ssrconv.converters.tflite_qat` and :func:`convert_int16x8`, which reuse its
range tools): the inner conv blocks int8, the first blocks, the 1x1 summary convs and the SSR
head float (FLOAT_BACKBONE), accepted by XNNPACK and within the int8 parity budget
(docs/INT8.md has the measurements behind each step). It converts
the reference graph or the fast export graph of :mod:`ssrconv.graph` (the export's default):
the layers it singles out are found in either by :func:`~ssrconv.converters.int8_prep.recipe_layers`.

Recipe (convert_int8):
 1. Graph rewrites on a clone (all exact in float): AveragePooling2D(k) -> DepthwiseConv2D(k, stride k, 1/k^2, no bias)
    (int8 AVERAGE_POOL_2D is not delegated by XNNPACK); tanh -> max-pool reordered as max-pool -> tanh (tanh monotonic:
    bit-exact, 4x fewer tanh); Flatten -> reshape(x, [-1, n]) (a dynamic batch then needs no SHAPE/STRIDED_SLICE/PACK,
    which split the XNNPACK partition).
 2. Cross-layer equalization of the relu stream (relu(s*y) = s*relu(y), avg-pool linear): BN gamma/beta of the relu
    conv blocks scaled per channel by s_c = (R / r_c)^0.75 (r_c = 99.99th pct of |activation| on the calibration
    faces), consumers' kernels divided by s_c on their input-channel axis. Exact in float.
 3. Conv kernels put on their int8 grid by the recipe itself (per-output-channel symmetric, s = max|w|/127, as TFLite):
    GPTQ-style rounding with error feedback using the input-patch covariance of the calibration faces + +/-1 polish,
    then bias correction (mean output shift folded into the bias). The converter re-derives exactly these integers.
 4. Calibration (converter calibrate-only pass), then ranges edited in the calibrated model: inputs of tanh clipped to
    [-4, 4] (tanh(4) = 0.9993; the raw range was [-23, 19]); relu outputs and pool outputs clipped at the
    quantization-MSE-optimal value of their calibration distribution.
 5. Quantize with FLOAT_BACKBONE and every rank<=2 layer (Flatten/Dense/Multiply/SSRMerge: the SSR head, 0.01 M MACs) denylisted -> float.
    Nodes are identified by Keras LAYER NAME: each TFLite op's output tensor name carries the Keras name scopes
    ('.../<layer>_1/...'), matched against model.layers names; ops without a layer scope (the renamed outputs) are
    denylisted when all their inputs come from denylisted ops. Which layers are float is chosen by Keras output rank,
    not by name patterns. Checked afterwards: every CONV_2D / DEPTHWISE_CONV_2D int8, every FULLY_CONNECTED float.
"""
from __future__ import annotations

import re
import warnings

import numpy as np

from ssrconv.converters.int8_prep import (
    ALPHA,
    STAGE1_BLOCKS,
    _keras,
    equalize,
    recipe_layers,
    rewrite,
    round_kernels,
    sources,
)
from ssrconv.formats.tflite_flatbuffer import integer_only_violations, operators, pack, schema
from ssrconv.errors import Int8RecipeError

TANH_CLIP = 4.0       # calibrated range of tanh inputs clipped to [-T, T]


def _op_layers(sg, ops, layer_names):
    """Per op: the Keras layer names appearing as name scopes ('<layer>' or '<layer>_<n>') in its output tensor name."""
    ln = set(layer_names); res = []
    for _, op in ops:
        comps = set()
        for part in re.split(r"[;/]", sg.tensors[op.outputs[0]].name.decode()):
            m = re.fullmatch(r"(.+?)(_\d+)?", part)
            for cand in (part, m.group(1) if m else part):
                if cand in ln:
                    comps.add(cand)
        res.append(comps)
    return res


def _twins(model, names) -> dict[str, set[str]]:
    """Per layer of ``names``: the other layers of ``model`` computing the same function of the
    same inputs (same class, same config but the name, equal weights). TFLite's converter keeps
    one op for such twins, named for one of them: the MXNet pair's reference graph has an
    ``age_input_affine`` and a ``gender_input_affine`` reading ``face_bgr``, and its file one
    op for both, in the age head's name scope (docs/PORTS.md, "int8")."""
    def key(layer):
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
        return type(layer), repr(sorted(config.items())), repr(sources(layer))

    def same_weights(a, b):
        wa, wb = a.get_weights(), b.get_weights()
        return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))

    layers = {layer.name: layer for layer in model.layers}
    keys = {name: key(layer) for name, layer in layers.items()}
    return {n: {m for m in layers if m != n and keys[m] == keys[n]
                and same_weights(layers[m], layers[n])} for n in names}


def _mse_clip(a, grid=np.linspace(0.2, 1.0, 81)):
    a = a.reshape(-1)
    if len(a) > 2_000_000:
        a = np.random.default_rng(0).choice(a, 2_000_000, replace=False)
    M = float(np.abs(a).max()); best = (np.inf, M)
    for f in grid:
        s = f * M / 255; e = np.mean((np.clip(np.round(a / s), 0, 255) * s - a) ** 2)
        if e < best[0]:
            best = (e, f * M)
    return best[1]


# Backbone layers kept in float besides the head (docs/INT8.md, "Which layers stay float"):
# - the first convolution block of each stream (conv2d_1 + its average pool, conv2d_5 + its max
#   pool): their 62x62x(32|16) outputs are the largest activations of the model; XNNPACK's int8
#   kernel pads the 3 input channels per tap to 8 and runs them no faster than float32;
# - the relu stream's second block (conv2d_2 + its average pool) and the six 1x1 summary convs
#   with their pools, so the first block's outputs (30x30) are never quantized. Simulated one
#   tensor at a time, quantizing the first relu pool's output was the largest single error of
#   the old recipe (mean 0.108 of its 0.20 y; no equalization or range choice removed it) and
#   the summaries' the next (stage1_x: its gender channels' range is twice the age channels').
#   Measured on five calibration sets (three distilled, two halves of the dev faces): age p99
#   0.51-0.73 y (mean 0.13-0.15) against 0.80-1.00 (0.20-0.23) with these layers int8, whose
#   p99 on faces it was not calibrated on reached 1.12 y.
FLOAT_BACKBONE = (
    ["conv2d_1", "batch_normalization_1", "activation_1", "average_pooling2d_1_dw",
     "conv2d_5", "batch_normalization_5", "activation_5", "max_pooling2d_1",
     "conv2d_2", "batch_normalization_2", "activation_2", "average_pooling2d_2_dw"]
    + [f"conv2d_{k}" for k in range(9, 15)]
    + ["max_pooling2d_4", "average_pooling2d_4_dw", "max_pooling2d_5", "average_pooling2d_5_dw"])


def float_backbone_layers(model) -> list[str]:
    """The layers of ``model`` implementing FLOAT_BACKBONE (the reference's, with their
    ``age_``/``gender_`` prefixes, or the fast graph's fused layers). (The fast graph's input
    crop is quantized by the converter whether denylisted or not: QUANTIZE, int8 STRIDED_SLICE,
    DEQUANTIZE before the float first convs; the file was byte-identical either way.)

    A family member's in-graph preprocessing (``input_affine``, ssrconv.reference.family) stays
    float too, as the original's input does (oukohou-pytorch, 300 dev faces: mean 0.38 / p99
    1.45 y with it int8). So do the fourth blocks (int8_prep.STAGE1_BLOCKS) of a member whose
    stage-1 maps are wider than the original's (docs/PORTS.md, "int8")."""
    from ssrconv.converters.int8_prep import base_name
    from ssrconv.graph import stage1_products
    from ssrconv.reference.family import wide_stage1

    affine = {layer.name for layer in model.layers if base_name(layer.name) == "input_affine"}
    stage1 = recipe_layers(model, STAGE1_BLOCKS) if wide_stage1(stage1_products(model)) else set()
    return sorted(recipe_layers(model, FLOAT_BACKBONE) | affine | stage1)


# ------------------------------------------------------------------------------------------------------ the recipe
def convert_int8(model, calibration_inputs: np.ndarray, dynamic_batch: bool = True, input_type: str = "float32",
                 alpha: float = ALPHA, round_weights: bool = True, tanh_clip: float | None = TANH_CLIP,
                 mse_clip: bool = True, float_head: bool = True, extra_float_layers=(), return_info: bool = False, float_backbone: bool = True):
    """Full-int8 TFLite (int8 backbone, float SSR head) of an ssrconv reference Keras model -> flatbuffer bytes."""
    from ssrconv._imports import tensorflow

    tf = tensorflow("int8 TFLite export")
    from tensorflow.lite.python import convert as tfl_convert
    keras = _keras()
    cal = np.asarray(calibration_inputs, np.float32)

    m = rewrite(model)                                   # exact clone: DW pools, pool->tanh, static flatten
    # Backbone layers that stay float (layer names survive the rewrite and the batch wrapper).
    float_backbone_set = set(extra_float_layers) | (set(float_backbone_layers(m)) if float_backbone else set())
    if alpha:
        equalize(m, cal, alpha)
    if round_weights:
        round_kernels(m, cal, only=lambda name: name not in float_backbone_set)
    if not dynamic_batch:
        x = keras.Input(batch_shape=(1, *m.input_shape[1:]), name=m.inputs[0].name)
        m = keras.Model(x, m(x), name=f"{m.name}_batch1")  # named: see reference.model.outputs_as_dict
    inner = m if dynamic_batch else m.layers[-1]
    layer_names = [l.name for l in inner.layers]

    calibrated = calibrate_only(m, cal)

    # ---- step 4: edit calibrated ranges
    calibrated, edits = edit_ranges(calibrated, inner, cal, tanh_clip, mse_clip)

    # ---- step 5: float head by Keras layer, quantize
    g, sg, ops = operators(calibrated)
    ol = _op_layers(sg, ops, layer_names)
    float_layers = set(float_backbone_set)
    if float_head:
        float_layers |= {l.name for l in inner.layers if not isinstance(l, keras.layers.InputLayer) and _rank(l) <= 2}
    producer = {o: k for k, (_, op) in enumerate(ops) for o in op.outputs}
    denied = {k for k, c in enumerate(ol) if c & float_layers}
    changed = True
    while changed:                                      # unnamed ops (renamed model outputs) fed only by float ops
        changed = False
        for k, (_, op) in enumerate(ops):
            if k in denied or ol[k]:
                continue
            srcs = [producer[i] for i in op.inputs if i >= 0 and i in producer]
            if srcs and all(s in denied for s in srcs):
                denied.add(k); changed = True
    matched = set().union(*[ol[k] for k in denied]) if denied else set()
    # A layer without an op of its own is matched when a twin's op computes it (_twins).
    twins = _twins(inner, float_layers)
    identities = (keras.layers.Dropout, keras.layers.Identity)
    unmatched = {n for n in float_layers - matched
                 if not isinstance(inner.get_layer(n), identities) and not twins[n] & matched}
    if unmatched:
        raise Int8RecipeError(f"int8 TFLite: float layers without a TFLite op: {sorted(unmatched)} "
                              "(the converter's tensor naming changed?)")
    deny_nodes = [sg.tensors[ops[k][1].outputs[0]].name.decode() for k in sorted(denied)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tfl = tfl_convert.mlir_quantize(calibrated, fully_quantize=False,
                                        input_data_type={"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[input_type],
                                        output_data_type=tf.float32,
                                        denylisted_nodes=deny_nodes)
    # ---- checks: every convolution/pool runs in int8 unless it implements a float layer, and
    # the dense head is float: the recipe as documented, or the export is refused.
    fb = schema()
    g2, sg2, ops2 = operators(tfl)
    ol2 = _op_layers(sg2, ops2, layer_names)
    for (name, op), layers in zip(ops2, ol2):
        dt = sg2.tensors[op.outputs[0]].type
        tensor = sg2.tensors[op.outputs[0]].name.decode(errors="replace")
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D") and layers:
            want = fb.TensorType.FLOAT32 if layers & float_layers else fb.TensorType.INT8
            if dt != want:
                raise Int8RecipeError(f"int8 TFLite: {name} {tensor} computes in "
                                      f"{'int8' if dt == fb.TensorType.INT8 else 'float'}, not as "
                                      "the recipe says (denylist not honoured?)")
        if name == "FULLY_CONNECTED" and float_head and dt != fb.TensorType.FLOAT32:
            raise Int8RecipeError(f"int8 TFLite: dense layer {tensor} was quantized; the SSR head "
                                  "must stay float (XNNPACK refuses int8 dense layers here)")
    if return_info:
        return tfl, {"float_layers": sorted(float_layers), "deny_nodes": len(deny_nodes), "mse_clip": edits}
    return tfl


def edit_ranges(calibrated: bytes, inner, cal: np.ndarray, tanh_clip: float | None = TANH_CLIP,
                mse_clip: bool = True, domains: dict | None = None,
                clip_pools: bool = False) -> tuple[bytes, dict]:
    """Step 4 of the recipe on a calibrate-only flatbuffer of ``inner`` (TFLite's MinMax
    statistics on every tensor): the ranges of tanh inputs (and, through max pools, of their
    producers: the same scale) clipped to [-tanh_clip, tanh_clip], relu outputs' maxima at
    their quantization-MSE-optimal clip on ``cal``, and each output named in ``domains``
    (signature name -> (min, max)) given that range; with ``clip_pools`` the average pools'
    outputs (the rewrite's "_dw" depthwise convolutions) at theirs as well (data-free: the
    distilled inputs' first pool spans 1.7 times the faces' range; docs/INT8.md, "The other
    family members"). Returns the edited flatbuffer and the clips chosen (layer name -> max)."""
    keras = _keras()
    g, sg, ops = operators(calibrated)
    ol = _op_layers(sg, ops, [layer.name for layer in inner.layers])
    edits = {}
    if tanh_clip:
        for k, (name, op) in enumerate(ops):           # tanh input and, through max pools, its producer (same scale)
            if name != "TANH":
                continue
            t_idx = op.inputs[0]
            while True:
                q = sg.tensors[t_idx].quantization
                q.min = np.maximum(q.min, -tanh_clip).astype(np.float32); q.max = np.minimum(q.max, tanh_clip).astype(np.float32)
                prod = [o for n2, o in ops if t_idx in list(o.outputs)]
                if prod and _ops_name(ops, prod[0]) == "MAX_POOL_2D":
                    t_idx = prod[0].inputs[0]
                else:
                    break
    if mse_clip:
        relu_like = []
        for l in inner.layers:
            is_relu_act = isinstance(l, keras.layers.Activation) and l.get_config()["activation"] == "relu"
            is_relu_conv = type(l) is keras.layers.Conv2D and l.get_config()["activation"] == "relu"
            # The average pools (DepthwiseConv2D "_dw" layers: not Conv2D subclasses in Keras 3)
            # are not clipped unless clip_pools: on faces their inputs' clipped relu ranges bound
            # them (docs/INT8.md).
            is_pool = clip_pools and isinstance(l, keras.layers.DepthwiseConv2D) and l.name.endswith("_dw")
            if (is_relu_act or is_relu_conv or is_pool) and len(l.output.shape) == 4:
                relu_like.append(l.name)
        acts = keras.Model(inner.inputs, [inner.get_layer(n).output for n in relu_like]).predict(cal, verbose=0)
        acts = acts if len(relu_like) > 1 else [acts]
        for n, a in zip(relu_like, acts):
            ks = [k for k, c in enumerate(ol) if n in c]  # the last op implementing layer n
            t = sg.tensors[ops[ks[-1]][1].outputs[0]] if ks else None
            if t is None or t.quantization is None or t.quantization.min is None or float(t.quantization.min[0]) < 0:
                continue
            hi = _mse_clip(a); t.quantization.max = np.array([min(hi, float(t.quantization.max[0]))], np.float32)
            edits[n] = hi
    outputs = {m.name.decode(): int(m.tensorIndex)
               for signature in g.signatureDefs or [] for m in signature.outputs or []}
    for name, (low, high) in (domains or {}).items():
        q = sg.tensors[outputs[name]].quantization
        q.min, q.max = np.array([low], np.float32), np.array([high], np.float32)
    return pack(g), edits


def _rank(layer) -> int:
    """The largest rank among ``layer``'s outputs (the fast graph's merge has one per head)."""
    outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
    return max(len(o.shape) for o in outputs)


def _ops_name(ops, op):
    for n, o in ops:
        if o is op:
            return n


# ------------------------------------------------------------------------------------------------ 16x8 integer-only
# Operators whose int16 output keeps its input's scale: between the merge's last product and
# the outputs, the range of the merge's output reaches the outputs through them.
_SAME_SCALE = frozenset({"STRIDED_SLICE", "RESHAPE", "SQUEEZE"})
# A calibrated range within +/-DEAD is a tensor that was zero on every input; DEAD_RANGE is the
# range it gets instead (any: its values are zero, which every int16 scale represents exactly).
DEAD = 1e-30
DEAD_RANGE = 1.0
# Calibrated int16 ranges are widened by this factor (set_ranges).
HEADROOM = 2.0


def set_ranges(calibrated: bytes, domains: dict[str, float]) -> bytes:
    """``calibrated`` (a calibrate-only float model with min/max per tensor) with the ranges the
    16x8 file is quantized on:

    - every operator's output, HEADROOM times its calibrated range. Data-free inputs cover only
      42-100% of the ranges real faces reach (the stage deltas before their tanh: 1.5 against
      3.6), and a value beyond its range is clipped; an int16 range twice as wide costs one
      of 15 bits, far below the weights' rounding (docs/INT8.md, "The 16x8 file"). A product
      of two activations (MUL) gets HEADROOM squared: each factor falls short alike, so the
      product falls short by the square (the PyTorch port's 640 stage-1 delta products,
      data-free: 35% of the faces' range, doubled still clipped, one face off by 7 y);
    - each output, and every tensor it is read through (same-scale slices and reshapes back to
      the merge's output), to [0, its domain] (a shared tensor: the largest domain of the
      outputs reading it). A calibrated int16 range ends at the largest output the calibration
      inputs produce and every output above it is clipped there: data-free inputs reach 58 y,
      so older faces were clipped to 58 y;
    - a tensor that was zero on every calibration input (a dead relu: the per-head graph's
      ``age_dense_7`` and the stage features it multiplies) to [0, DEAD_RANGE]. Calibrated, its
      range is [0, 1.2e-38] and the quantizer scales the bias of the layer reading it by
      input scale x weight scale, about 0: the bias is lost (per-head 16x8: age mean 13 y)."""
    from ssrconv.formats.tflite_flatbuffer import signature_output_names

    model, graph, ops = operators(calibrated)
    producer = {out: (name, op) for name, op in ops for out in op.outputs}
    names = signature_output_names(model)
    unknown = sorted(set(names) - set(domains))
    if unknown:
        raise Int8RecipeError(f"16x8 TFLite: outputs {unknown} have no known domain "
                              f"(known: {sorted(domains)})")
    activations = set(graph.inputs) | set(producer)
    ranges: dict[int, tuple[float, float]] = {}
    for kind, op in ops:
        # a product of two activations, each of which may exceed its range by HEADROOM
        product = kind == "MUL" and all(i in activations for i in op.inputs)
        headroom = HEADROOM ** 2 if product else HEADROOM
        for tensor in op.outputs:
            q = graph.tensors[tensor].quantization
            if q is not None and q.min is not None and len(q.min):
                low, high = float(q.min[0]), float(q.max[0])
                ranges[tensor] = ((0.0, DEAD_RANGE) if max(abs(low), abs(high)) < DEAD else
                                  (low * headroom, high * headroom))
    domain: dict[int, float] = {}
    for tensor, name in zip(graph.outputs, names):
        while True:
            ranges[tensor] = (0.0, max(domain.get(tensor, 0.0), domains[name]))
            domain[tensor] = ranges[tensor][1]
            kind, op = producer[tensor]
            if kind not in _SAME_SCALE:
                break
            tensor = op.inputs[0]
    for tensor, (low, high) in ranges.items():
        q = graph.tensors[tensor].quantization
        q.min = np.array([low], np.float32)
        q.max = np.array([high], np.float32)
    return pack(model)


def calibrate_only(m, cal: np.ndarray, int16_activations: bool = False) -> bytes:
    """The float .tflite of ``m`` with TFLite's MinMax statistics of ``cal`` on every tensor
    (the calibrate-only pass, what QuantizationDebugger does): for the int8 MLIR quantizer, or
    with ``int16_activations`` for the 16x8 ops set (without the MLIR quantizer flag, as the
    16x8 files were always calibrated)."""
    from ssrconv._imports import tensorflow

    tf = tensorflow("16x8 TFLite export" if int16_activations else "int8 TFLite export")
    conv = tf.lite.TFLiteConverter.from_keras_model(m)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([cal[i:i + 1]] for i in range(len(cal)))
    if int16_activations:
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    else:
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.experimental_mlir_quantizer = True
    conv._experimental_calibrate_only = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return conv.convert()


def calibrate_int16x8(model, calibration_inputs: np.ndarray, alpha: float = ALPHA) -> bytes:
    """The recipe's exact rewrites, cross-layer equalization and GPTQ rounding of every conv kernel
    (step 1-3 of this module's docstring) on ``model``, then TFLite's MinMax calibration
    (calibrate-only pass): a float flatbuffer with min/max per tensor."""
    cal = np.asarray(calibration_inputs, np.float32)
    m = rewrite(model)
    if alpha:
        equalize(m, cal, alpha)
    round_kernels(m, cal)
    return calibrate_only(m, cal, int16_activations=True)


def quantize_int16x8(calibrated: bytes) -> bytes:
    """The calibrated model with :func:`set_ranges`' ranges, quantized by TFLite's 16x8
    quantizer and checked integer-only."""
    from ssrconv._imports import tensorflow

    tf = tensorflow("16x8 TFLite export")
    from tensorflow.lite.python.convert import deduplicate_readonly_buffers
    from tensorflow.lite.python.optimize import calibrator

    from ssrconv.reference.model import output_domains

    calibrated = set_ranges(calibrated, output_domains())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The quantizer the converter runs for 16x8 (TFLite's calibrate_and_quantize), fed no
        # inputs so it keeps the ranges in the model. (mlir_quantize with int16 activations,
        # what convert_int8 uses, writes CONV_2D outputs with zero point -1, which TFLite's
        # int16 kernels refuse: "output->params.zero_point != 0".)
        try:
            tfl = calibrator.Calibrator(calibrated).calibrate_and_quantize(
                lambda: iter(()), tf.float32, tf.float32, False, tf.int16, tf.int64)
        except Exception as err:  # noqa: BLE001 - the quantizer raises several unrelated types
            if "'DIV'" not in str(err):
                raise
            raise Int8RecipeError("16x8 TFLite: the graph divides (the original graph's SSR "
                                  "merge) and TFLite's 16x8 quantizer has no DIV; export it "
                                  "from the fast graph (--graph fast, the default)") from None
    tfl = deduplicate_readonly_buffers(tfl)
    float_ops = integer_only_violations(tfl)
    if float_ops:
        raise Int8RecipeError(f"16x8 TFLite: operators computing in float: {float_ops} "
                              "(the integer-only export allows none)")
    return tfl


def convert_int16x8(model, calibration_inputs: np.ndarray, alpha: float = ALPHA) -> bytes:
    """Integer-only 16x8 TFLite (int16 activations, int8 per-channel weights, every operator
    integer, SSR head included; float32 input and outputs through one QUANTIZE / DEQUANTIZE
    each) of an ssrconv Keras model with named outputs (``age`` and/or ``p_male``) whose merge
    has no division (the ``rsqrt_reciprocal`` graph variant: TFLite's 16x8 quantizer has no
    DIV) -> flatbuffer bytes: :func:`calibrate_int16x8` then :func:`quantize_int16x8`. With
    int16 activations the ranges need no clipping; the error is the weights' (docs/INT8.md,
    "16x8 integer-only")."""
    return quantize_int16x8(calibrate_int16x8(model, calibration_inputs, alpha))

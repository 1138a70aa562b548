"""Build the fast export graph from the faithful reference, and prove it computes the same.

The reference (:mod:`ssrconv.reference.model`) is SSR-Net layer for layer: per head two streams
of four 3x3 conv + BatchNorm + activation blocks, six 1x1 "summary" convs, eighteen small Dense
layers and the soft stagewise merge, with a dynamic-batch ``Flatten`` before every Dense. The
graph built here computes the same function with far fewer, larger ops. Each rewrite and why it
is exact (docs/GRAPH.md has the measured effect):

1. **Input cropped to 62 x 62.** Valid 3x3 convs and 2x2/stride-2 pools (floor): conv1 maps
   64 -> 62 rows, pool1 62 -> 31, conv2 31 -> 29, pool2 29 -> 14. Pool2 reads conv2 rows 0..27,
   which read pool1 rows 0..29, which read conv1 rows 0..59, which read input rows 0..61.
   Input rows/cols 62 and 63 feed only conv1 rows 60..61, i.e. pool1 row 30, i.e. conv2 row 28,
   which pool2 drops. The stage-3 summary reads pool1 (31 x 31) through a 1x1 conv and an 8x8
   pool (floor: rows 0..23 only), so pool1 row 30 is dead there too. With a 62 x 62 input every
   shape from pool1 on is unchanged (pool1: 30 x 30 instead of 31 x 31, whose last row and
   column are dead) and every live value is computed from the same inputs in the same order.
2. **BatchNorm folded** into the conv kernel and bias (W * g/sqrt(v+eps), (b-m) g/sqrt(v+eps)+beta):
   an affine map after a linear map; only float rounding changes (computed in float64).
3. **tanh after max-pool.** tanh is strictly increasing, so max(tanh(a), tanh(b)) =
   tanh(max(a, b)): the tanh stream's pools run on pre-activation values and tanh runs on a
   quarter of the elements. Bit-identical in exact arithmetic and in float.
4. **First convs grouped by activation, later ones as groups=H convs.** Both heads read the same
   input: one 3 -> 32H conv (relu streams) and one 3 -> 16H conv (tanh streams), their output
   channels head-major; every later conv of a stream and every 1x1 summary conv is one
   ``groups=H`` conv whose group h holds head h's kernel, so head h's channels only ever see
   head h's channels. Not one 3 -> 48H conv + slices: slicing copies the 62x62 maps and breaks
   conv+activation fusion (issue 13's measurements).
5. **Static reshapes, batched Dense.** ``Reshape((-1,))`` of a tensor with a static H x W x C is
   the same row-major flatten as ``Flatten`` without its dynamic Shape/StridedSlice/Pack ops.
   The flattened summaries of the three stages are concatenated and every Dense family
   (stream features, fusion, stage probabilities, local deltas, deltas) of all stages and heads
   becomes ONE Dense whose kernel is block-sparse: each output column has the original weights
   on its own stage/head rows and exact zeros elsewhere, so each output is the original dot
   product plus exact zeros (the only difference is summation order across zero terms, which
   adds nothing). Columns are laid out stage-major: column (k*H + h)*u + i (units u).
6. **The merge vectorised** (:class:`FusedStagewiseMerge`, 12 ops for every head and stage):
   sums_k = sum_i (i + l_k,i) p_k,i as one multiply and one constant matmul; the product of
   widths s_j (1 + d_j) as a running product over three column slices, with the constant
   s_j = 3 moved into the final constant matmul (V / 3^k), which also adds the stages.
7. **Variants** (:class:`ssrconv.graph.Variant`, chosen per target in ssrconv.targets).
   ``summary_channels=16`` (ONNX): the 1x1 summary convs zero-padded to 16 output channels per
   head. The extra channels have zero weights and bias, so relu gives exact zeros that meet
   zero Dense rows; onnxruntime then keeps its NCHWc blocked layout through the summaries
   (issue 13: six transposes fewer). ``batched_dense=False`` (TFLite dynamic range): the Dense
   layers stay one per stage and head, as in the reference (each reads its own head's channels
   of the summary, sliced after the pools), so every FULLY_CONNECTED input and kernel holds one
   stage's one head only: hybrid kernels quantize each with one scale.
   ``merge_scales_in_sums`` (16x8): the merge's V/3^k in the stage-sum matrix's columns and
   the output matrix 0/1, so per-channel int8 weights store each exactly.
   ``delta_scale_groups=n`` (16x8, int8-integer): a stage-1 delta wider than the original's
   (``ssrconv.reference.family.wide_stage1``) split into n
   magnitude groups summed by ones, each with its own int8 scale.
   ``average_pools_stride2`` (16x8): the stage-2/3 summaries' 4x4 and 8x8
   average pools as two and three 2x2/stride-2 pools (an average of equal blocks' averages,
   and floor(floor(n/2)/2) = floor(n/4): the same inputs), which Vela runs on the NPU.
   ``input_scale_log2=n`` (ncnn/MNN fp16): the input times 2^-n and the first convs' kernels
   times 2^n: powers of two, so every product is bit-identical; float16 weight storage that
   flushes |w| < 2^-14 to zero then keeps the small BN-folded first-conv weights.
8. **Members of the family** (:mod:`ssrconv.reference.family`: ``members`` names each head's
   spec). BatchNorm folds with the member's epsilon; the stage-1 summary convs keep or drop
   their ReLU as the member does (the zero-padded summary channels stay exact zeros either
   way). A member's in-graph preprocessing ``x @ A + c`` (colour order, mean, scale) is folded
   into its head's first convs when the convs are valid (kernel A K, bias b + sum c K: every
   tap reads a real pixel); padding=1 convs zero-pad the normalised input, so for them it stays
   one ``input_affine`` layer shared by the heads, and the input is not cropped (every row is
   live: 64 -> 32 -> 16 -> 8). NCHW-flatten ports need nothing: their Dense rows were re-laid
   out to NHWC when read.

Dropout is the identity at inference and is dropped.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ssrconv._imports import tensorflow

tensorflow()  # quiet import of TF before Keras pulls it in

import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

from ssrconv.graph import (  # noqa: E402
    GraphNotExactError,
    Variant,
    fast_graph_blocker,
    get_variant,
    stage1_products,
)
from ssrconv.reference.family import ORIGINAL, SUMMARY_CHANNELS, wide_stage1  # noqa: E402
from ssrconv.stages import FUSED_STAGE_LAYERS  # noqa: E402
from ssrconv.reference.model import (  # noqa: E402
    INPUT_SIZE,
    InputAffine,
    LAMBDA_D,
    LAMBDA_LOCAL,
    OUTPUT_NAMES,
    STAGE_NUM,
    V_BY_TASK,
    head_names,
)

FUSED_MERGE = "stagewise_merge"  # the merge layer (per head: prefixed "age_", "gender_")
CROP = 62  # the rows/columns of the 64 x 64 input valid convs read (module docstring, 1.)

# Names of the fused stage layers: runtimes' stage_outputs find them by these names and slice
# each original stage tensor out of them (ssrconv.stages.fused_location).
FUSED_PROBS = FUSED_STAGE_LAYERS["probabilities"][0]
FUSED_DELTAS = FUSED_STAGE_LAYERS["delta"][0]
FUSED_LOCAL = FUSED_STAGE_LAYERS["local_delta"][0]

# Exactness bounds at export time (issue 13): an error above either, never a warning.
MAX_AGE_DIFF = 1e-3  # years
MAX_P_MALE_DIFF = 1e-4


def _heads(task: str) -> list[tuple[str, str, str]]:
    """(head task, layer prefix in the reference, output name) per head, in output order."""
    if task == "age-gender":
        return [("age", "age_", "age"), ("gender", "gender_", "p_male")]
    if task in ("age", "gender"):
        return [(task, "", OUTPUT_NAMES[task][0])]
    raise GraphNotExactError(f"unknown task {task!r}: choose age, gender or age-gender")


def _weights(model, name):
    try:
        return [np.asarray(w, np.float64) for w in model.get_layer(name).get_weights()]
    except ValueError:
        raise GraphNotExactError(f"the reference model has no layer {name!r}: pass the model "
                                 "load_reference built (original layer names)") from None


def _folded_conv(model, prefix: str, conv: str, bn: str, epsilon: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    kernel, bias = _weights(model, prefix + conv)
    gamma, beta, mean, var = _weights(model, prefix + bn)
    scale = gamma / np.sqrt(var + epsilon)
    return kernel * scale, (bias - mean) * scale + beta


def _affine_folded(kernel: np.ndarray, bias: np.ndarray, member) -> tuple[np.ndarray, np.ndarray]:
    """A first conv that reads ``face_bgr @ A + c`` (the member's in-graph preprocessing) as
    one conv reading ``face_bgr``: kernel A K per tap, bias b + sum of c K over the taps. Exact
    for valid padding only (every tap reads a real pixel; padding=1 pads the normalised input
    with zeros, which no raw pixel value maps to for every channel at once)."""
    if member.preprocess.identity:
        return kernel, bias
    a, c = member.preprocess.affine()
    return np.einsum("ij,hwjo->hwio", a, kernel), bias + np.einsum("j,hwjo->o", c, kernel)


@keras.saving.register_keras_serializable(package="ssrconv")
class GroupedConv2D(layers.Conv2D):
    """A ``groups > 1`` Conv2D traced as one plain TF ``Conv2D`` op.

    Keras 3 wraps grouped convolutions in an XLA-compiled function (``jit_compile=True``,
    keras/src/backend/tensorflow/nn.py: "grouped convolutions are broken on CPU without XLA"):
    in a SavedModel that is a ``StatefulPartitionedCall`` which tf2onnx cannot convert. TF's
    CPU Conv2D kernel runs grouped filters (in-channels = C / groups) itself, and tf2onnx and
    the TFLite converter both map that op to a grouped convolution (tf2onnx onnx_opset/nn.py
    sets ``group = C / filter_in_channels``).

    Executing it in TF needs grappler's remapper off (it would fuse Conv2D + BiasAdd into
    ``_FusedConv2D``, which refuses groups): :func:`check_exact` runs models that way. It is
    used for the ONNX and CoreML graphs; the TFLite converter inlines Keras' XLA function.
    """

    def convolution_op(self, inputs, kernel):
        from ssrconv._imports import tensorflow

        return tensorflow().nn.conv2d(inputs, kernel, strides=list(self.strides),
                                      padding=self.padding.upper(),
                                      dilations=list(self.dilation_rate))


def _conv_layer(t, kernels, biases, name, groups, activation=None, pad_to=None,
                plain_groups=False, padding="valid"):
    """One conv holding each head's kernel as one group (``groups`` = heads, or 1 for the
    first layer where every head reads the same 3 input channels)."""
    if pad_to is not None:
        kernels = [np.concatenate([k, np.zeros(k.shape[:3] + (pad_to - k.shape[3],))], axis=3)
                   for k in kernels]
        biases = [np.concatenate([b, np.zeros(pad_to - b.shape[0])]) for b in biases]
    kernel = np.concatenate(kernels, axis=3)
    bias = np.concatenate(biases)
    conv_class = GroupedConv2D if groups > 1 and plain_groups else layers.Conv2D
    layer = conv_class(kernel.shape[3], kernel.shape[:2], padding=padding, groups=groups,
                       activation=activation, name=name)
    out = layer(t)
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return out


def _dense(t, kernel, bias, name, activation):
    layer = layers.Dense(kernel.shape[1], activation=activation, name=name)
    out = layer(t)
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return out


@keras.saving.register_keras_serializable(package="ssrconv")
class StaticFlatten(layers.Layer):
    """Row-major flatten as ``reshape(x, (-1, n))`` with ``n`` static: keras' Flatten and
    Reshape build the target shape from the dynamic batch size (Shape, StridedSlice, Pack ops
    in every converted graph)."""

    def call(self, x):
        return ops.reshape(x, (-1, int(np.prod(x.shape[1:]))))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], int(np.prod(input_shape[1:])))


@keras.saving.register_keras_serializable(package="ssrconv")
class ChannelSlice(layers.Layer):
    """Channels ``start:stop`` of an NHWC tensor (one head's channels of a grouped conv)."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, x):
        return x[..., self.start:self.stop]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.stop - self.start)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package="ssrconv")
class FusedStagewiseMerge(layers.Layer):
    """The soft stagewise merge of every head at once (module docstring, 6.).

    Inputs ``[p, d, l]``: stage probabilities (N, K*H*s), deltas (N, K*H), local deltas
    (N, K*H*s), columns stage-major (k, head, unit). Returns one (N, 1) tensor per head.
    """

    def __init__(self, heads: int, V=(101.0,), stage_num=STAGE_NUM, rsqrt_reciprocal=False,
                 scales_in_sums=False, **kwargs):
        super().__init__(**kwargs)
        self.heads = int(heads)
        self.rsqrt_reciprocal = bool(rsqrt_reciprocal)
        self.scales_in_sums = bool(scales_in_sums)
        self.V = tuple(float(v) for v in V)
        self.stage_num = tuple(int(s) for s in stage_num)
        if len(set(self.stage_num)) != 1 or len(self.V) != self.heads:
            raise GraphNotExactError("FusedStagewiseMerge needs equal stage widths and one V per head")
        s, n, h = self.stage_num[0], len(self.stage_num), self.heads
        self._index = np.tile(np.arange(s, dtype=np.float32), n * h)[None, :]
        # Stage k of head `head` is column k * h + head of the stage sums; V / s^(k+1) is in
        # the output matrix, or (scales_in_sums) in that column of the sums matrix, where a
        # per-channel int8 quantizer stores it exactly (Variant.merge_scales_in_sums).
        sums = np.zeros((n * h * s, n * h), np.float32)
        out = np.zeros((n * h, h), np.float32)
        for k in range(n):
            for head in range(h):
                col, scale = k * h + head, self.V[head] / float(s) ** (k + 1)
                sums[col * s:(col + 1) * s, col] = scale if self.scales_in_sums else 1.0
                out[col, head] = 1.0 if self.scales_in_sums else scale
        self._sums = sums
        self._out = out

    def call(self, inputs):
        p, d, local = inputs
        h = self.heads
        sums = ops.matmul(p * (local * LAMBDA_LOCAL + self._index), self._sums)
        width = 1.0 + d * LAMBDA_D  # s_j (1 + d_j) / s_j; s_j^k sits in self._out
        running = width[:, 0:h]
        dens = [running]
        for k in range(1, len(self.stage_num)):
            running = running * width[:, k * h:(k + 1) * h]
            dens.append(running)
        dens = ops.concatenate(dens, axis=-1)
        if self.rsqrt_reciprocal:
            # 1/x as rsqrt(x)^2 (x > 0: a product of 1 + tanh terms): TFLite's 16x8
            # quantizer has no DIV, and RSQRT and MUL are integer kernels everywhere.
            root = ops.rsqrt(dens)
            total = ops.matmul(sums * root * root, self._out)
        else:
            total = ops.matmul(sums / dens, self._out)
        if h == 1:
            return [total]
        return [total[:, i:i + 1] for i in range(h)]

    def compute_output_shape(self, input_shape):
        return [(input_shape[0][0], 1)] * self.heads

    def get_config(self):
        config = super().get_config()
        config.update(heads=self.heads, V=list(self.V), stage_num=list(self.stage_num),
                      rsqrt_reciprocal=self.rsqrt_reciprocal, scales_in_sums=self.scales_in_sums)
        return config


def build_export_graph(reference_model, task: str, variant: str | Variant,
                       members: dict | None = None) -> keras.Model:
    """The fast, function-preserving export graph of ``reference_model`` for ``task``
    ("age", "age-gender", "gender") shaped as ``variant`` (a :class:`ssrconv.graph.Variant` or
    its name in ``ssrconv.graph.VARIANTS``: "tflite", "onnx", ...; the target table says which
    each target converts). ``members`` ({head task: family Member}, default the original for
    every head) are the specs the reference was built from: their padding, BatchNorm epsilon,
    stage-1 summary ReLU and in-graph preprocessing shape the graph (module docstring, 8.).

    Input ``face_bgr`` (N, 64, 64, 3) float32 BGR 0..255; outputs named ``age`` and/or
    ``p_male`` (N, 1), as the reference's. The rewrites and why each is exact are in this
    module's docstring; :func:`check_exact` verifies the result numerically.
    """
    variant = variant if isinstance(variant, Variant) else get_variant(variant)
    heads = _heads(task)
    n_heads = len(heads)
    members = members or {head_task: ORIGINAL for head_task, _, _ in heads}
    member_of = {prefix: members[head_task] for head_task, prefix, _ in heads}
    blocker = fast_graph_blocker({t: members[t] for t, _, _ in heads})
    if blocker:
        raise GraphNotExactError(f"the fast graph cannot express this model: {blocker}; "
                                 "export with --graph original")
    arch = members[heads[0][0]].arch  # padding and stage-1 ReLU: shared by the heads (above)
    valid = arch.padding == "valid"
    summary_width = variant.summary_channels
    if summary_width < SUMMARY_CHANNELS:
        raise GraphNotExactError(f"variant {variant.name!r}: summary_channels must be >= "
                                 f"{SUMMARY_CHANNELS}")
    m = reference_model
    plain = variant.plain_groups

    def _conv(*args, **kwargs):
        return _conv_layer(*args, plain_groups=plain, padding=arch.padding, **kwargs)

    def folded(own, conv, bn):
        pairs = [_folded_conv(m, prefix, conv, bn, member_of[prefix].arch.bn_epsilon)
                 for _, prefix, _ in own]
        if conv in ("conv2d_1", "conv2d_5") and valid:  # the preprocessing, folded in
            pairs = [_affine_folded(k, b, member_of[prefix])
                     for (k, b), (_, prefix, _) in zip(pairs, own)]
        return [k for k, _ in pairs], [b for _, b in pairs]

    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="face_bgr")
    x = inputs
    if valid:
        x = layers.Cropping2D(((0, INPUT_SIZE - CROP), (0, INPUT_SIZE - CROP)), name="crop_62")(x)
    else:
        # padding=1: every input row is live (no crop), and the preprocessing stays a layer
        # (one for every head: fast_graph_blocker); the padded zeros are in its output's space.
        preprocess = members[heads[0][0]].preprocess
        if not preprocess.identity:
            kernel, bias = preprocess.affine()
            x = InputAffine(kernel.tolist(), bias.tolist(), name="input_affine")(x)
    first_scale = 2.0 ** variant.input_scale_log2
    if variant.input_scale_log2:
        x = layers.Rescaling(1.0 / first_scale, name="input_scale")(x)

    def conv_part(own, tag):
        """The conv streams and summaries of the heads ``own``, as grouped convs across
        them; (stream s summary, stream x summary) per stage, channels head-major."""
        # relu stream (conv2d_1..4): conv + relu, average pools.
        k, b = folded(own, "conv2d_1", "batch_normalization_1")
        r = _conv(x, [w * first_scale for w in k], b, tag + "relu_conv1", 1, "relu")
        x_layer1 = layers.AveragePooling2D(2, 2, name=tag + "relu_pool1")(r)
        k, b = folded(own, "conv2d_2", "batch_normalization_2")
        r = _conv(x_layer1, k, b, tag + "relu_conv2", len(own), "relu")
        x_layer2 = layers.AveragePooling2D(2, 2, name=tag + "relu_pool2")(r)
        k, b = folded(own, "conv2d_3", "batch_normalization_3")
        r = _conv(x_layer2, k, b, tag + "relu_conv3", len(own), "relu")
        x_layer3 = layers.AveragePooling2D(2, 2, name=tag + "relu_pool3")(r)
        k, b = folded(own, "conv2d_4", "batch_normalization_4")
        x_4 = _conv(x_layer3, k, b, tag + "relu_conv4", len(own), "relu")

        # tanh stream (conv2d_5..8): conv, max-pool, then tanh (module docstring, 3.).
        def tanh_block(t, conv, bn, number, group_count, pool=True):
            k, b = folded(own, conv, bn)
            if number == 1:  # reads the (scaled) input
                k = [w * first_scale for w in k]
            t = _conv(t, k, b, f"{tag}tanh_conv{number}", group_count)
            if pool:
                t = layers.MaxPooling2D(2, 2, name=f"{tag}tanh_pool{number}")(t)
            return layers.Activation("tanh", name=f"{tag}tanh_act{number}")(t)

        s_layer1 = tanh_block(x, "conv2d_5", "batch_normalization_5", 1, 1)
        s_layer2 = tanh_block(s_layer1, "conv2d_6", "batch_normalization_6", 2, len(own))
        s_layer3 = tanh_block(s_layer2, "conv2d_7", "batch_normalization_7", 3, len(own))
        s_4 = tanh_block(s_layer3, "conv2d_8", "batch_normalization_8", 4, len(own), pool=False)

        def summary(t, conv, name, pool=None, pool_cls=None, relu=True):
            # Without relu the zero-padded channels are still exact zeros (zero kernel and bias).
            kernels, biases = zip(*[_weights(m, prefix + conv) for _, prefix, _ in own])
            t = _conv(t, list(kernels), list(biases), name, len(own), "relu" if relu else None,
                      pad_to=summary_width)
            if pool is None:
                return t
            if variant.average_pools_stride2 and pool_cls is layers.AveragePooling2D:
                # pool (4 or 8) x pool as log2(pool) 2x2/stride-2 pools, the last one under
                # the single pool's name (Variant.average_pools_stride2)
                for step in range(1, pool.bit_length() - 1):
                    t = layers.AveragePooling2D(2, 2, name=f"{name}_pool_step{step}")(t)
                return layers.AveragePooling2D(2, 2, name=name + "_pool")(t)
            return pool_cls(pool, pool, name=name + "_pool")(t)

        # (stream s summary, stream x summary) per stage, as in the reference.
        return [
            (summary(s_4, "conv2d_9", tag + "stage1_s", relu=arch.stage1_summary_relu),
             summary(x_4, "conv2d_10", tag + "stage1_x", relu=arch.stage1_summary_relu)),
            (summary(s_layer2, "conv2d_11", tag + "stage2_s", 4, layers.MaxPooling2D),
             summary(x_layer2, "conv2d_12", tag + "stage2_x", 4, layers.AveragePooling2D)),
            (summary(s_layer1, "conv2d_13", tag + "stage3_s", 8, layers.MaxPooling2D),
             summary(x_layer1, "conv2d_14", tag + "stage3_x", 8, layers.AveragePooling2D)),
        ]

    if variant.grouped_convs:
        stage_maps = conv_part(heads, "")
        per_head_maps = None
    else:
        per_head_maps = [conv_part([h], h[1]) for h in heads]
        stage_maps = per_head_maps[0]
    n_stages = len(stage_maps)
    if not variant.batched_dense:
        return _per_stage_head(m, task, heads, stage_maps, per_head_maps, summary_width, inputs,
                               variant)
    if per_head_maps is not None:
        raise GraphNotExactError(f"variant {variant.name!r}: batched Dense layers need grouped convs")

    def flatten(t, name):
        h, w, c = t.shape[1:]
        return StaticFlatten(name=name)(t), (h, w, c)

    flats_s, flats_x, geometry = [], [], []
    for number, (st, xt) in enumerate(stage_maps, start=1):
        fs, geo = flatten(st, f"stage{number}_s_flat")
        fx, _ = flatten(xt, f"stage{number}_x_flat")
        flats_s.append(fs)
        flats_x.append(fx)
        geometry.append(geo)
    flat_s = layers.Concatenate(name="stages_s_flat")(flats_s)
    flat_x = layers.Concatenate(name="stages_x_flat")(flats_x)

    # Row of the concatenated flat vector holding (stage k, head h, original flat index j).
    offsets = np.cumsum([0] + [h * w * c for h, w, c in geometry])
    total_rows = int(offsets[-1])

    def flat_rows(k, head):
        h, w, c = geometry[k]
        positions = np.arange(h * w)
        rows = []
        for pos in positions:  # original Flatten order: (y, x, channel) with 10 channels
            base = offsets[k] + pos * c + head * summary_width
            rows.extend(base + ch for ch in range(SUMMARY_CHANNELS))
        return np.asarray(rows)

    plan = [(("dense_1", "dense_2"), "dense_3"), (("dense_4", "dense_5"), "dense_6"),
            (("dense_7", "dense_8"), "dense_9")]
    s = STAGE_NUM[0]
    n_cols = n_stages * n_heads

    def col(k, head):
        return k * n_heads + head

    def from_flat(which):  # stream feature Dense of every stage/head on the flat vector
        kernel = np.zeros((total_rows, n_cols * 3))
        bias = np.zeros(n_cols * 3)
        for k, ((ds, dx), _) in enumerate(plan):
            for head, (_, prefix, _) in enumerate(heads):
                wk, wb = _weights(m, prefix + (ds if which == "s" else dx))
                c0 = col(k, head) * 3
                kernel[flat_rows(k, head), c0:c0 + 3] = wk
                bias[c0:c0 + 3] = wb
        return kernel, bias

    feat_s = _dense(flat_s, *from_flat("s"), "stages_s_features", "relu")
    feat_x = _dense(flat_x, *from_flat("x"), "stages_x_features", "relu")
    feat = layers.Multiply(name="stages_features")([feat_s, feat_x])

    def block(layer_of, n_in, n_out):  # block-diagonal Dense over (stage, head) blocks
        kernel = np.zeros((n_cols * n_in, n_cols * n_out))
        bias = np.zeros(n_cols * n_out)
        for k in range(n_stages):
            for head, (head_task, prefix, _) in enumerate(heads):
                wk, wb = _weights(m, prefix + layer_of(k, head_task))
                c = col(k, head)
                kernel[c * n_in:(c + 1) * n_in, c * n_out:(c + 1) * n_out] = wk
                bias[c * n_out:(c + 1) * n_out] = wb
        return kernel, bias

    fused = _dense(feat, *block(lambda k, t: plan[k][1], 3, 6), "stages_fusion", "relu")
    probs = _dense(fused, *block(lambda k, t: head_names(t)["stages"].format(k + 1), 6, s),
                   FUSED_PROBS, "relu")
    local = _dense(fused, *block(lambda k, t: f"local_delta_stage{k + 1}", 6, s),
                   FUSED_LOCAL, "tanh")

    delta_in = layers.Multiply(name="stages_delta_in")([flat_s, flat_x])
    kernel = np.zeros((total_rows, n_cols))
    bias = np.zeros(n_cols)
    for k in range(n_stages):
        for head, (_, prefix, _) in enumerate(heads):
            wk, wb = _weights(m, prefix + f"delta_s{k + 1}")
            kernel[flat_rows(k, head), col(k, head)] = wk[:, 0]
            bias[col(k, head)] = wb[0]
    deltas = _dense(delta_in, kernel, bias, FUSED_DELTAS, "tanh")

    return _merged_model(inputs, task, heads, probs, deltas, local, variant)


def _reference_dense(m, t, name, groups: int = 1):
    """The reference's Dense layer ``name`` on ``t``. With ``groups`` > 1 (a stage delta: one
    tanh unit reading the stage's feature products) as a linear Dense with one output per group
    of its weights (grouped by magnitude, the rest of each column zero), then the layer ``name``
    summing the groups (weights 1) with the bias and activation. The same function; a
    per-channel int8 quantizer gives each group its own scale (Variant.delta_scale_groups)."""
    kernel, bias = _weights(m, name)
    activation = m.get_layer(name).get_config().get("activation")
    if groups <= 1:
        return _dense(t, kernel, bias, name, activation)
    parts = np.zeros((kernel.shape[0], groups))
    for g, rows in enumerate(np.array_split(np.argsort(np.abs(kernel[:, 0])), groups)):
        parts[rows, g] = kernel[rows, 0]
    t = _dense(t, parts, np.zeros(groups), name + "_groups", None)
    return _dense(t, np.ones((groups, 1)), bias, name, activation)


def _per_stage_head(m, task, heads, stage_maps, per_head_maps, summary_width,
                    inputs, variant: Variant) -> keras.Model:
    """The Dense part as in the reference, one Dense per stage and head under the reference's
    layer names (so the stage tensors keep theirs), on each head's channels of the grouped
    summaries; then the vectorised merge (module docstring, 7.)."""
    n_heads = len(heads)
    probs, deltas, locals_ = [], [], []
    plan = [(("dense_1", "dense_2"), "dense_3"), (("dense_4", "dense_5"), "dense_6"),
            (("dense_7", "dense_8"), "dense_9")]

    # Only a stage-1 delta wider than the original's is grouped (Variant.delta_scale_groups).
    groups = variant.delta_scale_groups if wide_stage1(stage1_products(m)) else 1
    for k, ((st, xt), ((ds, dx), dfuse)) in enumerate(zip(stage_maps, plan)):
        for head, (head_task, prefix, _) in enumerate(heads):
            def own(t, stream, k=k, head=head, prefix=prefix):
                start = head * summary_width
                if per_head_maps is not None:  # the head's own, ungrouped convs
                    t = per_head_maps[head][k][0 if stream == "s" else 1]
                    start = 0
                if (per_head_maps is None and n_heads > 1) or summary_width != SUMMARY_CHANNELS:
                    t = ChannelSlice(start, start + SUMMARY_CHANNELS,
                                     name=f"{prefix}stage{k + 1}_{stream}_own")(t)
                return StaticFlatten(name=f"{prefix}stage{k + 1}_{stream}_flat")(t)

            fs, fx = own(st, "s"), own(xt, "x")
            feat = layers.Multiply(name=f"{prefix}stage{k + 1}_features")(
                [_reference_dense(m, fs, prefix + ds), _reference_dense(m, fx, prefix + dx)])
            fused = _reference_dense(m, feat, prefix + dfuse)
            probs.append(_reference_dense(m, fused,
                                          prefix + head_names(head_task)["stages"].format(k + 1)))
            locals_.append(_reference_dense(m, fused, prefix + f"local_delta_stage{k + 1}"))
            delta_in = layers.Multiply(name=f"{prefix}stage{k + 1}_delta_in")([fs, fx])
            deltas.append(_reference_dense(m, delta_in, prefix + f"delta_s{k + 1}",
                                           groups if k == 0 else 1))
    if variant.merge_per_head and n_heads > 1:
        merged = []
        for head, (head_task, prefix, _) in enumerate(heads):
            own = slice(head, None, n_heads)  # this head's stages, in stage order
            p, d, local = (layers.Concatenate(name=f"{prefix}stage_{what}_all")(tensors[own])
                           for what, tensors in (("probs", probs), ("deltas", deltas),
                                                 ("local_deltas", locals_)))
            merged += FusedStagewiseMerge(1, [V_BY_TASK[head_task]],
                                          rsqrt_reciprocal=variant.rsqrt_reciprocal,
                                          scales_in_sums=variant.merge_scales_in_sums,
                                          name=prefix + FUSED_MERGE)([p, d, local])
        return _named_model(inputs, task, heads, merged)
    # stage-major columns (k * heads + head) * units + unit, as FusedStagewiseMerge reads them
    p = layers.Concatenate(name="stage_probs_all")(probs)
    d = layers.Concatenate(name="stage_deltas_all")(deltas)
    local = layers.Concatenate(name="stage_local_deltas_all")(locals_)
    return _merged_model(inputs, task, heads, p, d, local, variant)


def _merged_model(inputs, task, heads, probs, deltas, local, variant: Variant) -> keras.Model:
    """The vectorised soft stagewise merge of every head (module docstring, 6.) on the
    stage-major stage tensors, and the model with the reference's output names."""
    merged = FusedStagewiseMerge(len(heads), [V_BY_TASK[t] for t, _, _ in heads],
                                 rsqrt_reciprocal=variant.rsqrt_reciprocal,
                                 scales_in_sums=variant.merge_scales_in_sums,
                                 name=FUSED_MERGE)([probs, deltas, local])
    return _named_model(inputs, task, heads, merged)


def _named_model(inputs, task, heads, merged) -> keras.Model:
    """The model whose outputs are ``merged`` (one (N, 1) tensor per head) under the
    reference's output names."""
    outputs = [layers.Identity(name=out)(t) for (_, _, out), t in zip(heads, merged)]
    return keras.Model(inputs, outputs if len(heads) > 1 else outputs[0],
                       name=f"ssrnet_{task.replace('-', '_')}_fast")


@contextlib.contextmanager
def grouped_convs_runnable():
    """Run Keras models holding :class:`GroupedConv2D` in TF inside this block: grappler's
    remapper fuses Conv2D + BiasAdd into ``_FusedConv2D``, which refuses grouped filters, so it
    is off until the block ends (the reference is unaffected by it)."""
    from ssrconv._imports import grappler_options

    with grappler_options(remapping=False):
        yield


def _predict(model, inputs: np.ndarray) -> list[np.ndarray]:
    with grouped_convs_runnable():
        out = model.predict(np.asarray(inputs, np.float32), batch_size=256, verbose=0)
    out = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(o, np.float64).reshape(len(inputs), -1)[:, 0] for o in out]


def check_exact(reference_model, export_model, inputs: np.ndarray) -> dict[str, float]:
    """Max |diff| per output (``age`` years, ``p_male``) of ``export_model`` against
    ``reference_model`` on ``inputs`` (N x 64 x 64 x 3 BGR 0..255: real faces and synthetic
    inputs). Raises GraphNotExactError when age differs by more than 1e-3 y or P(male) by
    more than 1e-4, or when the outputs do not correspond."""
    ref_names = list(reference_model.output_names)
    exp_names = list(export_model.output_names)
    if len(ref_names) != len(exp_names):
        raise GraphNotExactError(f"export graph outputs {exp_names} do not match the "
                                 f"reference's {ref_names}")
    ref = _predict(reference_model, inputs)
    got = _predict(export_model, inputs)
    diffs = {}
    for name, want, have in zip(exp_names, ref, got):
        bound = MAX_AGE_DIFF if name == "age" else MAX_P_MALE_DIFF
        diff = float(np.max(np.abs(want - have))) if len(want) else 0.0
        if not np.isfinite(diff) or diff > bound:
            raise GraphNotExactError(
                f"export graph is not exact: max |{name} diff| {diff:.3g} > {bound:g} on "
                f"{len(inputs)} inputs; export with --graph original and report this")
        diffs[name] = diff
    return diffs

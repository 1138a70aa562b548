"""The Keras-level preparation both int8 recipes share (TFLite: converters/tflite_int8.py, ONNX:
converters/onnx_int8.py), on a clone of the reference: exact graph rewrites, cross-layer
equalization of the relu stream and GPTQ-style rounding of the kernels that will run in int8.
docs/INT8.md has the measurements behind each step.
"""
from __future__ import annotations

import numpy as np

from ssrconv.errors import Int8RecipeError

ALPHA = 0.75          # CLE strength (0 = none, 1 = full range equalization)
CLE_PCT = 99.99       # percentile of |activation| used as channel range for CLE


# ----------------------------------------------------------------------------------------------- graph utilities
def _keras():
    import keras
    return keras


def sources(layer) -> list[tuple[str, int, int]]:
    """Where each input of each call of ``layer`` comes from: (the producing layer's name, which
    of its calls, which of its outputs). The one walk of Keras' node records (``_keras_history``)
    the int8 recipes make; :func:`consumers` and ``tflite_int8._twins`` read the graph through it."""
    return [(t._keras_history[0].name, t._keras_history[1], t._keras_history[2])
            for node in layer._inbound_nodes for t in node.input_tensors]


def consumers(model):
    """{layer name: the names of the layers reading its outputs} of ``model``."""
    cons = {}
    for l in model.layers:
        for source, _, _ in sources(l):
            cons.setdefault(source, []).append(l.name)
    return cons


def producer(layer):
    return layer.input._keras_history[0] if not isinstance(layer.input, list) else None


def _make_static_flatten():
    keras = _keras()

    class StaticFlatten(keras.layers.Layer):
        def call(self, x):
            return keras.ops.reshape(x, (-1, int(np.prod(x.shape[1:]))))

        def compute_output_shape(self, s):
            return (s[0], int(np.prod(s[1:])))
    return StaticFlatten


def rewrite(model):
    """Step 1 (exact): DW-conv pools, max-pool before tanh, static-shape flatten. Layer names kept ('_dw' for pools)."""
    keras = _keras()
    StaticFlatten = _make_static_flatten()
    cons = consumers(model)
    swap = {}
    for l in model.layers:
        if isinstance(l, keras.layers.Activation) and l.get_config()["activation"] == "tanh":
            c = cons.get(l.name, [])
            if len(c) == 1 and isinstance(model.get_layer(c[0]), keras.layers.MaxPooling2D):
                swap[l.name] = c[0]
    pool_to_tanh = {v: k for k, v in swap.items()}

    def clone(l):
        if isinstance(l, keras.layers.AveragePooling2D):
            if l.padding != "valid" or tuple(l.strides) != tuple(l.pool_size):
                raise Int8RecipeError(f"{l.name}: only valid, non-overlapping average pools are "
                                      "rewritten as depthwise convolutions")
            return keras.layers.DepthwiseConv2D(l.pool_size, strides=l.strides, padding="valid", use_bias=False, name=l.name + "_dw")
        if isinstance(l, keras.layers.Flatten):
            return StaticFlatten(name=l.name)
        return l.__class__.from_config(l.get_config())

    def call(layer, *a, **k):
        if layer.name in swap:
            return a[0]
        out = layer(*a, **k)
        if layer.name in pool_to_tanh:
            out = keras.layers.Activation("tanh", name=pool_to_tanh[layer.name])(out)
        return out

    new = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for l in model.layers:
        if isinstance(l, keras.layers.AveragePooling2D):
            nl = new.get_layer(l.name + "_dw")
            nl.set_weights([np.full(nl.kernel.shape, 1 / np.prod(l.pool_size), np.float32)])
        elif l.weights:
            new.get_layer(l.name).set_weights(l.get_weights())
    return new


# ----------------------------------------------------------------------------------- step 2: cross-layer equalization
def _relu_scaled_by(model, layer):
    """How the per-channel output scale of a relu producer is applied, or None when ``layer``
    is not one: ``("bn", bn_layer)`` for Conv -> BN -> relu Activation (the reference),
    ``("conv", layer)`` for a Conv2D with a fused relu (the fast graph, BN folded)."""
    keras = _keras()
    if isinstance(layer, keras.layers.Activation) and layer.get_config()["activation"] == "relu":
        bn = producer(layer)
        return ("bn", bn) if isinstance(bn, keras.layers.BatchNormalization) else None
    if (isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D)
            and layer.get_config()["activation"] == "relu"):
        return ("conv", layer)
    return None


def _is_conv(layer) -> bool:
    keras = _keras()
    return isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D)


def _divide_input_channels(layer, s):
    """Divide ``layer``'s kernel by ``s`` (one factor per input channel of the full input tensor):
    with ``groups`` g, input channel c is row c % (C/g) of the kernel columns of group c // (C/g)."""
    w = layer.get_weights()
    kernel = w[0].astype(np.float64)
    per_group_in = kernel.shape[2]
    groups = len(s) // per_group_in
    per_group_out = kernel.shape[3] // groups
    for g in range(groups):
        kernel[:, :, :, g * per_group_out:(g + 1) * per_group_out] /= \
            s[g * per_group_in:(g + 1) * per_group_in][None, None, :, None]
    w[0] = kernel
    layer.set_weights(w)


def equalize(model, cal, alpha=ALPHA, pct=CLE_PCT, heads=("age",)):
    """Scale relu conv blocks whose consumers (through average pools) are all Conv2D, per output
    channel, in the channels of the ``heads`` named (:func:`channel_heads`); their readers'
    kernels are divided by the same factors on their input channels (grouped kernels too).
    Only the age head by default: equalizing the gender head's relu stream flipped 8 of 300 dev
    faces' P(male) > 0.5 (97.3% agreement, max diff 1.0); without it: 100%, max diff 0.12."""
    keras = _keras()
    cons = consumers(model)
    plans = []
    for l in model.layers:
        how = _relu_scaled_by(model, l)
        if how is None:
            continue
        readers, ok = [], True
        for c in cons.get(l.name, []):
            cl = model.get_layer(c)
            if isinstance(cl, (keras.layers.AveragePooling2D, keras.layers.DepthwiseConv2D)) and not isinstance(cl, keras.layers.Conv2D) \
                    or (isinstance(cl, keras.layers.DepthwiseConv2D) and cl.name.endswith("_dw")):
                for cc in cons.get(c, []):
                    ok &= _is_conv(model.get_layer(cc))
                    readers.append(cc)
            elif _is_conv(cl):
                readers.append(c)
            else:
                ok = False
        if not (ok and readers):
            continue
        owner = channel_heads(model, l.name, l.output.shape[-1])
        if np.isin(owner, heads).any():
            plans.append((l.name, how, readers, owner))
    if not plans:
        return model
    outs = keras.Model(model.inputs, [model.get_layer(a).output for a, _, _, _ in plans]).predict(cal, verbose=0)
    outs = outs if isinstance(outs, list) else [outs]
    for (act, (kind, scaled), readers, owner), o in zip(plans, outs):
        r = np.maximum(np.percentile(np.abs(o.reshape(-1, o.shape[-1])), pct, axis=0), 1e-6)
        equalized = np.isin(owner, heads)
        top = r[equalized].max()
        # In a fused layer of the fast graph the other heads' channels keep s = 1. Scaling the
        # gender channels by one factor per head so their largest range meets the age head's
        # (both share one activation scale there) measured worse: TFLite p99 0.94 y vs 0.76 y,
        # one face's gender flipped (docs/INT8.md).
        s = np.where(equalized, (top / r) ** alpha, 1.0)
        if kind == "bn":
            g, b, mu, var = scaled.get_weights()
            scaled.set_weights([g * s, b * s, mu, var])
        else:  # relu(s * y) = s * relu(y): the conv's output channels scaled
            kernel, bias = scaled.get_weights()
            scaled.set_weights([kernel * s, bias * s])
        for n in readers:
            _divide_input_channels(model.get_layer(n), s)
    return model


# ------------------------------------------------------------------------- step 3: int8-grid rounding of conv kernels
def _patch_stats(model, layer, cal, bs=25):
    import tensorflow as tf
    keras = _keras()
    sub = keras.Model(model.inputs, layer.input)
    kh, kw = layer.kernel_size; st = layer.strides
    H = S = None; n = 0
    for i in range(0, len(cal), bs):
        a = sub(cal[i:i + bs], training=False)
        p = tf.image.extract_patches(a, [1, kh, kw, 1], [1, st[0], st[1], 1], [1, 1, 1, 1],
                                     layer.padding.upper())  # "same": the zero border too
        p = tf.reshape(p, [-1, p.shape[-1]]).numpy().astype(np.float64)   # (kh, kw, cin) order == kernel.reshape(-1, cout)
        H = p.T @ p if H is None else H + p.T @ p
        S = p.sum(0) if S is None else S + p.sum(0); n += len(p)
    m = S / n
    return H / n - np.outer(m, m), m


def _gptq_channel(w, C):
    s = np.abs(w).max() / 127
    if s == 0:
        return np.zeros_like(w), 1.0
    K = len(w); order = np.argsort(-np.abs(w))        # largest first: exact on the grid, keeps the scale
    Cp = C[np.ix_(order, order)]
    Hinv = np.linalg.inv(Cp + (1e-6 * np.mean(np.diag(Cp)) + 1e-12) * np.eye(K))
    U = np.linalg.cholesky(Hinv).T
    wp = w[order].copy(); q = np.zeros(K)
    for i in range(K):
        q[i] = np.clip(np.round(wp[i] / s), -127, 127)
        wp[i + 1:] -= (wp[i] - q[i] * s) / U[i, i] * U[i, i + 1:]
    qq = np.empty(K); qq[order] = q
    # +/-1 coordinate polish of d^T C d
    imax = np.argmax(np.abs(w)); d = qq * s - w; g = C @ d; diag = np.diag(C)
    for _ in range(50):
        improved = False
        for i in range(K):
            if i == imax:
                continue
            for step in (-1, 1):
                if abs(qq[i] + step) > 127:
                    continue
                dl = step * s
                if 2 * dl * g[i] + dl * dl * diag[i] < -1e-12 * max(1.0, abs(diag[i])):
                    qq[i] += step; g += C[:, i] * dl; improved = True
                    break
        if not improved:
            break
    return qq, s


def round_kernels(model, cal, only=lambda name: True):
    """GPTQ rounding with bias correction of the Conv2D kernels whose layer name satisfies
    ``only`` (those that will run in int8: rounding a kernel that stays float only adds error),
    onto the symmetric per-channel int8 grid ``[-127, 127] * max|w| / 127``. A ``groups`` g
    kernel is rounded per group, on the covariance of the input channels that group reads.

    One BLAS thread for the per-channel inverse and Cholesky factor (a few hundred rows): more
    threads only wait on each other at that size. With OpenBLAS's default (a thread per core)
    each pair took 18x the CPU time (0.089 vs 0.0049 CPU-s, 288 x 288, 2 cores under load) and
    an int8 export calibrated on the dev faces 77 CPU-s against 49 with this limit (both under
    load), the same file (sha256 ff0d4e73...)."""
    from threadpoolctl import threadpool_limits

    keras = _keras()
    for l in model.layers:
        if not isinstance(l, keras.layers.Conv2D) or isinstance(l, keras.layers.DepthwiseConv2D) or not only(l.name):
            continue
        wts = l.get_weights(); w = wts[0]
        kh, kw, per_group_in, cout = w.shape
        groups = int(getattr(l, "groups", 1) or 1)
        per_group_out = cout // groups
        C, m = _patch_stats(model, l, cal)              # over every input channel: (kh, kw, cin) order
        index = np.arange(kh * kw * per_group_in * groups).reshape(kh, kw, per_group_in * groups)
        new_kernel = np.empty_like(w)
        new_bias = wts[1].astype(np.float64) if l.use_bias else None
        for g in range(groups):
            rows = index[:, :, g * per_group_in:(g + 1) * per_group_in].reshape(-1)
            cols = slice(g * per_group_out, (g + 1) * per_group_out)
            Cg, mg = C[np.ix_(rows, rows)], m[rows]
            K = w[..., cols].reshape(-1, per_group_out).astype(np.float64)
            with threadpool_limits(limits=1, user_api="blas"):
                Kq = np.stack([np.multiply(*_gptq_channel(K[:, c], Cg))
                               for c in range(K.shape[1])], 1)
            if new_bias is not None:
                new_bias[cols] = new_bias[cols] - mg @ (Kq - K)     # bias correction
            new_kernel[..., cols] = Kq.reshape(kh, kw, per_group_in, per_group_out)
        wts[0] = new_kernel.astype(np.float32)
        if new_bias is not None:
            wts[1] = new_bias.astype(np.float32)
        l.set_weights(wts)
    return model


# The fourth conv block of each stream: stage 1 reads its output through a 1x1 summary conv, and
# its delta layer reads the product of the two flattened summaries. The original's are 4 x 4
# (160 products, int8 error 0.021-0.024 y mean each: docs/INT8.md); a padding=1 member's are
# 8 x 8 (640 products), and int8 there broke the budget; both int8 recipes keep these blocks
# float for such a member (ssrconv.reference.family.wide_stage1; docs/PORTS.md, "int8"). oukohou-pytorch's tflite-int8-mixed on the 300 dev
# faces, mean / p99 age error: both int8 0.308 / 1.23 y, conv2d_8 float 0.279 / 1.20, conv2d_4
# float 0.296 / 1.09, both float 0.267 / 0.94 (budget 0.3 / 1.0).
STAGE1_BLOCKS = ("conv2d_4", "batch_normalization_4", "activation_4",
                 "conv2d_8", "batch_normalization_8", "activation_8")


def has_gender_head(model) -> bool:
    return any(l.name.endswith("pred_gender_stage1") for l in model.layers)


# Where the layers the int8 recipes single out (reference base names, after rewrite()) live in
# the fast export graph (ssrconv.graph.builder): one fused layer holds that layer of every head
# (BatchNorm folded into its conv, relu fused into it).
FAST_LAYERS = {
    **{f"{kind}_{k}": f"relu_conv{k}" for k in (1, 2, 3, 4)
       for kind in ("conv2d", "batch_normalization", "activation")},
    **{f"average_pooling2d_{k}_dw": f"relu_pool{k}_dw" for k in (1, 2, 3)},
    "conv2d_5": "tanh_conv1", "batch_normalization_5": "tanh_conv1",
    "max_pooling2d_1": "tanh_pool1", "activation_5": "tanh_act1",
    # the tanh stream's fourth block (no pool), kept float with the relu stream's for a member
    # with wide stage-1 maps (STAGE1_BLOCKS)
    "conv2d_8": "tanh_conv4", "batch_normalization_8": "tanh_conv4", "activation_8": "tanh_act4",
    # the 1x1 summary convs (stage 1 reads block 4, stage 2 block 2, stage 3 block 1) and pools
    "conv2d_9": "stage1_s", "conv2d_10": "stage1_x", "conv2d_11": "stage2_s",
    "conv2d_12": "stage2_x", "conv2d_13": "stage3_s", "conv2d_14": "stage3_x",
    "max_pooling2d_4": "stage2_s_pool", "average_pooling2d_4_dw": "stage2_x_pool_dw",
    "max_pooling2d_5": "stage3_s_pool", "average_pooling2d_5_dw": "stage3_x_pool_dw",
}
FAST_MERGE = "stagewise_merge"  # the fast graph's FusedStagewiseMerge: its V says the heads


def _merges(model) -> list:
    """The fast graph's merge layers: one for every head, or one per head
    (``Variant.merge_per_head``: ``age_stagewise_merge``, ``gender_stagewise_merge``)."""
    return [layer for layer in model.layers if base_name(layer.name) == FAST_MERGE]


def is_fast_graph(model) -> bool:
    """True for the fast export graph of :mod:`ssrconv.graph` (False: the reference's)."""
    return bool(_merges(model))


def model_heads(model) -> list[str]:
    """The heads of ``model`` in output order ("age", "gender")."""
    from ssrconv.reference.model import V_BY_TASK

    if is_fast_graph(model):
        by_v = {v: task for task, v in V_BY_TASK.items()}
        return [by_v[float(v)] for merge in _merges(model) for v in merge.V]
    if has_gender_head(model) and not any(l.name.startswith("age_") for l in model.layers):
        return ["gender"]
    return ["age", "gender"] if has_gender_head(model) else ["age"]


def channel_heads(model, layer_name: str, channels: int) -> np.ndarray:
    """The head ("age"/"gender") each output channel of ``layer_name`` belongs to. In the
    reference a layer belongs to one head (its ``age_``/``gender_`` prefix, or the model's only
    head); in the fast graph a fused layer's channels are head-major blocks."""
    heads = model_heads(model)
    for head in heads:
        if layer_name.startswith(head + "_"):  # the reference's, or a per-head fast-graph layer
            return np.full(channels, head)
    if is_fast_graph(model):
        return np.repeat(heads, channels // len(heads))
    return np.full(channels, heads[0] if len(heads) == 1 else "age")


def recipe_layers(model, base_names) -> set[str]:
    """The names of ``model``'s layers implementing the reference layers ``base_names`` (without
    the ``age_``/``gender_`` prefix): the prefixed layers of the reference, the fused layers of
    the fast graph (FAST_LAYERS)."""
    wanted = set(base_names)
    present = {layer.name for layer in model.layers}
    if is_fast_graph(model):
        missing = wanted - set(FAST_LAYERS)
        if missing:
            raise Int8RecipeError(f"int8 recipe: no fast-graph layer known for {sorted(missing)}")
        fused = {FAST_LAYERS[n] for n in wanted}
        # a fast graph with per-head convs (Variant.grouped_convs False) prefixes them by head
        return {name for name in present if name in fused or base_name(name) in fused}
    return {name for name in present if base_name(name) in wanted}


def base_name(layer_name: str) -> str:
    """The layer name without the two-head model's ``age_``/``gender_`` prefix."""
    for prefix in ("age_", "gender_"):
        if layer_name.startswith(prefix):
            return layer_name[len(prefix):]
    return layer_name

"""The int8 TFLite export of SSR-Net: int8 backbone, float SSR head, accepted by XNNPACK and
within the int8 parity budget (docs/INT8.md has the measurements behind each step).

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
 5. Quantize with every rank<=2 layer (Flatten/Dense/Multiply/SSRMerge: the SSR head, 0.01 M MACs) denylisted -> float.
    Nodes are identified by Keras LAYER NAME: each TFLite op's output tensor name carries the Keras name scopes
    ('.../<layer>_1/...'), matched against model.layers names; ops without a layer scope (the renamed outputs) are
    denylisted when all their inputs come from denylisted ops. Which layers are float is chosen by Keras output rank,
    not by name patterns. Checked afterwards: every CONV_2D / DEPTHWISE_CONV_2D int8, every FULLY_CONNECTED float.
"""
from __future__ import annotations

import re
import warnings

import numpy as np

from ssrconv.converters.tflite_flatbuffer import operators, pack, schema

ALPHA = 0.75          # CLE strength (0 = none, 1 = full range equalization)
CLE_PCT = 99.99       # percentile of |activation| used as channel range for CLE
TANH_CLIP = 4.0       # calibrated range of tanh inputs clipped to [-T, T]


# ----------------------------------------------------------------------------------------------- graph utilities
def _keras():
    import keras
    return keras


def _consumers(model):
    cons = {}
    for l in model.layers:
        for node in l._inbound_nodes:
            for t in node.input_tensors:
                cons.setdefault(t._keras_history[0].name, []).append(l.name)
    return cons


def _producer(layer):
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
    cons = _consumers(model)
    swap = {}
    for l in model.layers:
        if isinstance(l, keras.layers.Activation) and l.get_config()["activation"] == "tanh":
            c = cons.get(l.name, [])
            if len(c) == 1 and isinstance(model.get_layer(c[0]), keras.layers.MaxPooling2D):
                swap[l.name] = c[0]
    pool_to_tanh = {v: k for k, v in swap.items()}

    def clone(l):
        if isinstance(l, keras.layers.AveragePooling2D):
            assert l.padding == "valid" and tuple(l.strides) == tuple(l.pool_size)
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
def equalize(model, cal, alpha=ALPHA, pct=CLE_PCT, skip=lambda name: False):
    """Scale relu conv blocks (Conv -> BN -> relu [-> avg/DW pool]) whose consumers are all Conv2D,
    except those whose activation layer name satisfies ``skip``."""
    keras = _keras()
    cons = _consumers(model)
    plans = []
    for l in model.layers:
        if not (isinstance(l, keras.layers.Activation) and l.get_config()["activation"] == "relu"):
            continue
        if skip(l.name):
            continue
        bn = _producer(l)
        if not isinstance(bn, keras.layers.BatchNormalization):
            continue
        readers, ok = [], True
        for c in cons.get(l.name, []):
            cl = model.get_layer(c)
            if isinstance(cl, (keras.layers.AveragePooling2D, keras.layers.DepthwiseConv2D)) and not isinstance(cl, keras.layers.Conv2D) \
                    or (isinstance(cl, keras.layers.DepthwiseConv2D) and cl.name.endswith("_dw")):
                for cc in cons.get(c, []):
                    ccl = model.get_layer(cc)
                    ok &= isinstance(ccl, keras.layers.Conv2D) and not isinstance(ccl, keras.layers.DepthwiseConv2D)
                    readers.append(cc)
            elif isinstance(cl, keras.layers.Conv2D) and not isinstance(cl, keras.layers.DepthwiseConv2D):
                readers.append(c)
            else:
                ok = False
        if ok and readers:
            plans.append((l.name, bn.name, readers))
    if not plans:
        return model
    outs = keras.Model(model.inputs, [model.get_layer(a).output for a, _, _ in plans]).predict(cal, verbose=0)
    outs = outs if isinstance(outs, list) else [outs]
    for (act, bn, readers), o in zip(plans, outs):
        r = np.maximum(np.percentile(np.abs(o.reshape(-1, o.shape[-1])), pct, axis=0), 1e-6)
        s = (r.max() / r) ** alpha
        g, b, mu, var = model.get_layer(bn).get_weights()
        model.get_layer(bn).set_weights([g * s, b * s, mu, var])
        for n in readers:
            w = model.get_layer(n).get_weights(); w[0] = w[0] / s[None, None, :, None]
            model.get_layer(n).set_weights(w)
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
        p = tf.image.extract_patches(a, [1, kh, kw, 1], [1, st[0], st[1], 1], [1, 1, 1, 1], "VALID")
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


def round_kernels(model, cal):
    keras = _keras()
    for l in model.layers:
        if not isinstance(l, keras.layers.Conv2D) or isinstance(l, keras.layers.DepthwiseConv2D):
            continue
        wts = l.get_weights(); w = wts[0]
        K = w.reshape(-1, w.shape[-1]).astype(np.float64)
        C, m = _patch_stats(model, l, cal)
        Kq = np.stack([np.multiply(*_gptq_channel(K[:, c], C)) for c in range(K.shape[1])], 1)
        if l.use_bias:
            wts[1] = (wts[1] - m @ (Kq - K)).astype(np.float32)         # bias correction
        wts[0] = Kq.reshape(w.shape).astype(np.float32)
        l.set_weights(wts)
    return model


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


# Backbone layers kept in float besides the head: the first convolution block of each stream
# (conv2d_1 + its average pool, conv2d_5 + its max pool). Their 62x62x(32|16) outputs are the
# largest activations of the model, and quantizing them was the biggest single error: with every
# other convolution in int8 the age p99 is 0.92 y on XNNPACK (all int8: 1.07; budget 1.0). In
# float they cost no time: XNNPACK's int8 kernel pads the 3 input channels per tap to 8 and runs
# these two layers no faster than float32 (docs/INT8.md has the per-layer timings).
FLOAT_BACKBONE = (
    ["conv2d_1", "batch_normalization_1", "activation_1", "average_pooling2d_1_dw",
     "conv2d_5", "batch_normalization_5", "activation_5", "max_pooling2d_1"])


def float_backbone_layers(model) -> list[str]:
    """The FLOAT_BACKBONE layers of ``model`` (with their ``age_``/``gender_`` prefixes)."""
    wanted = set(FLOAT_BACKBONE)
    names = []
    for layer in model.layers:
        base = layer.name.split("_", 1)[1] if layer.name.startswith(("age_", "gender_")) else layer.name
        if base in wanted:
            names.append(layer.name)
    return names


def m_has_gender_head(model) -> bool:
    return any(l.name.endswith("pred_gender_stage1") for l in model.layers)


def _is_gender_layer(name: str) -> bool:
    """Layers of the gender head: prefixed ``gender_`` in the two-head model; in a gender-only
    model every layer. Equalizing the gender head's relu stream flips 8 of 300 dev faces'
    P(male) > 0.5 (97.3% agreement, max diff 1.0); without it: 100%, max diff 0.12."""
    return name.startswith("gender_") or not name.startswith("age_")


# ------------------------------------------------------------------------------------------------------ the recipe
def convert_int8(model, calibration_inputs: np.ndarray, dynamic_batch: bool = True, input_type: str = "float32",
                 alpha: float = ALPHA, round_weights: bool = True, tanh_clip: float | None = TANH_CLIP,
                 mse_clip: bool = True, float_head: bool = True, extra_float_layers=(), return_info: bool = False, float_backbone: bool = True):
    """Full-int8 TFLite (int8 backbone, float SSR head) of an ssrconv reference Keras model -> flatbuffer bytes."""
    from ssrconv._imports import tensorflow

    tf = tensorflow()
    from tensorflow.lite.python import convert as tfl_convert
    keras = _keras()
    cal = np.asarray(calibration_inputs, np.float32)

    m = rewrite(model)                                   # exact clone: DW pools, pool->tanh, static flatten
    if alpha:
        equalize(m, cal, alpha, skip=_is_gender_layer if m_has_gender_head(m) else (lambda n: False))
    if round_weights:
        round_kernels(m, cal)
    if not dynamic_batch:
        x = keras.Input(batch_shape=(1, *m.input_shape[1:]), name=m.inputs[0].name)
        m = keras.Model(x, m(x))
    inner = m if dynamic_batch else m.layers[-1]
    layer_names = [l.name for l in inner.layers]

    conv = tf.lite.TFLiteConverter.from_keras_model(m)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([cal[i:i + 1]] for i in range(len(cal)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.experimental_mlir_quantizer = True
    conv._experimental_calibrate_only = True           # what QuantizationDebugger does: float model + min/max stats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calibrated = conv.convert()

    # ---- step 4: edit calibrated ranges
    g, sg, ops = operators(calibrated)
    ol = _op_layers(sg, ops, layer_names)
    def tensor_of(layer):                              # output tensor of the last op implementing `layer`
        ks = [k for k, c in enumerate(ol) if layer in c]
        return sg.tensors[ops[ks[-1]][1].outputs[0]] if ks else None
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
            is_pool = isinstance(l, keras.layers.Conv2D) and l.name.endswith("_dw")
            if (is_relu_act or is_relu_conv or is_pool) and len(l.output.shape) == 4:
                relu_like.append(l.name)
        acts = keras.Model(inner.inputs, [inner.get_layer(n).output for n in relu_like]).predict(cal, verbose=0)
        for n, a in zip(relu_like, acts):
            t = tensor_of(n)
            if t is None or t.quantization is None or t.quantization.min is None or float(t.quantization.min[0]) < 0:
                continue
            hi = _mse_clip(a); t.quantization.max = np.array([min(hi, float(t.quantization.max[0]))], np.float32)
            edits[n] = hi
    calibrated = pack(g)

    # ---- step 5: float head by Keras layer, quantize
    g, sg, ops = operators(calibrated)
    ol = _op_layers(sg, ops, layer_names)
    float_layers = set(extra_float_layers)
    if float_backbone:
        float_layers |= set(float_backbone_layers(inner))
    if float_head:
        float_layers |= {l.name for l in inner.layers if not isinstance(l, keras.layers.InputLayer) and len(l.output.shape) <= 2}
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
    unmatched = {n for n in float_layers - matched if not isinstance(inner.get_layer(n), (keras.layers.Dropout, keras.layers.Identity))}
    assert not unmatched, f"float layers without a TFLite op: {sorted(unmatched)}"
    deny_nodes = [sg.tensors[ops[k][1].outputs[0]].name.decode() for k in sorted(denied)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tfl = tfl_convert.mlir_quantize(calibrated, fully_quantize=False,
                                        input_data_type={"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[input_type],
                                        output_data_type=tf.float32,
                                        denylisted_nodes=deny_nodes)
    # ---- checks
    fb = schema()
    g2, sg2, ops2 = operators(tfl)
    for name, op in ops2:
        dt = sg2.tensors[op.outputs[0]].type
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D") and not float_layers - {l.name for l in inner.layers if len(l.output.shape) <= 2}:
            assert dt == fb.TensorType.INT8, (name, sg2.tensors[op.outputs[0]].name)
        if name == "FULLY_CONNECTED" and float_head:
            assert dt == fb.TensorType.FLOAT32, (name, sg2.tensors[op.outputs[0]].name)
    if return_info:
        return tfl, {"float_layers": sorted(float_layers), "deny_nodes": len(deny_nodes), "mse_clip": edits}
    return tfl


def _ops_name(ops, op):
    for n, o in ops:
        if o is op:
            return n

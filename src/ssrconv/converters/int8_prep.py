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


def consumers(model):
    cons = {}
    for l in model.layers:
        for node in l._inbound_nodes:
            for t in node.input_tensors:
                cons.setdefault(t._keras_history[0].name, []).append(l.name)
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
def equalize(model, cal, alpha=ALPHA, pct=CLE_PCT, skip=lambda name: False):
    """Scale relu conv blocks (Conv -> BN -> relu [-> avg/DW pool]) whose consumers are all Conv2D,
    except those whose activation layer name satisfies ``skip``."""
    keras = _keras()
    cons = consumers(model)
    plans = []
    for l in model.layers:
        if not (isinstance(l, keras.layers.Activation) and l.get_config()["activation"] == "relu"):
            continue
        if skip(l.name):
            continue
        bn = producer(l)
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


def round_kernels(model, cal, only=lambda name: True):
    """GPTQ rounding with bias correction of the Conv2D kernels whose layer name satisfies
    ``only`` (those that will run in int8: rounding a kernel that stays float only adds error),
    onto the symmetric per-channel int8 grid ``[-127, 127] * max|w| / 127``."""
    keras = _keras()
    for l in model.layers:
        if not isinstance(l, keras.layers.Conv2D) or isinstance(l, keras.layers.DepthwiseConv2D) or not only(l.name):
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


def has_gender_head(model) -> bool:
    return any(l.name.endswith("pred_gender_stage1") for l in model.layers)


def is_gender_layer(name: str) -> bool:
    """Layers of the gender head: prefixed ``gender_`` in the two-head model; in a gender-only
    model every layer. Equalizing the gender head's relu stream flips 8 of 300 dev faces'
    P(male) > 0.5 (97.3% agreement, max diff 1.0); without it: 100%, max diff 0.12."""
    return name.startswith("gender_") or not name.startswith("age_")




def base_name(layer_name: str) -> str:
    """The layer name without the two-head model's ``age_``/``gender_`` prefix."""
    for prefix in ("age_", "gender_"):
        if layer_name.startswith(prefix):
            return layer_name[len(prefix):]
    return layer_name

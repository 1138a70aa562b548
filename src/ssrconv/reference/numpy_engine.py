"""SSR-Net in numpy: the reference without TensorFlow.

The same graph as :mod:`ssrconv.reference.model` (two streams of valid 3x3 conv blocks,
1x1-conv summaries, three stage heads, the soft stagewise regression merge of
:class:`~ssrconv.reference.model.SSRMerge`), computed with numpy from the same ``.h5`` files,
matched by layer name and shape-checked like :func:`ssrconv.reference.weights.load_into`.
Only numpy and h5py are imported, so a runtime-only install (no ``ssrconv[export]``) can still
check an artifact's parity against the published weights.

Speed: a 3x3 conv is one im2col copy and one GEMM; BatchNorm is folded into the conv it follows
(in float64, before casting); the first convs of every stream and head read the same input, so
they share one im2col and one GEMM. Faces run in chunks so the im2col buffer stays small.
"""

from __future__ import annotations

import os

import numpy as np

from ssrconv.errors import SsrconvError, WeightsError
from ssrconv.runtimes.base import Runtime
from ssrconv.targets import REFERENCE_ON_ENGINE

BN_EPSILON = 1e-3  # = ssrconv.reference.model.BN_EPSILON (that module imports Keras)
STAGE_NUM = (3, 3, 3)
LAMBDA_LOCAL = 1.0
LAMBDA_D = 1.0
V_BY_TASK = {"age": 101.0, "gender": 1.0}
OUTPUT_NAMES = {"age": ("age",), "gender": ("p_male",), "age-gender": ("age", "p_male")}
DTYPES = {"numpy-float32": np.float32, "numpy-float64": np.float64}
CHUNK = 16  # faces per forward pass: the first conv's output is ~CHUNK * 1.5 MB (float32)

# Every weighted layer of one head (original names; the gender model's stage heads are
# pred_gender_stage*), with the shapes the rebuilt model gives them.
_CONVS = {  # name: (kernel size, in channels, filters)
    **{f"conv2d_{i}": (3, 3 if i == 1 else 32, 32) for i in (1, 2, 3, 4)},
    **{f"conv2d_{i}": (3, 3 if i == 5 else 16, 16) for i in (5, 6, 7, 8)},
    "conv2d_9": (1, 16, 10), "conv2d_10": (1, 32, 10), "conv2d_11": (1, 16, 10),
    "conv2d_12": (1, 32, 10), "conv2d_13": (1, 16, 10), "conv2d_14": (1, 32, 10),
}
# Output height (= width) of each conv on a 64x64 input: valid 3x3 convs, 2x2 pools between.
_CONV_OUT = {"conv2d_1": 62, "conv2d_2": 29, "conv2d_3": 12, "conv2d_4": 4,
             "conv2d_5": 62, "conv2d_6": 29, "conv2d_7": 12, "conv2d_8": 4,
             "conv2d_9": 4, "conv2d_10": 4, "conv2d_11": 14, "conv2d_12": 14,
             "conv2d_13": 31, "conv2d_14": 31}
_BN_OF_CONV = {f"conv2d_{i}": f"batch_normalization_{i}" for i in range(1, 9)}
_FLAT = 160, 90, 90  # flattened summary width per stage (4x4x10, 3x3x10, 3x3x10)


def _dense_shapes(task: str) -> dict[str, tuple[int, int]]:
    stage = "pred_age_stage{}" if task == "age" else "pred_gender_stage{}"
    shapes = {}
    for k, (s, x, fuse) in enumerate((("dense_1", "dense_2", "dense_3"),
                                      ("dense_4", "dense_5", "dense_6"),
                                      ("dense_7", "dense_8", "dense_9")), start=1):
        shapes[s] = shapes[x] = (_FLAT[k - 1], 3)
        shapes[fuse] = (3, 6)
        shapes[stage.format(k)] = (6, 3)
        shapes[f"delta_s{k}"] = (_FLAT[k - 1], 1)
        shapes[f"local_delta_stage{k}"] = (6, 3)
    return shapes


def _expected(task: str) -> dict[str, dict[str, tuple[int, ...]]]:
    """{layer: {variable: shape}} of one head, in the rebuilt model's names."""
    layers = {}
    for name, (k, c_in, f) in _CONVS.items():
        layers[name] = {"kernel": (k, k, c_in, f), "bias": (f,)}
    for conv, bn in _BN_OF_CONV.items():
        f = _CONVS[conv][2]
        layers[bn] = {v: (f,) for v in ("gamma", "beta", "moving_mean", "moving_variance")}
    for name, (c_in, c_out) in _dense_shapes(task).items():
        layers[name] = {"kernel": (c_in, c_out), "bias": (c_out,)}
    return layers


def count_macs(task: str = "age") -> int:
    """Multiply-adds of one head's forward pass for one face (conv and dense layers), as
    :func:`ssrconv.reference.model.count_macs` counts them on the Keras model."""
    total = 0
    for name, (k, c_in, f) in _CONVS.items():
        total += _CONV_OUT[name] ** 2 * k * k * c_in * f
    return total + sum(c_in * c_out for c_in, c_out in _dense_shapes(task).values())


def head_arrays(weights, task: str) -> dict[str, dict[str, np.ndarray]]:
    """The arrays of an :class:`~ssrconv.reference.weights.H5Weights` in the rebuilt model's
    layer names, every layer present with its expected shape; WeightsError names the first
    problem (the same checks :func:`~ssrconv.reference.weights.load_into` makes on Keras)."""
    from ssrconv.reference.weights import check_task, model_layer_name

    check_task(weights, task)
    expected = _expected(task)
    found: dict[str, dict[str, np.ndarray]] = {}
    for h5_layer, arrays in weights.layers.items():
        if not arrays:
            continue
        name = model_layer_name(h5_layer, task)
        if name not in expected:
            raise WeightsError(f"{weights.path}: layer {h5_layer} has weights but the SSR-Net "
                               f"{task} model has no layer {name}; this is not an SSR-Net "
                               "(3,3,3) weights file")
        if set(arrays) != set(expected[name]):
            raise WeightsError(f"{weights.path}: layer {h5_layer} holds {sorted(arrays)}, the model "
                               f"expects {sorted(expected[name])}")
        for vname, array in arrays.items():
            if tuple(array.shape) != expected[name][vname]:
                raise WeightsError(f"{weights.path}: {h5_layer}/{vname} has shape {array.shape}, "
                                   f"the model expects {expected[name][vname]}")
            if not np.all(np.isfinite(array)):
                raise WeightsError(f"{weights.path}: {h5_layer}/{vname} contains NaN or Inf")
        found[name] = {v: np.asarray(a, np.float64) for v, a in arrays.items()}
    missing = sorted(set(expected) - set(found))
    if missing:
        raise WeightsError(f"{weights.path}: no weights for model layers {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''}; the file is incomplete")
    return found


class _Head:
    """One SSR-Net head's folded parameters in the engine's dtype."""

    def __init__(self, arrays: dict[str, dict[str, np.ndarray]], task: str, dtype):
        self.task = task
        self.V = V_BY_TASK[task]
        self.stage = "pred_age_stage{}" if task == "age" else "pred_gender_stage{}"
        self.conv = {}
        for name in _CONVS:
            kernel, bias = arrays[name]["kernel"], arrays[name]["bias"]
            if name in _BN_OF_CONV:
                bn = arrays[_BN_OF_CONV[name]]
                scale = bn["gamma"] / np.sqrt(bn["moving_variance"] + BN_EPSILON)
                kernel = kernel * scale
                bias = (bias - bn["moving_mean"]) * scale + bn["beta"]
            self.conv[name] = (kernel.reshape(-1, kernel.shape[-1]).astype(dtype),
                               bias.astype(dtype))
        self.dense = {name: (arrays[name]["kernel"].astype(dtype), arrays[name]["bias"].astype(dtype))
                      for name in _dense_shapes(task)}


def _im2col3(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, H-2, W-2, 9C), ordered (kh, kw, c) like a Keras kernel's reshape."""
    n, h, w, c = x.shape
    oh, ow = h - 2, w - 2
    cols = np.empty((n, oh, ow, 3, 3, c), x.dtype)
    for i in range(3):
        for j in range(3):
            cols[:, :, :, i, j, :] = x[:, i:i + oh, j:j + ow, :]
    return cols.reshape(n, oh, ow, 9 * c)


def _conv3(x, params):
    kernel, bias = params
    out = _im2col3(x) @ kernel
    out += bias
    return out


def _conv1_relu(x, params):
    kernel, bias = params
    out = x @ kernel
    out += bias
    return np.maximum(out, 0, out=out)


def _reduce_windows(x, size: int, ufunc) -> np.ndarray:
    """``ufunc`` (np.maximum, np.add) folded in place over the size*size strided views of a
    valid, stride == size pooling (trailing rows/columns dropped, as Keras does)."""
    oh, ow = x.shape[1] // size, x.shape[2] // size
    out = None
    for i in range(size):
        for j in range(size):
            view = x[:, i:oh * size:size, j:ow * size:size, :]
            out = view.copy() if out is None else ufunc(out, view, out=out)
    return out


def _max_pool(x, size: int) -> np.ndarray:
    """Valid max pooling with stride == size (Keras' default): trailing rows/columns dropped.
    An elementwise maximum over the size*size strided views (a reduce over reshaped window
    axes was the engine's slowest step)."""
    return _reduce_windows(x, size, np.maximum)


def _avg_pool(x, size: int) -> np.ndarray:
    """Valid average pooling with stride == size, as a sum of strided views times 1/size^2."""
    out = _reduce_windows(x, size, np.add)
    out *= x.dtype.type(1.0 / (size * size))
    return out


def _dense(x, params, activation):
    kernel, bias = params
    y = x @ kernel + bias
    return np.maximum(y, 0) if activation == "relu" else np.tanh(y)


def _relu(x):
    return np.maximum(x, 0, out=x)


def _forward_head(head: _Head, first_relu: np.ndarray, first_tanh: np.ndarray):
    """The rest of one head after its first convs (BN folded, activation not yet applied).
    Returns (output (N,), {layer: stage tensor})."""
    avg, mx = _avg_pool, _max_pool
    # Stream 1: relu + average pooling.
    x_layer1 = avg(_relu(first_relu), 2)
    x_layer2 = avg(_relu(_conv3(x_layer1, head.conv["conv2d_2"])), 2)
    x_layer3 = avg(_relu(_conv3(x_layer2, head.conv["conv2d_3"])), 2)
    x1 = _relu(_conv3(x_layer3, head.conv["conv2d_4"]))
    # Stream 2: tanh + max pooling. tanh is monotonic, so max(tanh(t)) == tanh(max(t)) exactly:
    # pooling first takes a quarter of the tanh evaluations.
    s_layer1 = np.tanh(mx(first_tanh, 2))
    s_layer2 = np.tanh(mx(_conv3(s_layer1, head.conv["conv2d_6"]), 2))
    s_layer3 = np.tanh(mx(_conv3(s_layer2, head.conv["conv2d_7"]), 2))
    s = np.tanh(_conv3(s_layer3, head.conv["conv2d_8"]))
    n = s.shape[0]
    summaries = [
        (_conv1_relu(s, head.conv["conv2d_9"]), _conv1_relu(x1, head.conv["conv2d_10"])),
        (mx(_conv1_relu(s_layer2, head.conv["conv2d_11"]), 4),
         avg(_conv1_relu(x_layer2, head.conv["conv2d_12"]), 4)),
        (mx(_conv1_relu(s_layer1, head.conv["conv2d_13"]), 8),
         avg(_conv1_relu(x_layer1, head.conv["conv2d_14"]), 8)),
    ]
    dense_ids = (("dense_1", "dense_2", "dense_3"), ("dense_4", "dense_5", "dense_6"),
                 ("dense_7", "dense_8", "dense_9"))
    stages = {}
    probs, deltas, locals_ = [], [], []
    for k, ((st, xt), (ds, dx, fuse)) in enumerate(zip(summaries, dense_ids), start=1):
        flat_s, flat_x = st.reshape(n, -1), xt.reshape(n, -1)
        feat = _dense(flat_s, head.dense[ds], "relu") * _dense(flat_x, head.dense[dx], "relu")
        feat = _dense(feat, head.dense[fuse], "relu")
        prob = _dense(feat, head.dense[head.stage.format(k)], "relu")
        delta = _dense(flat_s * flat_x, head.dense[f"delta_s{k}"], "tanh")
        local = _dense(feat, head.dense[f"local_delta_stage{k}"], "tanh")
        stages[head.stage.format(k)] = prob
        stages[f"delta_s{k}"] = delta
        stages[f"local_delta_stage{k}"] = local
        probs.append(prob)
        deltas.append(delta)
        locals_.append(local)
    return ssr_merge(probs, deltas, locals_, head.V)[:, 0], stages


def ssr_merge(probs, deltas, locals_, V: float, stage_num=STAGE_NUM, lambda_local=LAMBDA_LOCAL,
              lambda_d=LAMBDA_D) -> np.ndarray:
    """The soft stagewise regression merge, term for term as ``SSRMerge.call``:
    V * sum_k sum_i p_k[i] (i + l_k[i]) / prod_{j<=k} s_j (1 + d_j); returns (N, 1)."""
    total = None
    denominator = None
    for k, s in enumerate(stage_num):
        index = np.arange(s, dtype=probs[k].dtype)
        stage_sum = np.sum((index + lambda_local * locals_[k]) * probs[k], axis=-1, keepdims=True)
        width = s * (1.0 + lambda_d * deltas[k])
        denominator = width if denominator is None else denominator * width
        term = stage_sum / denominator
        total = term if total is None else total + term
    return total * V


class NumpyReference(Runtime):
    """The reference SSR-Net (published weights, rebuilt graph) computed with numpy.

    ``task`` "age", "gender" or "age-gender"; weights are registry names or ``.h5`` paths
    (default age-wiki, gender-wiki), resolved and sha256-checked by
    :func:`ssrconv.assets.resolve`. ``engine`` "numpy-float32" or "numpy-float64" is
    the arithmetic of the whole forward pass; outputs are float32 like every runtime's.
    """

    backend = REFERENCE_ON_ENGINE

    def __init__(self, task: str = "age-gender", age_weights=None, gender_weights=None,
                 engine: str = "numpy-float32"):
        from ssrconv.reference.keras_reference import TASKS
        from ssrconv.assets import DEFAULT_AGE_WEIGHTS, DEFAULT_GENDER_WEIGHTS, resolve
        from ssrconv.reference.weights import read_h5_weights

        if task not in TASKS:
            raise SsrconvError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
        if engine not in DTYPES:
            raise SsrconvError(f"unknown numpy reference engine {engine!r}: choose "
                               f"{' or '.join(DTYPES)}")
        self.engine = engine
        self.dtype = DTYPES[engine]
        self.task = task
        self.heads = OUTPUT_NAMES[task]
        tasks = {"age": ["age"], "gender": ["gender"], "age-gender": ["age", "gender"]}[task]
        chosen = {"age": age_weights or DEFAULT_AGE_WEIGHTS,
                  "gender": gender_weights or DEFAULT_GENDER_WEIGHTS}
        self.weights = {t: resolve(chosen[t]) for t in tasks}  # head task -> ResolvedAsset
        arrays = {t: head_arrays(read_h5_weights(self.weights[t].path), t) for t in tasks}
        # Stored parameters per head (weights + BN statistics), as in the original .h5.
        self.params = {t: sum(a.size for layer in arrays[t].values() for a in layer.values())
                       for t in tasks}
        self._heads = [_Head(arrays[t], t, self.dtype) for t in tasks]
        # Layer-name prefixes as in the Keras model: only the two-head model has them.
        self._prefix = {t: (f"{t}_" if task == "age-gender" else "") for t in tasks}
        kernels = [h.conv[c] for h in self._heads for c in ("conv2d_1", "conv2d_5")]
        self._first_kernel = np.concatenate([k for k, _ in kernels], axis=1)
        self._first_bias = np.concatenate([b for _, b in kernels])
        self._first_split = np.cumsum([k.shape[1] for k, _ in kernels])[:-1]

    def _forward(self, batch: np.ndarray):
        x = np.asarray(batch, self.dtype)
        first = _im2col3(x) @ self._first_kernel
        first += self._first_bias
        parts = np.split(first, self._first_split, axis=-1)
        results = []
        for i, head in enumerate(self._heads):
            results.append(_forward_head(head, parts[2 * i], parts[2 * i + 1]))
        return results

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_batch(batch)
        parts = {h: [] for h in self.heads}
        for start in range(0, len(batch), CHUNK):
            for head, (out, _) in zip(self.heads, self._forward(batch[start:start + CHUNK])):
                parts[head].append(out.astype(np.float32))
        return {h: (np.concatenate(v) if v else np.empty(0, np.float32)) for h, v in parts.items()}

    def stage_outputs(self, batch: np.ndarray, specs) -> dict[str, np.ndarray]:
        """The stage tensors named by ``specs`` (``spec.layer`` as in the Keras model: with the
        ``age_``/``gender_`` prefix for the two-head reference, without for a single head)."""
        from ssrconv.stages import StagesUnavailable

        names = {}
        for t, head in zip(self._prefix, self._heads):
            layers = [head.stage.format(k) for k in (1, 2, 3)]
            layers += [f"delta_s{k}" for k in (1, 2, 3)] + [f"local_delta_stage{k}" for k in (1, 2, 3)]
            for layer in layers:
                names[self._prefix[t] + layer] = (t, layer)
        for spec in specs:
            if spec.layer not in names:
                raise StagesUnavailable(f"{self.engine} reference has no stage layer {spec.layer}")
        batch = self.check_batch(batch)
        collected: dict[str, list[np.ndarray]] = {s.key: [] for s in specs}
        tasks = list(self._prefix)
        for start in range(0, len(batch), CHUNK):
            results = self._forward(batch[start:start + CHUNK])
            for spec in specs:
                t, layer = names[spec.layer]
                collected[spec.key].append(results[tasks.index(t)][1][layer].astype(np.float32))
        return {key: np.concatenate(v) for key, v in collected.items()}

    def describe(self) -> dict:
        return {**super().describe(),
                "weights": {t: str(a.path) for t, a in self.weights.items()}}


def load_numpy_reference(task: str = "age-gender", age_weights: str | os.PathLike | None = None,
                         gender_weights: str | os.PathLike | None = None,
                         engine: str = "numpy-float32") -> NumpyReference:
    """The numpy reference runtime (see :class:`NumpyReference`)."""
    return NumpyReference(task, age_weights, gender_weights, engine=engine)


__all__ = ["NumpyReference", "count_macs", "head_arrays", "load_numpy_reference", "ssr_merge"]

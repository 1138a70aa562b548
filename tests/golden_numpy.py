"""An independent float64 numpy forward pass of the ORIGINAL SSR-Net graph.

Driven only by ``ssrnet_age_original_keras2.json`` (read as data: layer classes, configs and
inbound nodes; the Lambda's bytecode is never touched, its ``arguments`` give the merge
constants) and by the raw arrays of an ``.h5`` read with h5py. No Keras, no ssrconv model code:
if the rebuild is wired differently from the original, this disagrees with it.
"""

from __future__ import annotations

import json

import h5py
import numpy as np


def _h5_arrays(path):
    out = {}
    with h5py.File(path, "r") as f:
        for raw in f.attrs["layer_names"]:
            name = raw.decode() if isinstance(raw, bytes) else raw
            g = f[name]
            arrays = {}
            for raw_w in g.attrs.get("weight_names", []):
                w = raw_w.decode() if isinstance(raw_w, bytes) else raw_w
                arrays[w.split("/")[-1].split(":")[0]] = np.asarray(g[w][()], dtype=np.float64)
            out[name] = arrays
    return out


def _conv_valid(x, kernel, bias, stride):
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    cols = np.empty((n, oh, ow, kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
    return cols.reshape(n, oh, ow, kh * kw * c) @ kernel.reshape(kh * kw * c, f) + bias


def _pool(x, size, stride, reducer):
    n, h, w, c = x.shape
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    windows = np.stack([x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
                        for i in range(size) for j in range(size)], axis=0)
    return reducer(windows, axis=0)


_ACT = {"linear": lambda x: x, "relu": lambda x: np.maximum(x, 0.0), "tanh": np.tanh}


def _merge(xs, s1, s2, s3, lambda_local, lambda_d, V):
    """The original merge_age, transcribed from the paper's code (stage loops kept as loops)."""
    p1, p2, p3, d1, d2, d3, l1, l2, l3 = xs
    a = np.zeros(p1.shape[0])
    b = np.zeros(p1.shape[0])
    c = np.zeros(p1.shape[0])
    for i in range(s1):
        a = a + (i + lambda_local * l1[:, i]) * p1[:, i]
    a = a[:, None] / (s1 * (1 + lambda_d * d1))
    for j in range(s2):
        b = b + (j + lambda_local * l2[:, j]) * p2[:, j]
    b = b[:, None] / (s1 * (1 + lambda_d * d1)) / (s2 * (1 + lambda_d * d2))
    for k in range(s3):
        c = c + (k + lambda_local * l3[:, k]) * p3[:, k]
    c = c[:, None] / (s1 * (1 + lambda_d * d1)) / (s2 * (1 + lambda_d * d2)) / (s3 * (1 + lambda_d * d3))
    return (a + b + c) * V


def forward(config_path, h5_path, batch, V, rename=None, return_all=False):
    """Run the original graph on ``batch`` (N x 64 x 64 x 3, BGR 0..255) in float64.

    ``rename`` maps JSON layer names to ``.h5`` layer names (the gender files call the stage
    heads ``pred_stage*``). Returns the output (N,) or, with ``return_all``, every layer's value.
    """
    rename = rename or {}
    config = json.load(open(config_path))["config"]
    weights = _h5_arrays(h5_path)
    values = {}
    for layer in config["layers"]:
        name, cls, cfg = layer["name"], layer["class_name"], layer["config"]
        inbound = [node[0] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        xs = [values[i] for i in inbound]
        w = weights.get(rename.get(name, name), {})
        if cls == "InputLayer":
            y = np.asarray(batch, dtype=np.float64)
        elif cls == "Conv2D":
            assert cfg["padding"] == "valid" and cfg["strides"][0] == cfg["strides"][1]
            y = _ACT[cfg["activation"]](_conv_valid(xs[0], w["kernel"], w["bias"], cfg["strides"][0]))
        elif cls == "BatchNormalization":
            y = (xs[0] - w["moving_mean"]) / np.sqrt(w["moving_variance"] + cfg["epsilon"])
            y = y * w["gamma"] + w["beta"]
        elif cls == "Activation":
            y = _ACT[cfg["activation"]](xs[0])
        elif cls == "MaxPooling2D":
            y = _pool(xs[0], cfg["pool_size"][0], cfg["strides"][0], np.max)
        elif cls == "AveragePooling2D":
            y = _pool(xs[0], cfg["pool_size"][0], cfg["strides"][0], np.mean)
        elif cls == "Flatten":
            y = xs[0].reshape(xs[0].shape[0], -1)
        elif cls == "Dropout":
            y = xs[0]
        elif cls == "Dense":
            y = _ACT[cfg["activation"]](xs[0] @ w["kernel"] + w["bias"])
        elif cls == "Multiply":
            y = xs[0] * xs[1]
        elif cls == "Lambda":
            args = cfg["arguments"]
            y = _merge(xs, args["s1"], args["s2"], args["s3"], args["lambda_local"],
                       args["lambda_d"], V)
        else:
            raise NotImplementedError(cls)
        values[name] = y
    out = values[config["output_layers"][0][0]][:, 0]
    return (out, values) if return_all else out

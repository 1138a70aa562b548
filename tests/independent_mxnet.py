"""An independent float64 numpy interpreter of an MXNet ``-symbol.json`` over its ``.params``.

It runs the port's own graph, node by node as the symbol lists them (NCHW, MXNet's op semantics:
Convolution, BatchNorm with moving statistics, Pooling with the 'valid' convention, Flatten,
FullyConnected, scalar and elementwise arithmetic, sum), with the deploy graph's extra inputs
``stage_num0..2`` fed the stage indices 0..s-1 as the port's own test script feeds them. Nothing
of ssrconv's graph code is used: only the file readers (``read_params``, ``read_symbol``), which
read bytes. If ssrconv's re-layout of the port (names, transposes, flatten order, missing ReLU,
epsilon, normalisation) is wrong anywhere, this disagrees with the rebuilt member.
"""

from __future__ import annotations

import ast

import numpy as np

from ssrconv.reference.mxnet_params import read_params, read_symbol


def _tuple(text, default):
    return tuple(int(v) for v in ast.literal_eval(text)) if text else default


def _conv(x, w, b, attrs):
    stride = _tuple(attrs.get("stride"), (1, 1))
    pad = _tuple(attrs.get("pad"), (0, 0))
    if any(pad):
        x = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride[0] + 1, (wd - kw) // stride[1] + 1
    out = np.zeros((n, f, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i:i + stride[0] * oh:stride[0], j:j + stride[1] * ow:stride[1]]
            out += np.einsum("nchw,fc->nfhw", patch, w[:, :, i, j])
    if b is not None:
        out += b[None, :, None, None]
    return out


def _pool(x, attrs):
    k = _tuple(attrs.get("kernel"), None)
    s = _tuple(attrs.get("stride"), k)
    if attrs.get("pooling_convention", "valid") != "valid" or any(_tuple(attrs.get("pad"), (0, 0))):
        raise NotImplementedError("only valid, unpadded pooling")
    n, c, h, w = x.shape
    oh, ow = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1
    windows = np.stack([x[:, :, i:i + s[0] * oh:s[0], j:j + s[1] * ow:s[1]]
                        for i in range(k[0]) for j in range(k[1])])
    return windows.max(0) if attrs["pool_type"] == "max" else windows.mean(0)


def run_symbol(symbol_path, params_path, faces_network_input: np.ndarray) -> np.ndarray:
    """The symbol's output on ``faces_network_input`` (N x 3 x 64 x 64, the values MXNet's
    ``data`` receives: RGB 0..255 for this port), float64, shape (N,)."""
    symbol = read_symbol(symbol_path)
    params = {k: v.astype(np.float64) for k, v in read_params(params_path).items()}
    values: list = [None] * len(symbol.nodes)
    for i, node in enumerate(symbol.nodes):
        op, a = node["op"], node["attrs"]
        ins = [values[j] for j in node["inputs"]]
        if op == "null":
            if node["name"] == "data":
                out = np.asarray(faces_network_input, np.float64)
            elif node["name"].startswith("stage_num"):
                out = None  # filled by its consumer's width (broadcast_add)
            else:
                out = params.get(node["name"])
        elif op == "_minus_scalar":
            out = ins[0] - float(a["scalar"])
        elif op == "_mul_scalar":
            out = ins[0] * float(a["scalar"])
        elif op == "_plus_scalar":
            out = ins[0] + float(a["scalar"])
        elif op == "_div_scalar":
            out = ins[0] / float(a["scalar"])
        elif op == "Convolution":
            bias = ins[2] if len(ins) > 2 and a.get("no_bias", "False") != "True" else None
            out = _conv(ins[0], ins[1], bias, a)
        elif op == "BatchNorm":
            x, gamma, beta, mean, var = ins
            if a.get("fix_gamma", "True") == "True":
                gamma = np.ones_like(gamma)
            eps = float(a.get("eps", "1e-3"))
            scale = gamma / np.sqrt(var + eps)
            out = (x - mean[None, :, None, None]) * scale[None, :, None, None] \
                + beta[None, :, None, None]
        elif op == "Activation":
            out = {"relu": lambda t: np.maximum(t, 0), "tanh": np.tanh}[a["act_type"]](ins[0])
        elif op == "Pooling":
            out = _pool(ins[0], a)
        elif op == "Flatten":
            out = ins[0].reshape(len(ins[0]), -1)
        elif op == "Dropout":
            out = ins[0]
        elif op == "FullyConnected":
            x = ins[0].reshape(len(ins[0]), -1)
            out = x @ ins[1].T + (ins[2] if len(ins) > 2 else 0)
        elif op == "elemwise_mul":
            out = ins[0] * ins[1]
        elif op == "elemwise_add":
            out = ins[0] + ins[1]
        elif op == "elemwise_div":
            out = ins[0] / ins[1]
        elif op == "broadcast_add":
            index, other = ins
            if index is None:  # stage_numK: the indices 0..s-1, as the port's test feeds them
                index = np.arange(other.shape[1], dtype=np.float64)[None, :]
            out = index + other
        elif op == "sum":
            out = ins[0].sum(axis=int(a["axis"]), keepdims=a.get("keepdims") == "True")
        else:
            raise NotImplementedError(f"MXNet op {op} ({node['name']})")
        values[i] = out
    return values[symbol.heads[0]][:, 0]


def mxnet_port_outputs(symbol_path, params_path, faces_bgr: np.ndarray) -> np.ndarray:
    """The port on ssrconv's input (N x 64 x 64 x 3 BGR 0..255): RGB, NCHW, as its test script
    feeds ``data`` (``nimg[:, :, ::-1]`` then ``transpose(2, 0, 1)``)."""
    x = np.asarray(faces_bgr, np.float64)[..., ::-1].transpose(0, 3, 1, 2)
    return run_symbol(symbol_path, params_path, x)

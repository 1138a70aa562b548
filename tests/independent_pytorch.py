"""An independent float64 numpy evaluation of the oukohou/SSR_Net_Pytorch architecture.

Written from the port's module (``SSR_models/SSR_Net_model.py`` at 222d302d) and its inference
script, in the port's own terms: NCHW tensors, its state_dict names and PyTorch layouts
(conv (O, I, kh, kw), Linear (out, in)), padding=1 3x3 convs, BatchNorm2d eps 1e-5, ``view``
(NCHW) flattening, and its input: ``cv2.imread`` BGR / 255 normalised by the ImageNet mean/std
in that channel order. Nothing of ssrconv's graph code is used (only the pickle reader, which
reads bytes); if ssrconv's re-layout of the port is wrong anywhere, this disagrees with it.
Where torch is installed, tests/test_ports.py also runs the checkpoint in PyTorch itself.
"""

from __future__ import annotations

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def _conv(x, sd, name, pad):
    w, b = sd[f"{name}.weight"], sd[f"{name}.bias"]
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    out = np.zeros((n, f, oh, ow))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,fc->nfhw", x[:, :, i:i + oh, j:j + ow], w[:, :, i, j])
    return out + b[None, :, None, None]


def _bn(x, sd, name):
    scale = sd[f"{name}.weight"] / np.sqrt(sd[f"{name}.running_var"] + 1e-5)
    return ((x - sd[f"{name}.running_mean"][None, :, None, None]) * scale[None, :, None, None]
            + sd[f"{name}.bias"][None, :, None, None])


def _pool(x, k, kind):
    n, c, h, w = x.shape
    v = x[:, :, :h // k * k, :w // k * k].reshape(n, c, h // k, k, w // k, k)
    return v.max(axis=(3, 5)) if kind == "max" else v.mean(axis=(3, 5))


def _linear(x, sd, name):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def port_forward(sd: dict, image: np.ndarray) -> np.ndarray:
    """SSRNet.forward of the port on ``image`` (N x 3 x 64 x 64, already normalised), float64."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    relu, tanh = (lambda t: np.maximum(t, 0)), np.tanh

    def block(x, name, act, pool, conv=0, bn=1):
        y = act(_bn(_conv(x, sd, f"{name}.{conv}", 1), sd, f"{name}.{bn}"))
        return _pool(y, 2, pool) if pool else y

    s1_3 = block(image, "stream1_stage3", relu, "avg")
    s1_2 = block(s1_3, "stream1_stage2", relu, "avg")
    s1_1 = block(block(s1_2, "stream1_stage1", relu, "avg"), "stream1_stage1", relu, None, 4, 5)
    s2_3 = block(image, "stream2_stage3", tanh, "max")
    s2_2 = block(s2_3, "stream2_stage2", tanh, "max")
    s2_1 = block(block(s2_2, "stream2_stage1", tanh, "max"), "stream2_stage1", tanh, None, 4, 5)

    def before(x, stream, k, pool, kind):
        y = relu(_conv(x, sd, f"funsion_block_stream{stream}_stage_{k}_before_PB.0", 0))
        y = _pool(y, pool, kind) if pool else y
        return y.reshape(len(y), -1)  # torch .view: NCHW order

    emb1 = {3: before(s1_3, 1, 3, 8, "avg"), 2: before(s1_2, 1, 2, 4, "avg"),
            1: before(s1_1, 1, 1, None, None)}
    emb2 = {3: before(s2_3, 2, 3, 8, "max"), 2: before(s2_2, 2, 2, 4, "max"),
            1: before(s2_1, 2, 1, None, None)}
    delta, prob, offset = {}, {}, {}
    for k in (1, 2, 3):
        delta[k] = np.tanh(_linear(emb1[k] * emb2[k], sd, f"stage{k}_delta_k.0"))
        after = (relu(_linear(emb1[k], sd, f"funsion_block_stream1_stage_{k}_prediction_block.1"))
                 * relu(_linear(emb2[k], sd, f"funsion_block_stream2_stage_{k}_prediction_block.1")))
        after = relu(_linear(after, sd, f"stage{k}_FC_after_PB.0"))
        prob[k] = relu(_linear(after, sd, f"stage{k}_prob.0"))
        offset[k] = np.tanh(_linear(after, sd, f"stage{k}_index_offsets.0"))
    total = 0.0
    denominator = 1.0
    for k in (1, 2, 3):
        regress = sum((i + offset[k][:, i]) * prob[k][:, i] for i in range(3))[:, None]
        denominator = denominator * (3 * (1 + delta[k]))
        total = total + regress / denominator
    return (total * 101)[:, 0]


def port_input(faces_bgr: np.ndarray) -> np.ndarray:
    """ssrconv's input (N x 64 x 64 x 3 BGR 0..255) as the port's inference feeds it: ToTensor
    (/255, CHW) of the BGR array, then Normalize with the ImageNet mean/std per channel."""
    x = np.asarray(faces_bgr, np.float64) / 255.0
    x = (x - MEAN) / STD
    return x.transpose(0, 3, 1, 2)

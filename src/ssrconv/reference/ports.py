"""Weights of the SSR-Net ports, read as data and re-laid out as the rebuilt Keras layers.

A port's file (PyTorch ``.pth``/``.pt``, MXNet ``.params``) is read without its framework
(:mod:`ssrconv.reference.torch_pickle`, :mod:`ssrconv.reference.mxnet_params`); which member
of the family it is comes from its tensor names and shapes (:data:`PORT_LAYOUTS`), then every
tensor is renamed to the original Keras layer it plays and transposed to Keras' layout:
conv (O, I, kh, kw) -> (kh, kw, I, O), dense (out, in) -> (in, out), BatchNorm statistics by
name. Dense layers that read an NCHW flatten get their rows permuted to the NHWC flatten
order the rebuilt graph uses (exact: the same products, summed in another order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrconv.errors import WeightsError
from ssrconv.reference.family import Member, get_member

# Dense layers that read a flattened summary map: {layer: stage}.
_FLAT_READERS = {**{f"dense_{3 * k - 2}": k for k in (1, 2, 3)},
                 **{f"dense_{3 * k - 1}": k for k in (1, 2, 3)},
                 **{f"delta_s{k}": k for k in (1, 2, 3)}}
_BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")


def _pytorch_table() -> dict[str, tuple[str, str]]:
    """oukohou/SSR_Net_Pytorch module prefix -> (Keras layer, kind)."""
    table = {}
    for stream, first in (("stream1", 1), ("stream2", 5)):
        for i, (module, conv, bn) in enumerate((("stage3", 0, 1), ("stage2", 0, 1),
                                                ("stage1", 0, 1), ("stage1", 4, 5))):
            table[f"{stream}_{module}.{conv}"] = (f"conv2d_{first + i}", "conv")
            table[f"{stream}_{module}.{bn}"] = (f"batch_normalization_{first + i}", "bn")
    for k in (1, 2, 3):
        # Stage k's 1x1 summaries: stream 2 (tanh) is conv2d_9/11/13, stream 1 conv2d_10/12/14.
        table[f"funsion_block_stream2_stage_{k}_before_PB.0"] = (f"conv2d_{7 + 2 * k}", "conv")
        table[f"funsion_block_stream1_stage_{k}_before_PB.0"] = (f"conv2d_{8 + 2 * k}", "conv")
        table[f"funsion_block_stream2_stage_{k}_prediction_block.1"] = (f"dense_{3 * k - 2}", "fc")
        table[f"funsion_block_stream1_stage_{k}_prediction_block.1"] = (f"dense_{3 * k - 1}", "fc")
        table[f"stage{k}_FC_after_PB.0"] = (f"dense_{3 * k}", "fc")
        table[f"stage{k}_prob.0"] = (f"pred_{{task}}_stage{k}", "fc")
        table[f"stage{k}_index_offsets.0"] = (f"local_delta_stage{k}", "fc")
        table[f"stage{k}_delta_k.0"] = (f"delta_s{k}", "fc")
    return table


def _mxnet_table() -> dict[str, tuple[str, str]]:
    """wayen820 MXNet symbol name -> (Keras layer, kind). Its auto-numbered layers follow the
    original's order one for one (read from src/symbols/ssr.py and the symbol's wiring)."""
    table = {f"convolution{i}": (f"conv2d_{i + 1}", "conv") for i in range(14)}
    table.update({f"batchnorm{i}": (f"batch_normalization_{i + 1}", "bn") for i in range(8)})
    table.update({f"fullyconnected{i}": (f"dense_{i + 1}", "fc") for i in range(9)})
    for k, stage in ((1, "pred_age_stage1"), (2, "pred_age_stag2"), (3, "pred_age_stage3")):
        table[stage] = (f"pred_{{task}}_stage{k}", "fc")  # sic: "stag2" in the port
        table[f"delta_s{k}"] = (f"delta_s{k}", "fc")
        table[f"local_delta_stage{k}"] = (f"local_delta_stage{k}", "fc")
    return table


_SUFFIXES = {
    "oukohou-pytorch": {"conv": {"weight": "kernel", "bias": "bias"},
                        "fc": {"weight": "kernel", "bias": "bias"},
                        "bn": {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                               "running_var": "moving_variance"}},
    "wayen820-mxnet": {"conv": {"weight": "kernel", "bias": "bias"},
                       "fc": {"weight": "kernel", "bias": "bias"},
                       "bn": {"gamma": "gamma", "beta": "beta", "moving_mean": "moving_mean",
                              "moving_var": "moving_variance"}},
}
PORT_LAYOUTS = {"oukohou-pytorch": (_pytorch_table(), "."),
                "wayen820-mxnet": (_mxnet_table(), "_")}
_IGNORED = ("num_batches_tracked",)


def _split(name: str, sep: str, kinds: dict) -> tuple[str, str] | None:
    for suffix in sorted({s for per in kinds.values() for s in per}, key=len, reverse=True):
        if name.endswith(sep + suffix):
            return name[: -len(sep + suffix)], suffix
    return None


def _expected_names(member: str) -> set[str]:
    table, sep = PORT_LAYOUTS[member]
    kinds = _SUFFIXES[member]
    return {f"{prefix}{sep}{suffix}" for prefix, (_, kind) in table.items() for suffix in kinds[kind]}


def recognise(tensors: dict[str, np.ndarray], path: Path, candidates: tuple[str, ...]) -> str:
    """The port whose tensor names ``tensors`` carries, among ``candidates``; a WeightsError
    listing what each expects and what was found otherwise."""
    found = {n for n in tensors if not n.endswith(_IGNORED)}
    for member in candidates:
        if _expected_names(member) == found:
            return member
    lines = []
    for member in candidates:
        expected = _expected_names(member)
        missing, extra = sorted(expected - found), sorted(found - expected)
        lines.append(f"{member}: {len(expected)} tensors expected, {len(expected & found)} found"
                     + (f", missing e.g. {', '.join(missing[:3])}" if missing else "")
                     + (f", unexpected e.g. {', '.join(extra[:3])}" if extra else ""))
    raise WeightsError(f"{path}: matches no SSR-Net member ({'; '.join(lines)}); "
                       "pass a file saved by one of these ports")


def _nchw_to_nhwc_rows(kernel: np.ndarray, hw: int) -> np.ndarray:
    """Rows of a dense kernel (in, out) that reads an NCHW flatten, reordered for NHWC."""
    channels = kernel.shape[0] // (hw * hw)
    order = np.arange(kernel.shape[0]).reshape(channels, hw, hw).transpose(1, 2, 0).ravel()
    return kernel[order]


def to_keras_layers(tensors: dict[str, np.ndarray], member_name: str, task: str,
                    path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{Keras layer: {variable: array}} of a recognised port's tensors (module docstring).
    Shapes are checked against the member's spec by the loaders, as for an ``.h5``."""
    member: Member = get_member(member_name)
    table, sep = PORT_LAYOUTS[member_name]
    kinds = _SUFFIXES[member_name]
    stage = "age" if task == "age" else "gender"
    layers: dict[str, dict[str, np.ndarray]] = {}
    for name, array in tensors.items():
        if name.endswith(_IGNORED):
            continue
        prefix, suffix = _split(name, sep, kinds)
        layer, kind = table[prefix]
        layer = layer.format(task=stage)
        variable = kinds[kind][suffix]
        array = np.asarray(array)
        if array.dtype.kind != "f":
            raise WeightsError(f"{path}: tensor {name} has dtype {array.dtype}, expected "
                               "floating point")
        if variable == "kernel" and kind == "conv":
            if array.ndim != 4:
                raise WeightsError(f"{path}: {name} has shape {array.shape}, expected a 4-d "
                                   "convolution kernel")
            array = array.transpose(2, 3, 1, 0)
        elif variable == "kernel":
            if array.ndim != 2:
                raise WeightsError(f"{path}: {name} has shape {array.shape}, expected a 2-d "
                                   "dense kernel")
            array = array.T
            if member.arch.flatten == "NCHW" and layer in _FLAT_READERS:
                hw = member.arch.summary_hw(_FLAT_READERS[layer])
                if array.shape[0] != 10 * hw * hw:
                    raise WeightsError(f"{path}: {name} reads {array.shape[0]} inputs, the "
                                       f"{member_name} spec expects {10 * hw * hw}")
                array = _nchw_to_nhwc_rows(array, hw)
        layers.setdefault(layer, {})[variable] = np.ascontiguousarray(array)
    return layers

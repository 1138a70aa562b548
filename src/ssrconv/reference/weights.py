"""Read SSR-Net weights files as data and copy them into the rebuilt model, by layer name.

:func:`read_weights` reads any supported file: the original weights-only ``.h5`` (h5py), a
PyTorch ``.pth``/``.pt`` or an MXNet ``.params`` of a port (:mod:`ssrconv.reference.ports`),
and says which member of the SSR-Net family (:mod:`ssrconv.reference.family`) it is.

Loading by layer order is fragile (the saved order interleaves the two streams), so every
weight is matched by its layer name and variable name, and its shape is checked. The age
files name the stage heads ``pred_age_stage{1,2,3}``; the gender files ``pred_stage{1,2,3}``,
which map onto the rebuilt gender model's ``pred_gender_stage{1,2,3}``. Nothing in the file is
ever deserialized as code: only numeric datasets are read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssrconv.errors import WeightsError

# h5 layer names that tell an age file from a gender file.
_AGE_MARK = "pred_age_stage1"
_GENDER_MARK = "pred_stage1"


@dataclass(frozen=True)
class WeightsFile:
    """The numeric contents of an SSR-Net weights file: {layer: {variable: array}}, in the
    original Keras layer names and layouts, whatever file it was read from."""

    path: Path
    task: str  # "age" or "gender", read from the layer names
    layers: dict[str, dict[str, np.ndarray]]
    keras_version: str
    member: str = "original"  # the family member (ssrconv.reference.family.MEMBERS)
    format: str = "keras-h5"  # "keras-h5", "pytorch" or "mxnet"
    symbol: Path | None = None  # an MXNet port's -symbol.json, read as data


def read_heads(task: str, age_weights=None, gender_weights=None, arch: str | None = None):
    """(resolved assets, weights files, members) per head of ``task`` ("age", "gender",
    "age-gender"; defaults age-wiki and gender-wiki), each file sha256-checked and read as data
    (as member ``arch`` when given: ``--arch``, see :func:`read_weights`).

    Heads of different members may share a model (each has its own in-graph preprocessing);
    an exported model needs one crop rule for both (checked by
    :func:`ssrconv.reference.preprocess.contract_for`).
    """
    from ssrconv.assets import DEFAULT_AGE_WEIGHTS, DEFAULT_GENDER_WEIGHTS, resolve
    from ssrconv.reference.family import get_member

    heads = {"age": ["age"], "gender": ["gender"], "age-gender": ["age", "gender"]}[task]
    chosen = {"age": age_weights or DEFAULT_AGE_WEIGHTS,
              "gender": gender_weights or DEFAULT_GENDER_WEIGHTS}
    resolved = {head: resolve(chosen[head]) for head in heads}
    files = {head: read_weights(resolved[head].path, arch) for head in heads}
    members = {head: get_member(files[head].member) for head in heads}
    return resolved, files, members


def read_weights(path: str | os.PathLike, member: str | None = None) -> WeightsFile:
    """Read any supported SSR-Net weights file (by suffix: ``.h5``, ``.pth``/``.pt``,
    ``.params``) as data. Which family member it is comes from its tensor names; ``member``
    (``--arch``) narrows the candidates to that one, so a file that is not that member is one
    WeightsError. A file that matches no member is a WeightsError listing expected vs found."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt"):
        weights = _read_pytorch(path, member)
    elif suffix == ".params":
        weights = _read_mxnet(path, member)
    else:
        if member is not None:
            from ssrconv.reference.family import get_member

            get_member(member)  # validates the name
        weights = read_h5_weights(path)
        if member not in (None, "original"):
            raise WeightsError(f"{path}: an .h5 holds the original Keras graph, not --arch "
                               f"{member}")
    return weights


def _port_candidates(member: str | None, fmt: str, path: Path) -> tuple[str, ...]:
    from ssrconv.reference.family import get_member
    from ssrconv.reference.ports import PORT_LAYOUTS

    ports = tuple(m for m in PORT_LAYOUTS if m.endswith(fmt))
    if member is None:
        return ports
    get_member(member)  # validates the name
    if member not in ports:
        raise WeightsError(f"{path}: a {fmt} file, not --arch {member} (members read from "
                           f"{fmt} files: {', '.join(ports)})")
    return (member,)


def _read_pytorch(path: Path, member: str | None) -> WeightsFile:
    from ssrconv.reference.family import get_member
    from ssrconv.reference.ports import recognise, to_keras_layers
    from ssrconv.reference.torch_pickle import load_torch_file, state_dict_of

    tensors = state_dict_of(load_torch_file(path), path)
    name = recognise(tensors, path, _port_candidates(member, "pytorch", path))
    task = get_member(name).arch.heads[0]  # a PyTorch port publishes one head per file
    return WeightsFile(path=path, task=task, layers=to_keras_layers(tensors, name, task, path),
                       keras_version="", member=name, format="pytorch")


def _read_mxnet(path: Path, member: str | None) -> WeightsFile:
    from ssrconv.reference.mxnet_params import read_params, read_symbol, symbol_for
    from ssrconv.reference.ports import recognise, to_keras_layers

    symbol_path = symbol_for(path)
    if symbol_path is None:
        raise WeightsError(f"{path}: no MXNet symbol file beside it (expected "
                           f"{path.name.rsplit('-', 1)[0]}-symbol.json): it says whether the "
                           "model is age or gender; copy it next to the .params")
    tensors = read_params(path)
    name = recognise(tensors, path, _port_candidates(member, "mxnet", path))
    task = _mxnet_task(read_symbol(symbol_path))
    return WeightsFile(path=path, task=task, layers=to_keras_layers(tensors, name, task, path),
                       keras_version="", member=name, format="mxnet", symbol=symbol_path)


def _mxnet_task(symbol) -> str:
    """age (V = 101) or gender (V = 1), read from the symbol's last op: output * V."""
    head = symbol.nodes[symbol.heads[0]]
    if head["op"] == "_mul_scalar":
        V = float(head["attrs"].get("scalar", "nan"))
        if V == 101.0:
            return "age"
        if V == 1.0:
            return "gender"
    raise WeightsError(f"{symbol.path}: its output is not SSR-Net's final 'times V' (101 for "
                       "age, 1 for gender); not an SSR-Net symbol")


def _decode(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_h5_weights(path: str | os.PathLike) -> WeightsFile:
    """Read every layer's arrays from an SSR-Net ``.h5`` (weights-only, or a full-model file's
    ``model_weights`` group) without touching any model config stored beside them."""
    import h5py

    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise WeightsError(f"{path}: not a readable HDF5 weights file ({err}); "
                           "pass an SSR-Net .h5 such as ssrnet_age_wiki.h5") from None
    with handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in group.attrs:
            raise WeightsError(f"{path}: HDF5 file has no Keras 'layer_names' attribute, so it is "
                               "not a Keras weights file; pass an SSR-Net .h5")
        result: dict[str, dict[str, np.ndarray]] = {}
        try:
            for raw_name in group.attrs["layer_names"]:
                layer_name = _decode(raw_name)
                layer_group = group[layer_name]
                arrays = {}
                for raw_wname in layer_group.attrs.get("weight_names", []):
                    wname = _decode(raw_wname)
                    data = layer_group[wname]
                    if data.dtype.kind != "f":
                        raise WeightsError(f"{path}: weight {wname} has dtype {data.dtype}, "
                                           "expected floating point")
                    # "conv2d_5/kernel:0" -> "kernel"
                    arrays[wname.split("/")[-1].split(":")[0]] = np.asarray(data[()])
                result[layer_name] = arrays
        except (KeyError, OSError) as err:
            raise WeightsError(f"{path}: damaged weights file ({err}); "
                               "re-download it or point SSRCONV_ASSETS at a good copy") from None
        keras_version = _decode(group.attrs.get("keras_version", handle.attrs.get("keras_version", "")))
    if _AGE_MARK in result:
        task = "age"
    elif _GENDER_MARK in result:
        task = "gender"
    else:
        raise WeightsError(f"{path}: not SSR-Net weights (no layer {_AGE_MARK} or {_GENDER_MARK}); "
                           "pass one of the published SSR-Net .h5 files")
    return WeightsFile(path=path, task=task, layers=result, keras_version=keras_version)


def _model_layer_name(h5_layer: str, task: str) -> str:
    if task == "gender" and h5_layer.startswith("pred_stage"):
        return h5_layer.replace("pred_stage", "pred_gender_stage", 1)
    return h5_layer


def check_task(weights: WeightsFile, task: str) -> None:
    """WeightsError unless ``weights`` are for the ``task`` head ("age" or "gender")."""
    if weights.task != task:
        raise WeightsError(
            f"{weights.path}: holds {weights.task} weights (layer "
            f"{_AGE_MARK if weights.task == 'age' else _GENDER_MARK}) but the {task} model was "
            f"asked for; use {task}-* weights (e.g. {task}-wiki)"
        )


def model_layer_name(h5_layer: str, task: str) -> str:
    """The rebuilt model's name of an ``.h5`` layer (gender files: pred_stage* -> pred_gender_stage*)."""
    return _model_layer_name(h5_layer, task)


def load_into(model, weights: WeightsFile, task: str, prefix: str = "") -> None:
    """Assign ``weights`` to the layers of ``model`` named ``prefix + original name``.

    Every weighted layer of that head must be found in the file and every weighted layer in
    the file must land in the model, with identical shapes; otherwise a WeightsError names the
    first problem and nothing is assigned.
    """
    check_task(weights, task)
    model_layers = {layer.name: layer for layer in model.layers
                    if layer.name.startswith(prefix) and layer.weights}
    plan = []
    used = set()
    for h5_layer, arrays in weights.layers.items():
        if not arrays:
            continue
        target = prefix + _model_layer_name(h5_layer, task)
        layer = model_layers.get(target)
        if layer is None:
            raise WeightsError(f"{weights.path}: layer {h5_layer} has weights but the SSR-Net "
                               f"{task} model has no layer {target}; this is not an SSR-Net "
                               "(3,3,3) weights file")
        variables = {v.name.split("/")[-1].split(":")[0]: v for v in layer.weights}
        if set(variables) != set(arrays):
            raise WeightsError(f"{weights.path}: layer {h5_layer} holds {sorted(arrays)}, the model "
                               f"expects {sorted(variables)}")
        for vname, array in arrays.items():
            expected = tuple(variables[vname].shape)
            if tuple(array.shape) != expected:
                raise WeightsError(f"{weights.path}: {h5_layer}/{vname} has shape {array.shape}, "
                                   f"the model expects {expected}")
            if not np.all(np.isfinite(array)):
                raise WeightsError(f"{weights.path}: {h5_layer}/{vname} contains NaN or Inf")
            plan.append((variables[vname], array))
        used.add(target)
    missing = sorted(set(model_layers) - used)
    if missing:
        raise WeightsError(f"{weights.path}: no weights for model layers {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''}; the file is incomplete")
    for variable, array in plan:
        variable.assign(array.astype(variable.dtype))

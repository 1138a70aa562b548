"""Copy the original weights-only ``.h5`` files into the rebuilt model, by layer name, with h5py.

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
class H5Weights:
    """The numeric contents of an SSR-Net weights file: {layer: {variable: array}}."""

    path: Path
    task: str  # "age" or "gender", read from the layer names
    layers: dict[str, dict[str, np.ndarray]]
    keras_version: str


def _decode(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_h5_weights(path: str | os.PathLike) -> H5Weights:
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
    return H5Weights(path=path, task=task, layers=result, keras_version=keras_version)


def _model_layer_name(h5_layer: str, task: str) -> str:
    if task == "gender" and h5_layer.startswith("pred_stage"):
        return h5_layer.replace("pred_stage", "pred_gender_stage", 1)
    return h5_layer


def check_task(weights: H5Weights, task: str) -> None:
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


def load_into(model, weights: H5Weights, task: str, prefix: str = "") -> None:
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

"""TFLite export: fp32, fp16 (float16 weights), dynamic range (int8 weights) and full int8.

The Keras model is wrapped so the SignatureDef's outputs are named (``age``, ``p_male``);
``TFLiteConverter.from_keras_model`` goes through a SavedModel export, which freezes the
variables and folds BatchNorm into the convolutions. (``from_concrete_functions`` with the
model as trackable keeps resource variables and gives NaNs when calibrating.)
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from ssrconv.converters.tflite_flatbuffer import compact

# Ops that only move a tensor between float and integer at the model boundary.
BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


_SAVED_MODELS: dict[int, tuple[object, tempfile.TemporaryDirectory]] = {}


def _saved_model_dir(model) -> str:
    """Export ``model`` (outputs as a dict, so the signature names them) to a SavedModel once
    per model and process; every precision converts from it (the export is the slow part)."""
    import keras

    cached = _SAVED_MODELS.get(id(model))
    if cached is None or cached[0] is not model:
        named = keras.Model(model.inputs, dict(zip(model.output_names, model.outputs)))
        tmp = tempfile.TemporaryDirectory(prefix="ssrconv-savedmodel-")
        with contextlib.redirect_stdout(io.StringIO()):  # Keras prints every captured variable
            named.export(tmp.name, format="tf_saved_model", verbose=False)
        cached = _SAVED_MODELS[id(model)] = (model, tmp)
    return cached[1].name


def _converter(model, target, options, calibration):
    from ssrconv._imports import tensorflow

    tf = tensorflow()
    conv = tf.lite.TFLiteConverter.from_saved_model(_saved_model_dir(model))
    if target.precision == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif target.precision == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    return conv


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Convert ``model`` to a .tflite at ``dest`` for ``target.precision``."""
    from ssrconv._imports import silenced_fd2

    # The MLIR converter and calibrator print diagnostics from C++ ("fully_quantize: 0, ...")
    # and a UserWarning about input statistics; failures still raise ConverterError.
    with silenced_fd2(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if target.precision == "int8":
            flatbuffer = _convert_int8(model, options, calibration)
        else:
            flatbuffer = _converter(model, target, options, calibration).convert()
    # int8: the float parts (first conv blocks, SSR head) keep float32 arithmetic but store their
    # weights as float16 (measured: age p99 unchanged to 0.01 y, a third fewer bytes).
    flatbuffer = compact(flatbuffer, fp16_constants=target.precision == "int8")
    dest.write_bytes(flatbuffer)
    extra = {}
    if target.precision == "int8":
        extra["int8_io"] = {"input": options.int8_io, "outputs": "float32"}
        extra["int8_recipe"] = INT8_RECIPE
    return extra


INT8_RECIPE = (
    "int8 (per-channel weights): every convolution and pool after the first block of each stream "
    "(12.1 M of the 17.1 M multiply-adds per head); float (float32 arithmetic, float16-stored "
    "weights): the first conv block of each stream and the SSR head. Average pools become fixed "
    "depthwise convolutions; cross-layer equalization (age head), GPTQ rounding with bias "
    "correction, clipped tanh and MSE-optimal relu ranges. See docs/INT8.md.")


def _convert_int8(model, options, calibration) -> bytes:
    """The int8 recipe of :mod:`ssrconv.converters.tflite_int8`, outputs named by a dict."""
    import keras

    from ssrconv.converters.tflite_int8 import convert_int8

    named = keras.Model(model.inputs, dict(zip(model.output_names, model.outputs)))
    return convert_int8(named, calibration.inputs, dynamic_batch=True, input_type=options.int8_io)


def load_interpreter(path: Path, num_threads: int | None = None, use_xnnpack: bool = True):
    """An ai-edge-litert Interpreter (no TensorFlow import), with or without XNNPACK."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from ssrconv._imports import silenced_fd2

    kwargs = {"model_path": str(path), "num_threads": num_threads}
    if not use_xnnpack:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." goes to fd 2 from C++;
    # real failures raise ValueError/RuntimeError with their message.
    with silenced_fd2():
        interpreter = Interpreter(**kwargs)
        interpreter.allocate_tensors()
    return interpreter


def _quantization(detail) -> dict | None:
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []))
    if scales.size == 0:
        return None
    zero_points = np.asarray(params.get("zero_points", []))
    if scales.size == 1:
        return {"scale": float(scales[0]), "zero_point": int(zero_points[0])}
    return {"scale": scales.tolist(), "zero_point": zero_points.tolist(),
            "axis": int(params.get("quantized_dimension", 0))}


def describe(path: Path) -> dict:
    """Signature inputs/outputs (with quantization), op counts and ops computing in float."""
    interpreter = load_interpreter(path, use_xnnpack=False)  # reading only: no delegate needed
    runner = interpreter.get_signature_runner()

    def io_list(details):
        out = []
        for name, d in details.items():
            shape = [None if s < 0 else int(s) for s in d["shape_signature"]]
            out.append({"name": name, "shape": shape, "dtype": np.dtype(d["dtype"]).name,
                        "quantization": _quantization(d), "tensor": d["name"]})
        return out

    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops = Counter()
    float_ops = Counter()
    for op in interpreter._get_ops_details():  # the public API has no op listing
        ops[op["op_name"]] += 1
        indices = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if any(np.dtype(tensors[i]["dtype"]).kind == "f" for i in indices if i in tensors):
            float_ops[op["op_name"]] += 1
    integer_only = bool(ops) and set(float_ops) <= BOUNDARY_OPS
    return {"inputs": io_list(runner.get_input_details()),
            "outputs": io_list(runner.get_output_details()),
            "ops": dict(sorted(ops.items())), "float_ops": dict(sorted(float_ops.items())),
            "integer_only": integer_only}

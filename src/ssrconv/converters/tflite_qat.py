"""Integer-only int8 TFLite of SSR-Net (work in progress)."""
from __future__ import annotations

import warnings

import numpy as np

from ssrconv.converters.int8_prep import ALPHA, _keras, equalize, rewrite, round_kernels
from ssrconv.converters.tflite_int8 import TANH_CLIP, _mse_clip, _op_layers
from ssrconv.errors import Int8RecipeError
from ssrconv.formats.tflite_flatbuffer import integer_only_violations, load, operators, pack


def _output_tensors(sg, model_fb) -> dict[str, int]:
    """Output name (signature) -> tensor index."""
    names = {}
    for signature in model_fb.signatureDefs or []:
        for tensor_map in signature.outputs or []:
            names[tensor_map.name.decode()] = int(tensor_map.tensorIndex)
    return names


def calibrate(m, cal):
    from ssrconv._imports import tensorflow

    tf = tensorflow("int8 TFLite export")
    conv = tf.lite.TFLiteConverter.from_keras_model(m)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([cal[i:i + 1]] for i in range(len(cal)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.experimental_mlir_quantizer = True
    conv._experimental_calibrate_only = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return conv.convert()


def quantize(calibrated, input_type="float32", output_type="float32"):
    from ssrconv._imports import tensorflow
    from tensorflow.lite.python import convert as tfl_convert

    tf = tensorflow("int8 TFLite export")
    types = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tfl_convert.mlir_quantize(calibrated, fully_quantize=True,
                                         input_data_type=types[input_type],
                                         output_data_type=types[output_type])


def edit_ranges(calibrated, inner, cal, tanh_clip=TANH_CLIP, mse_clip=True, output_ranges=None):
    keras = _keras()
    g, sg, ops = operators(calibrated)
    layer_names = [l.name for l in inner.layers]
    ol = _op_layers(sg, ops, layer_names)
    producer = {int(o): op for _, op in ops for o in op.outputs}
    names = {id(op): n for n, op in ops}
    if tanh_clip:
        for name, op in ops:
            if name != "TANH":
                continue
            t_idx = op.inputs[0]
            while True:
                q = sg.tensors[t_idx].quantization
                q.min = np.maximum(q.min, -tanh_clip).astype(np.float32)
                q.max = np.minimum(q.max, tanh_clip).astype(np.float32)
                prod = producer.get(int(t_idx))
                if prod is not None and names[id(prod)] == "MAX_POOL_2D":
                    t_idx = prod.inputs[0]
                else:
                    break
    if mse_clip:
        relu_like = []
        for l in inner.layers:
            is_relu_act = isinstance(l, keras.layers.Activation) and l.get_config()["activation"] == "relu"
            is_relu_conv = type(l) is keras.layers.Conv2D and l.get_config()["activation"] == "relu"
            if (is_relu_act or is_relu_conv) and len(l.output.shape) == 4:
                relu_like.append(l.name)
        acts = keras.Model(inner.inputs, [inner.get_layer(n).output for n in relu_like]).predict(cal, verbose=0)
        for n, a in zip(relu_like, acts):
            ks = [k for k, c in enumerate(ol) if n in c]
            if not ks:
                continue
            t = sg.tensors[ops[ks[-1]][1].outputs[0]]
            if t.quantization is None or t.quantization.min is None or float(t.quantization.min[0]) < 0:
                continue
            hi = _mse_clip(a)
            t.quantization.max = np.array([min(hi, float(t.quantization.max[0]))], np.float32)
    if output_ranges:
        for name, idx in _output_tensors(sg, g).items():
            if name in output_ranges:
                lo, hi = output_ranges[name]
                q = sg.tensors[idx].quantization
                q.min = np.array([lo], np.float32); q.max = np.array([hi], np.float32)
    return pack(g)


def convert_int8_integer(model, calibration_inputs, alpha=ALPHA, gptq=True, tanh_clip=TANH_CLIP,
                         mse_clip=True, output_ranges=None, input_type="float32"):
    keras = _keras()
    cal = np.asarray(calibration_inputs, np.float32)
    m = rewrite(model)
    if alpha:
        equalize(m, cal, alpha)
    if gptq:
        round_kernels(m, cal)
    named = keras.Model(m.inputs, dict(zip(m.output_names, m.outputs)), name=m.name)
    calibrated = calibrate(named, cal)
    calibrated = edit_ranges(calibrated, m, cal, tanh_clip, mse_clip, output_ranges)
    tfl = quantize(calibrated, input_type)
    bad = integer_only_violations(tfl)
    if bad:
        raise Int8RecipeError(f"int8 integer-only: float operators {bad}")
    return tfl

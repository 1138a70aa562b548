"""TFLite export: fp32, fp16 (float16 weights), dynamic range (int8 weights), integer-only int8
and 16x8, and the mixed int8 file (float first blocks and head).

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
from pathlib import Path

from ssrconv.atomic import track
from ssrconv.formats.tflite_flatbuffer import compact, fix_batch


_SAVED_MODELS: dict[int, tuple[object, tempfile.TemporaryDirectory]] = {}


def _saved_model_dir(model) -> str:
    """Export ``model`` (outputs as a dict, so the signature names them) to a SavedModel once
    per model and process; every precision converts from it (the export is the slow part)."""
    cached = _SAVED_MODELS.get(id(model))
    if cached is None or cached[0] is not model:
        from ssrconv.reference.model import outputs_as_dict

        named = outputs_as_dict(model)
        tmp = tempfile.TemporaryDirectory(prefix="ssrconv-savedmodel-")
        track(Path(tmp.name))
        with contextlib.redirect_stdout(io.StringIO()):  # Keras prints every captured variable
            named.export(tmp.name, format="tf_saved_model", verbose=False)
        cached = _SAVED_MODELS[id(model)] = (model, tmp)
    return cached[1].name


def _converter(model, target, options, calibration):
    from ssrconv._imports import tensorflow

    tf = tensorflow("TFLite export")
    conv = tf.lite.TFLiteConverter.from_saved_model(_saved_model_dir(model))
    if target.precision == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif target.precision == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    return conv


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Convert ``model`` to a .tflite at ``dest`` for ``target.precision``."""
    if target.precision in INTEGER_PRECISIONS:
        flatbuffer, integer_info = integer_source(model, target, calibration, options.int8_io)
        if target.precision == "int8":
            from ssrconv.converters.tflite_bands import band_rows

            # the same outputs bit for bit; TFLite Micro's arena 198,176 -> 125,376 bytes
            flatbuffer = band_rows(flatbuffer)
    else:
        with _converters_silenced():
            if target.precision == "int8-mixed":
                flatbuffer = _convert_int8_mixed(model, options, calibration)
            else:
                flatbuffer = _converter(model, target, options, calibration).convert()
    # int8-mixed: the float parts (first conv blocks, SSR head) keep float32 arithmetic but store
    # their weights as float16: a third fewer bytes; the age p99 moves within the recipe's noise
    # (0.86 -> 0.68 y on session 9's file: docs/INT8.md, "The one face whose gender flips").
    flatbuffer = compact(flatbuffer, fp16_constants=target.precision == "int8-mixed")
    if options.batch is not None:
        flatbuffer = fix_batch(flatbuffer, options.batch)
    dest.write_bytes(flatbuffer)
    extra = {}
    if target.precision == "int8-mixed":
        extra["int8_io"] = {"input": options.int8_io, "outputs": "float32"}
        extra["int8_recipe"] = INT8_MIXED_RECIPE
    if target.precision == "int16x8":
        extra["int8_recipe"] = INT16X8_RECIPE
        extra["mcu"] = mcu(flatbuffer)
    if target.precision == "int8":
        extra["int8_io"] = {"input": options.int8_io, "outputs": "float32"}
        extra["int8_recipe"] = INT8_INTEGER_RECIPE
        extra["fine_tuning"] = {**integer_info["fine_tuning"], "cache": integer_info["cache"]}
        # the maps kept int8 when every other is int16 (None: every map int8)
        extra["int8_maps"] = integer_info["recipe"].get("int8_maps")
        extra["mcu"] = mcu(flatbuffer)
    return extra


def mcu(flatbuffer: bytes) -> dict:
    """TFLite Micro's arena ("MCU RAM") and flash bytes of an integer-only file, when the
    ``mcu`` extra is installed."""
    from ssrconv._extras import available

    if not available("tflite_micro"):
        return {"ram_bytes": None, "flash_bytes": len(flatbuffer),
                "ram_measured_with": "not measured: pip install 'ssrconv[mcu]'"}
    from ssrconv.mcu import mcu_figures

    return mcu_figures(flatbuffer)


def integer_io(flatbuffer: bytes) -> bytes:
    """The 16x8 file ``flatbuffer`` taking and giving int16 tensors (the input QUANTIZE and
    the output DEQUANTIZEs removed; each I/O tensor keeps its scale and zero point): what
    firmware feeds an NPU, which runs neither float conversion (Vela leaves them to the CPU)."""
    from ssrconv._imports import tensorflow

    tf = tensorflow("16x8 TFLite export")
    from tensorflow.lite.python.util import modify_model_io_type

    return modify_model_io_type(flatbuffer, tf.int16, tf.int16)


INT8_MIXED_RECIPE = (
    "mixed int8 (per-channel weights): the relu stream's third and fourth conv blocks and the tanh "
    "stream's second to fourth (3.8 M of the 17.1 M multiply-adds per head); float (float32 "
    "arithmetic, float16-stored weights): the first conv block of each stream, the relu "
    "stream's second, the six 1x1 summary convs and the SSR head (and both fourth blocks of a "
    "member whose stage-1 maps are wider than the original's 4 x 4). Average pools become fixed "
    "depthwise convolutions; cross-layer equalization (age head), GPTQ rounding with bias "
    "correction, clipped tanh and MSE-optimal relu ranges. See docs/INT8.md.")


INT16X8_RECIPE = (
    "16x8 integer-only: int16 activations (MinMax ranges doubled, products of two activations "
    "x4; the outputs' ranges set to "
    "their domain, age 0..101 y, P(male) 0..1), int8 per-channel weights, every "
    "operator integer from the input QUANTIZE to the output DEQUANTIZEs, the SSR head "
    "included (its division as rsqrt(x)^2). Average pools become fixed depthwise "
    "convolutions; cross-layer equalization (age head), GPTQ rounding with bias correction "
    "of every conv kernel (Dense kernels to nearest). See docs/INT8.md.")


INT8_INTEGER_RECIPE = (
    "int8 integer-only: the convolutions on int8 activations, the SSR head (its Dense layers, "
    "tanh deltas and merge) on int16 activations entered through one QUANTIZE per flattened "
    "map, int8 per-channel weights, int32 biases (int64 in the head), every operator integer "
    "from the input QUANTIZE to the output DEQUANTIZEs (the merge's division as rsqrt(x)^2, "
    "one merge per head); a member whose stage-1 maps are wider than the original's (the "
    "PyTorch port) keeps only its largest conv (relu_conv2) int8, every other map on int16 "
    "(16x8 kernels, int64 biases; the manifest's int8_maps). "
    "Cross-layer equalization (age head), GPTQ rounding of every conv kernel, "
    "clipped tanh and MSE-optimal relu ranges, outputs' ranges their domains (age 0..101, "
    "P(male) 0..1), the head's int16 ranges 2x the calibrated ones (4x for products); then, "
    "calibrated on real faces, quantization-aware fine-tuning of the kernels and biases by "
    "distillation from the float graph (the calibration inputs and seeded variations of them; "
    "integer arithmetic simulated); calibrated data-free, no fine-tuning (CLE and GPTQ on the "
    "distilled inputs and seeded variations of them). Cached by content hash. See docs/INT8.md.")


# The TFLite precisions whose file is integer-only, made by integer_source (also the integer
# ONNX rows' source: ssrconv.converters.onnx_integer.SOURCES).
INTEGER_PRECISIONS = ("int8", "int16x8")


@contextlib.contextmanager
def _converters_silenced():
    """The MLIR converter and calibrator print diagnostics from C++ ("fully_quantize: 0, ...")
    and Python warnings (input statistics; Keras lists every captured variable of the
    SavedModel it writes); failures still raise ConverterError."""
    from ssrconv._imports import silenced_fd2

    with silenced_fd2(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def integer_source(model, target, calibration, input_type: str = "float32") -> tuple[bytes, dict]:
    """The integer-only flatbuffer of the TFLite row ``target`` (its precision one of
    INTEGER_PRECISIONS) and its fine-tuning info, before the TFLite export's layout passes
    (row bands, compaction, a fixed batch): int8: :func:`ssrconv.converters.tflite_qat.integer_file` with the
    ``input_type`` (``--int8-io``; cached by content); int16x8:
    :func:`ssrconv.converters.tflite_int8.convert_int16x8`, outputs named by a dict
    (:func:`ssrconv.reference.model.outputs_as_dict`: an unnamed wrapper's ``functional_<n>``
    had put in the file's tensor names how many Keras models the process had built: the MXNet
    pair's data-free 16x8 file was 158,856 bytes when the export distilled its inputs, 158,696
    on a cache hit, same numbers). The TFLite export and the integer ONNX rows both call it."""
    with _converters_silenced():
        if target.precision == "int8":
            from ssrconv.converters.tflite_qat import integer_file
            from ssrconv.graph import get_variant

            return integer_file(model, calibration, get_variant(target.variant),
                                input_type=input_type)
        from ssrconv.converters.tflite_int8 import convert_int16x8
        from ssrconv.reference.model import outputs_as_dict

        return convert_int16x8(outputs_as_dict(model), calibration.inputs), {}


def _convert_int8_mixed(model, options, calibration) -> bytes:
    """The mixed int8 recipe of :mod:`ssrconv.converters.tflite_int8`, outputs named by a
    dict."""
    from ssrconv.converters.tflite_int8 import convert_int8
    from ssrconv.reference.model import outputs_as_dict

    return convert_int8(outputs_as_dict(model), calibration.inputs, dynamic_batch=True,
                        input_type=options.int8_io)

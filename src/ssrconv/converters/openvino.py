"""OpenVINO IR export (``--to openvino``): a directory package ``<stem>.openvino/`` holding
``<stem>.xml`` (the graph) and ``<stem>.bin`` (the weights).

The IR is converted from the project's own ONNX export (``openvino.convert_model`` of the
tf2onnx graph, then ``openvino.save_model``), so it inherits that graph's measured exactness
and, for int8, the project's int8 recipe (docs/INT8.md: BatchNorm folded, CLE, GPTQ rounding,
the relu stream in int8 and the rest float) as QDQ pairs that OpenVINO turns into int8 kernels.
NNCF's default post-training quantization of the fp32 graph measured 10.6 y mean age error.

Precisions:
- fp32: weights stored as f32 (``compress_to_fp16=False``; save_model's default would halve them);
- fp16: weights stored as f16 (decompressed to f32 at compile time, computed in f32);
- bf16: f32 weights, execution in bf16 requested in the IR's rt_info (only CPUs with bf16
  support run it in bf16; the engine reports what ran);
- int8: the ONNX int8 QDQ export, converted.

rt_info carries the ONNX export's metadata_props under the same keys (``ssrconv.version``,
``ssrconv.preprocessing``, ``ssrconv.weights.<head>`` and ``.sha256``, ...), plus
``ssrconv.precision``.
"""

from __future__ import annotations

from pathlib import Path

from ssrconv.atomic import scratch_dir

# The execution precision an IR asks for, by artifact precision (runtimes/openvino_rt.py sets
# the same hint; OpenVINO's own default on AMX CPUs is bf16 even for an f32 graph).
EXECUTION_HINT = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}

def _source_onnx(model, target, options, dest: Path, calibration, metadata) -> Path:
    """The project's ONNX export of ``model``: fp32, or for an int8 target the int8 QDQ recipe
    of :mod:`ssrconv.converters.onnx_int8` (whose first conv block stays float: OpenVINO's
    u8 x s8 kernels saturate on it without VNNI, see INT8_LAYERS there)."""
    import onnx

    from ssrconv.converters import onnx as onnx_converter
    from ssrconv.converters import onnx_int8

    opset = target.opset(options.opset)
    if target.precision != "int8":
        proto = onnx_converter.to_proto(model, opset, options.batch)
    else:
        proto = onnx_int8.convert_int8(model, calibration,
                                       lambda keras_model: onnx_converter.to_proto(keras_model,
                                                                                   opset,
                                                                                   options.batch))
    onnx.save(proto, str(dest))
    return dest


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Write the OpenVINO IR package of ``model`` at ``dest`` (a directory) for
    ``target.precision``."""
    import openvino as ov

    dest = Path(dest)
    stem = Path(target.filename(options.task)).name[:-len(target.suffix)]
    with scratch_dir("ssrconv-openvino-") as tmp:
        onnx_path = _source_onnx(model, target, options, Path(tmp) / "source.onnx", calibration,
                                 metadata)
        ov_model = ov.convert_model(str(onnx_path))
        for key, value in metadata.items():
            ov_model.set_rt_info(value, [key])
        ov_model.set_rt_info(target.precision, ["ssrconv.precision"])
        hint = EXECUTION_HINT[target.precision]
        ov_model.set_rt_info(hint, ["ssrconv.execution_precision_hint"])
        # OpenVINO's own place for compile options a model asks for.
        ov_model.set_rt_info(hint, ["runtime_options", "INFERENCE_PRECISION_HINT"])
        dest.mkdir(parents=True, exist_ok=False)
        ov.save_model(ov_model, str(dest / f"{stem}.xml"),
                      compress_to_fp16=target.precision == "fp16")
    extra = {}
    if target.precision == "int8":
        from ssrconv.converters.onnx_int8 import INT8_RECIPE

        extra["int8_recipe"] = (INT8_RECIPE + " In the IR each stream's first conv (conv2d_1) "
                                "stays float: u8 x s8 int16 pair sums overflow on CPUs without "
                                "VNNI (docs/CONVERTERS.md, OpenVINO).")
    return {**extra, "openvino": ov.__version__, "source": "ssrconv ONNX export (tf2onnx"
            + (", int8 QDQ" if target.precision == "int8" else "") + ") -> openvino.convert_model",
            "execution_precision_hint": hint,
            "weights_stored_as": "f16" if target.precision == "fp16" else
                                 ("i8 (relu stream) + f32" if target.precision == "int8" else "f32")}




"""ONNX export with tf2onnx (works on the Keras 3 model directly; max diff 0 on real faces)."""

from __future__ import annotations

from pathlib import Path


from ssrconv.reference.preprocess import INPUT_SIZE


def to_proto(model, opset: int, batch: int | None = None):
    """tf2onnx of ``model``: input ``face_bgr`` with a dynamic ``batch`` dim (or the static
    ``batch`` given), outputs named as the model's."""
    from ssrconv._extras import require

    tf2onnx = require("tf2onnx", "export", "ONNX export")

    from ssrconv._imports import tensorflow

    tf = tensorflow("ONNX export")
    spec = [tf.TensorSpec((batch, INPUT_SIZE, INPUT_SIZE, 3), tf.float32, name="face_bgr")]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=int(opset))
    for value in list(proto.graph.input) + list(proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_param or not dim.dim_value:
            dim.dim_param = "batch"  # tf2onnx names it "unk__NN"
    return proto


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Convert ``model`` to ONNX at ``dest`` (fp32, or int8: static QDQ, see
    :mod:`ssrconv.converters.onnx_int8`), the preprocessing contract and provenance in
    metadata_props."""
    import onnx

    extra = {"opset": int(options.opset)}
    if target.precision == "int8":
        from ssrconv.converters import onnx_int8

        proto = onnx_int8.convert_int8(
            model, calibration, lambda keras_model: to_proto(keras_model, options.opset, options.batch))
        extra["int8_recipe"] = onnx_int8.INT8_RECIPE
    else:
        proto = to_proto(model, options.opset, options.batch)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "ssrconv (tf2onnx)" + (" + onnxruntime.quantization"
                                                 if target.precision == "int8" else "")
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(dest))
    return extra




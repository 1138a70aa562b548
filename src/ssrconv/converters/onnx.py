"""ONNX export with tf2onnx (works on the Keras 3 model directly; max diff 0 on real faces)."""

from __future__ import annotations

from pathlib import Path


from ssrconv.reference.preprocess import INPUT_SIZE


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Convert ``model`` to ONNX at ``dest``: input ``face_bgr`` with a dynamic ``batch`` dim,
    outputs named as the model's, the preprocessing contract and provenance in metadata_props."""
    import onnx
    import tf2onnx

    from ssrconv._imports import tensorflow

    tf = tensorflow()
    spec = [tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE, 3), tf.float32, name="face_bgr")]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=int(options.opset))
    for value in list(proto.graph.input) + list(proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_param or not dim.dim_value:
            dim.dim_param = "batch"  # tf2onnx names it "unk__NN"
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "ssrconv (tf2onnx)"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(dest))
    return {"opset": int(options.opset)}


_ONNX_DTYPES = {1: "float32", 10: "float16", 3: "int8", 2: "uint8", 6: "int32", 7: "int64"}


def describe(path: Path) -> dict:
    """Inputs, outputs (name, shape with None for dynamic dims, dtype), ops and opset, read back."""
    from collections import Counter

    import onnx

    proto = onnx.load(str(path))

    def io(values):
        out = []
        for v in values:
            tt = v.type.tensor_type
            shape = [d.dim_value if d.dim_value else None for d in tt.shape.dim]
            out.append({"name": v.name, "shape": shape,
                        "dtype": _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type)),
                        "quantization": None})
        return out

    ops = Counter(node.op_type for node in proto.graph.node)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    return {"inputs": io(proto.graph.input), "outputs": io(proto.graph.output),
            "ops": dict(sorted(ops.items())), "float_ops": dict(sorted(ops.items())),
            "integer_only": False, "opset": opset,
            "metadata": {p.key: p.value for p in proto.metadata_props}}



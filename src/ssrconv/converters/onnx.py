"""ONNX export with tf2onnx (works on the Keras 3 model directly; max diff 0 on real faces)."""

from __future__ import annotations

import re
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
    canonical_names(proto)
    for value in list(proto.graph.input) + list(proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_param or not dim.dim_value:
            dim.dim_param = "batch"  # tf2onnx names it "unk__NN"
    return proto


_GENERATED = re.compile(r"__\d+")


def canonical_names(proto) -> None:
    """Make a tf2onnx graph the same bytes for the same model, in place.

    tf2onnx numbers the names of the nodes and constants it inserts from a process-wide
    counter (``utils.make_name``: "const_axes__310" in a process that converted before,
    "const_axes__10" in a fresh one), in an order that varies between two conversions of one
    model in one process (which of two equal constants survives its merge, and so its name,
    varies too), and lists its initializers in that varying order: the bytes of
    every ONNX-derived file (ONNX, MNN, OpenVINO, the web folder) depended on what the command
    exported before (docs/CONVERTERS.md, "Byte-reproducible exports"). The node order itself
    is stable, so every generated name is renumbered by its first appearance in node order
    (generated constants named ``const__<n>``) and the initializers and value infos are sorted
    by name. Names are labels: the function is unchanged.
    """
    graph = proto.graph
    constants = {tensor.name for tensor in graph.initializer}
    renamed: dict[str, str] = {}

    def name(old: str) -> str:
        if not old or not _GENERATED.search(old):
            return old
        if old not in renamed:
            # A generated constant is named after its first user's role ("const_starts__21"),
            # but tf2onnx merges equal constants and keeps whichever it meets first, so the
            # same tensor came out as const_starts__21 or const_axes__21: constants get a
            # neutral name, other generated names keep their base.
            number = f"__{len(renamed)}"
            renamed[old] = f"const{number}" if old in constants else _GENERATED.sub(number, old)
        return renamed[old]

    for node in graph.node:
        node.name = name(node.name)
        node.input[:] = [name(i) for i in node.input]
        node.output[:] = [name(o) for o in node.output]
    for tensor in graph.initializer:
        tensor.name = name(tensor.name)
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        value.name = name(value.name)
    for field in (graph.initializer, graph.value_info):
        ordered = sorted(field, key=lambda item: item.name)
        copies = [type(item)() for item in ordered]
        for copy, item in zip(copies, ordered):
            copy.CopyFrom(item)
        del field[:]
        field.extend(copies)


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Convert ``model`` to ONNX at ``dest`` (fp32; int8: static QDQ, see
    :mod:`ssrconv.converters.onnx_int8`; int8-integer and int16x8: the integer-only TFLite file
    as QDQ, see :mod:`ssrconv.converters.onnx_integer`) at the row's opset, the preprocessing
    contract and provenance in metadata_props."""
    import onnx

    from ssrconv.converters import onnx_integer

    opset = target.opset(options.opset)
    extra = {"opset": opset}
    producer = "ssrconv (tf2onnx)"
    if target.precision == "int8":
        from ssrconv.converters import onnx_int8

        proto = onnx_int8.convert_int8(
            model, calibration, lambda keras_model: to_proto(keras_model, opset, options.batch))
        extra["int8_recipe"] = onnx_int8.INT8_RECIPE
        producer += " + onnxruntime.quantization"
    elif target.precision in onnx_integer.RECIPES:
        proto, info = onnx_integer.convert_integer(model, target, calibration, opset,
                                                   options.batch)
        canonical_names(proto)
        extra["int8_recipe"] = onnx_integer.RECIPES[target.precision]
        if "fine_tuning" in info:
            extra["fine_tuning"] = {**info["fine_tuning"], "cache": info["cache"]}
        producer += " from the integer-only TFLite file"
    else:
        proto = to_proto(model, opset, options.batch)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = producer
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(dest))
    return extra




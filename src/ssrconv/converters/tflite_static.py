"""A static-batch copy of a .tflite, for runtimes that cannot resize inputs.

LiteRT.js 2.5 (``@litertjs/core``) compiles a model once with the shapes it declares and has no
resize call: a file whose input signature is ``[-1, 64, 64, 3]`` is refused. The converter
already stores batch-1 sizes in every tensor's ``shape``; the ``-1`` lives only in
``shape_signature``. Dropping the signatures leaves the same graph with a static batch of 1
(the reshapes' -1 still resolves), which runs bit-for-bit as the dynamic file does at batch 1.
"""

from __future__ import annotations

from ssrconv.errors import ModelFileError


def is_dynamic_batch(tfl: bytes) -> bool:
    """True when any input of the main subgraph has an unknown (-1) dimension."""
    from ssrconv.converters import tflite_flatbuffer

    graph = tflite_flatbuffer.load(tfl).subgraphs[0]
    for index in graph.inputs:
        signature = graph.tensors[index].shapeSignature
        if signature is not None and -1 in list(signature):
            return True
    return False


def static_batch_1(tfl: bytes) -> bytes:
    """``tfl`` with a static batch of 1 (see module doc); ModelFileError when a tensor's stored
    shape is not batch 1 or another dimension is unknown."""
    from ssrconv.converters import tflite_flatbuffer

    model = tflite_flatbuffer.load(tfl)
    for graph in model.subgraphs:
        for index in graph.inputs:
            tensor = graph.tensors[index]
            shape = list(tensor.shape) if tensor.shape is not None else []
            signature = list(tensor.shapeSignature) if tensor.shapeSignature is not None else shape
            if not shape or shape[0] != 1 or -1 in signature[1:]:
                raise ModelFileError(f"input {tensor.name!r} has shape {shape} / signature "
                                     f"{signature}: only the batch may be unknown")
        for tensor in graph.tensors:
            tensor.shapeSignature = None
    return tflite_flatbuffer.pack(model)

"""tract (sonos/tract, pure-Rust ONNX inference; pip ``tract``) as an engine for .onnx.

What tract 0.23 refuses, and why (docs/CONVERTERS.md, "tract"):
- a variable batch on tf2onnx's flatten: tf2onnx writes Keras' Flatten as
  Shape -> Slice -> Concat -> Reshape, so the Reshape's target shape is computed at run time
  and tract's typed model needs it known when the model is built ("shape input is variable").
  This engine therefore builds one model per batch size, with the input fact fixed
  (``N,64,64,3,f32``), and keeps a few of them; a graph with static flatten reshapes also
  loads with a symbolic batch, which is tried first.
- stale ``value_info`` (the int8 export before it dropped them): tract takes those shape hints
  as facts, and their symbolic batch clashes with a fixed input batch at the first Pad.
tract runs on one thread here (its Python binding exposes no thread setting).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrconv.errors import ModelFileError, SsrconvError, clip
from ssrconv.formats import HEADS
from ssrconv.runtimes.base import Runtime

_MAX_MODELS = 4  # runnable models kept, one per batch size


def refuses(path: Path, versions: dict | None = None) -> str | None:
    """Why tract does not run ``path`` by design, or None: tract 0.23's DequantizeLinear reads
    8-bit and int32 tensors only ("tensor is I16, accessed as I32"), so a graph with int16
    QuantizeLinear/DequantizeLinear (the integer ONNX's SSR head) is refused."""
    import onnx

    from ssrconv.formats.onnx import read_model

    try:
        proto = read_model(path)
    except SsrconvError:  # unreadable: the engine's own load reports it
        return None
    types = {i.name: i.data_type for i in proto.graph.initializer}
    wide = (onnx.TensorProto.INT16, onnx.TensorProto.UINT16)

    def int16(node) -> bool:  # by its zero point's type, or (opset 21, no zero point) output_dtype
        by_zero_point = len(node.input) > 2 and types.get(node.input[2]) in wide
        return by_zero_point or any(a.name == "output_dtype" and a.i in wide
                                    for a in node.attribute)

    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") and int16(node)
           for node in proto.graph.node):
        return ("tract 0.23 has no int16 DequantizeLinear (this file's SSR head is int16 QDQ): "
                "run it on onnxruntime or openvino")
    return None


class TractRuntime(Runtime):
    """An .onnx artifact on tract (CPU, one thread)."""

    engine = "tract"

    def __init__(self, path: Path, num_threads: int | None = None, precision: str | None = None):
        import tract

        from ssrconv.formats.onnx import read_model

        from ssrconv.targets import ENGINES, format_of

        self.path = Path(path)
        if getattr(format_of(self.path), "family", None) not in ENGINES["tract"].reads:
            raise ModelFileError(f"{self.path}: tract reads {', '.join(ENGINES['tract'].reads)} only")
        why = refuses(self.path)
        if why:
            raise SsrconvError(f"{self.path}: {why}")
        proto = read_model(self.path)  # checked before tract's parser sees the bytes
        inputs = [i.name for i in proto.graph.input
                  if i.name not in {init.name for init in proto.graph.initializer}]
        outputs = [o.name for o in proto.graph.output]
        if len(inputs) != 1 or not outputs or not set(outputs) <= set(HEADS):
            raise SsrconvError(f"{self.path}: not an SSR-Net export (inputs {inputs}, outputs "
                               f"{outputs})")
        self.heads = tuple(outputs)  # tract names its outputs after nodes: keep the graph order
        self.precision = precision
        self.threads = 1
        self.engine = f"tract-{tract.version()}"
        self._models: dict[int | None, object] = {}
        self.batch_mode = "symbolic"
        try:
            self._models[None] = self._build("N,64,64,3,f32")
        except SsrconvError:
            self.batch_mode = "fixed per batch size"
            self._runnable(1)  # fails now, with tract's reason, if the file cannot load at all

    def _build(self, fact: str):
        import tract

        try:
            model = tract.onnx().load(str(self.path))
            model.set_input_fact(0, fact)
            return model.into_model().into_runnable()
        except Exception as err:  # noqa: BLE001 - tract raises TractError / RuntimeError
            raise ModelFileError(f"{self.path}: tract cannot load it with input {fact} "
                                 f"({_tract_error(err)})") from None

    def _runnable(self, n: int):
        if None in self._models:
            return self._models[None]
        if n not in self._models:
            if len(self._models) >= _MAX_MODELS:
                self._models.pop(next(iter(self._models)))
            self._models[n] = self._build(f"{n},64,64,3,f32")
        return self._models[n]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_batch(batch)
        runnable = self._runnable(len(batch))
        try:
            results = runnable.run([batch])
        except Exception as err:  # noqa: BLE001
            raise SsrconvError(f"{self.path}: tract cannot run it ({_tract_error(err)})") from None
        return {head: self.head_values(head, r.to_numpy(), len(batch))
                for head, r in zip(self.heads, results)}

    def describe(self) -> dict:
        described = super().describe()
        described.update({"batch": self.batch_mode, "threads": 1})
        return described


def _tract_error(err: Exception) -> str:
    """tract's message without its backtrace: the failing node and the first cause."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = lines[:lines.index("Stack backtrace:")] if "Stack backtrace:" in lines else lines
    causes = [line for line in lines if line != "Caused by:"]
    if len(causes) > 2:  # the failing node, then the innermost cause (the actual reason)
        causes = [causes[0], causes[-1]]
    return clip("; ".join(causes), 240) or type(err).__name__

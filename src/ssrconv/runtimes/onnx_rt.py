"""onnxruntime (CPU) as a Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrconv.errors import ModelFileError, SsrconvError, clip
from ssrconv.formats import HEADS
from ssrconv.runtimes.base import Runtime


class OnnxRuntime(Runtime):
    """An .onnx artifact on onnxruntime's CPU execution provider."""

    engine = "onnxruntime-cpu"

    def __init__(self, path: Path, num_threads: int | None = None, precision: str | None = None):
        import contextlib
        import io

        import onnxruntime as ort

        from ssrconv.formats.onnx import read_model

        self.proto = read_model(path)  # parsed and checked by onnx before onnxruntime sees it
        data = self.proto.SerializeToString()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if num_threads:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        try:
            # onnxruntime prints an "EP Error" banner on stdout before re-raising a load error;
            # stdout carries predict's JSON, so the banner is kept off it.
            with contextlib.redirect_stdout(io.StringIO()):
                self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise ModelFileError(f"{path}: onnxruntime cannot load it ({_first_line(err)})") from None
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        if len(inputs) != 1 or not set(outputs) <= set(HEADS) or not outputs:
            raise SsrconvError(f"{path}: not an SSR-Net export (inputs "
                               f"{[i.name for i in inputs]}, outputs {outputs})")
        self.path = Path(path)
        self.input_name = inputs[0].name
        self.heads = tuple(outputs)
        self.threads = num_threads

    def stage_outputs(self, batch: np.ndarray, specs) -> dict[str, np.ndarray]:
        """A second session on the same graph with the stage tensors added as outputs."""
        import onnx
        import onnxruntime as ort

        from ssrconv.stages import locate

        key = tuple(s.key for s in specs)
        if getattr(self, "_stage_key", None) != key:
            proto = onnx.ModelProto()
            proto.CopyFrom(self.proto)
            produced, dequantizers = stage_candidates(proto.graph.node)
            located = [locate(s, self.heads, lambda units: produced) for s in specs]
            names = list(dict.fromkeys(name for name, _ in located))  # fused: shared tensors
            proto.graph.node.extend(dequantizers[n] for n in names if n in dequantizers)
            for name in names:
                proto.graph.output.append(
                    onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._stage_session = ort.InferenceSession(proto.SerializeToString(), options,
                                                       providers=["CPUExecutionProvider"])
            self._stage_names, self._stage_located, self._stage_key = names, located, key
        results = self._stage_session.run(self._stage_names,
                                          {self.input_name: self.check_batch(batch)})
        by_name = {n: np.asarray(r, np.float32).reshape(len(batch), -1)
                   for n, r in zip(self._stage_names, results)}
        return {s.key: by_name[n] if columns is None else by_name[n][:, columns]
                for s, (n, columns) in zip(specs, self._stage_located)}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_batch(batch)
        try:
            results = self.session.run(list(self.heads), {self.input_name: batch})
        except Exception as err:  # noqa: BLE001 - onnxruntime's Fail/InvalidArgument/... types
            raise SsrconvError(f"{self.path}: onnxruntime cannot run it ({_first_line(err)})") from None
        return {head: self.head_values(head, r, len(batch)) for head, r in zip(self.heads, results)}


def stage_candidates(nodes) -> tuple[dict[str, str], dict]:
    """(tensor name -> the float tensor to read, for every tensor the graph computes; the
    DequantizeLinear nodes to add for those read so). In a QDQ graph a quantized value is one
    integer tensor under up to three names (the float before its QuantizeLinear, the integers,
    a DequantizeLinear's float): it is listed once, under the integers' name, read through its
    DequantizeLinear (the value the next node sees, rounding included), or through a new one
    when integer nodes read the integers directly (Concat); a requantization (DequantizeLinear
    -> QuantizeLinear to another scale) is not listed again; a stage tensor matched by name is
    then unique (it matched three tensors, or only the integers, in the integer ONNX rows)."""
    import onnx

    dequantized = {n.input[0]: n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    dequantized_floats = set(dequantized.values())
    quantized = {n.input[0] for n in nodes if n.op_type == "QuantizeLinear"}
    candidates, dequantizers = {}, {}
    for node in nodes:
        if node.op_type == "QuantizeLinear" and node.input[0] in dequantized_floats:
            continue  # a requantization (another scale for the next node): listed already
        for name in node.output:
            if node.op_type == "QuantizeLinear":
                read = dequantized.get(name)
                if read is None:
                    read = f"{name}/stage_dq"
                    dequantizers[read] = onnx.helper.make_node(
                        "DequantizeLinear", [name, *node.input[1:]], [read],
                        name=read, **{a.name: onnx.helper.get_attribute_value(a)
                                      for a in node.attribute if a.name == "axis"})
                candidates[name] = read
            elif node.op_type != "DequantizeLinear" and name not in quantized:
                candidates[name] = name
    return candidates, dequantizers


def _first_line(err: Exception) -> str:
    """The first line of an error message, bounded (runtime messages can be pages long)."""
    return clip(str(err)) or type(err).__name__

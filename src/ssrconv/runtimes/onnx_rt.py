"""onnxruntime (CPU) as a Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrconv.errors import SsrconvError
from ssrconv.runtimes.base import HEADS, Runtime


class OnnxRuntime(Runtime):
    """An .onnx artifact on onnxruntime's CPU execution provider."""

    backend = "onnx"
    engine = "onnxruntime-cpu"

    def __init__(self, path: Path, num_threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if num_threads:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise SsrconvError(f"{path}: onnxruntime cannot load it ({str(err).splitlines()[0][:200]})") from None
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

        from ssrconv.runtimes.stages import find_unique

        key = tuple(s.key for s in specs)
        if getattr(self, "_stage_key", None) != key:
            proto = onnx.load(str(self.path))
            produced = {name: name for node in proto.graph.node for name in node.output}
            names = [find_unique(s, produced) for s in specs]
            for name in names:
                proto.graph.output.append(
                    onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._stage_session = ort.InferenceSession(proto.SerializeToString(), options,
                                                       providers=["CPUExecutionProvider"])
            self._stage_names, self._stage_key = names, key
        results = self._stage_session.run(self._stage_names,
                                          {self.input_name: self.check_batch(batch)})
        return {s.key: np.asarray(r, np.float32).reshape(len(batch), -1)
                for s, r in zip(specs, results)}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        results = self.session.run(list(self.heads), {self.input_name: self.check_batch(batch)})
        return {head: np.asarray(r).reshape(len(r), -1)[:, 0].astype(np.float32)
                for head, r in zip(self.heads, results)}

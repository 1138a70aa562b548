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

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        results = self.session.run(list(self.heads), {self.input_name: self.check_batch(batch)})
        return {head: np.asarray(r).reshape(len(r), -1)[:, 0].astype(np.float32)
                for head, r in zip(self.heads, results)}

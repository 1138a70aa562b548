"""ai-edge-litert (TFLite without TensorFlow) as a Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrconv.errors import SsrconvError
from ssrconv.runtimes.base import HEADS, Runtime, dequantize, quantize


def has_integer_compute(interpreter) -> bool:
    """True when a CONV_2D reads int8 activations (a full-integer model)."""
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():
        if op["op_name"] == "CONV_2D" and op["inputs"][0] in tensors:
            if np.dtype(tensors[op["inputs"][0]]["dtype"]) == np.int8:
                return True
    return False


class TFLiteRuntime(Runtime):
    """A .tflite artifact through its signature runner.

    ``use_xnnpack=None`` picks automatically: XNNPACK for float models; the builtin kernels for
    full-integer models, because XNNPACK fails on the naive int8 SSR-Net graph and the process
    can then die with "double free" (docs/TFLITE.md).
    """

    backend = "tflite"

    def __init__(self, path: Path, num_threads: int | None = None, use_xnnpack: bool | None = None):
        from ssrconv.converters.tflite import load_interpreter

        self.path = Path(path)
        try:
            probe = load_interpreter(self.path, use_xnnpack=False)
        except (ValueError, RuntimeError) as err:
            raise SsrconvError(f"{path}: not a loadable TFLite model ({str(err).splitlines()[0][:200]})") from None
        if use_xnnpack is None:
            use_xnnpack = not has_integer_compute(probe)
        if use_xnnpack or num_threads:
            self.interpreter = load_interpreter(self.path, num_threads=num_threads,
                                                use_xnnpack=use_xnnpack)
        else:
            self.interpreter = probe
        self.engine = "tflite+xnnpack" if use_xnnpack else "tflite-builtin"
        self.threads = num_threads
        try:
            self.runner = self.interpreter.get_signature_runner()
        except ValueError as err:
            raise SsrconvError(f"{path}: TFLite model has no single signature ({err}); "
                               "export it with ssrconv") from None
        self.inputs = self.runner.get_input_details()
        self.outputs = self.runner.get_output_details()
        if list(self.inputs) != ["face_bgr"] or not set(self.outputs) <= set(HEADS):
            raise SsrconvError(f"{path}: not an SSR-Net export (inputs {list(self.inputs)}, "
                               f"outputs {list(self.outputs)})")
        self.heads = tuple(h for h in HEADS if h in self.outputs)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_batch(batch)
        detail = self.inputs["face_bgr"]
        feed = batch
        if np.dtype(detail["dtype"]).kind in "iu":
            scale, zero_point = detail["quantization"]
            feed = quantize(batch, scale, zero_point, detail["dtype"])
        results = self.runner(face_bgr=feed)
        out = {}
        for head in self.heads:
            value = np.asarray(results[head])
            d = self.outputs[head]
            if np.dtype(d["dtype"]).kind in "iu":
                value = dequantize(value, *d["quantization"])
            out[head] = value.reshape(len(value), -1)[:, 0].astype(np.float32)
        return out

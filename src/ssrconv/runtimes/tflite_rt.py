"""ai-edge-litert (TFLite without TensorFlow) as a Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrconv.errors import SsrconvError, clip
from ssrconv.formats import HEADS
from ssrconv.runtimes.base import Runtime, dequantize, quantize


# The first LiteRT with a QUANTIZE from int8 to int16 (the integer int8 file's int16 head is
# entered through it): 1.4.0, the newest Linux aarch64 wheel on PyPI, refuses the file at
# allocation ("quantize.cc:138 output->type == kTfLiteUInt8 || output->type == kTfLiteInt8
# was not true"); 2.x on x86 runs it (docs/ARM64.md).
INT8_TO_INT16_QUANTIZE_SINCE = 2


def refuses(path: Path, versions: dict | None = None) -> str | None:
    """Why LiteRT (at ``versions``' ai-edge-litert, else the installed one) cannot run
    ``path`` by design, or None: before version 2 it has no int8 -> int16 QUANTIZE."""
    from importlib import metadata

    from ssrconv.formats import tflite_flatbuffer as tfb

    if versions is not None:
        version = versions.get("ai-edge-litert")
    else:
        try:
            version = metadata.version("ai-edge-litert")
        except metadata.PackageNotFoundError:
            return None  # not installed: why_not_run says so
    if not version or int(version.split(".")[0]) >= INT8_TO_INT16_QUANTIZE_SINCE:
        return None
    try:
        _, sg, ops = tfb.operators(Path(path).read_bytes())
    except Exception:  # noqa: BLE001 - unreadable: the engine's own load reports it
        return None
    types = tfb.schema().TensorType
    int8, int16 = types.INT8, types.INT16
    if any(name == "QUANTIZE" and sg.tensors[op.inputs[0]].type == int8
           and sg.tensors[op.outputs[0]].type == int16 for name, op in ops):
        return (f"LiteRT {version} has no int8 -> int16 QUANTIZE (this integer file's int16 "
                "head; LiteRT 2.x has it, and has no Linux aarch64 wheel): on arm64 Linux "
                "export --precision int8-mixed, fp16 or the ONNX files")
    return None


def has_int8_dense(interpreter) -> bool:
    """True when a FULLY_CONNECTED op computes in int8.

    That is where a naive full-int8 SSR-Net breaks XNNPACK: dead Dense units calibrate to a
    ~1e-8 output scale, the FC requantization scale exceeds XNNPACK's limit of 256, the delegate
    fails in allocate_tensors and ai-edge-litert 2.3 then dies with "double free"
    (docs/INT8.md). ssrconv's int8 export keeps the dense head in float.
    """
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():
        if op["op_name"] == "FULLY_CONNECTED" and op["outputs"][0] in tensors:
            if np.dtype(tensors[op["outputs"][0]]["dtype"]) == np.int8:
                return True
    return False


class TFLiteRuntime(Runtime):
    """A .tflite artifact through its signature runner.

    ``use_xnnpack=None`` picks automatically: XNNPACK, except for models with int8 dense
    layers (see :func:`has_int8_dense`), which get the builtin kernels.
    """

    stage_engine = "tflite-builtin"

    def __init__(self, path: Path, num_threads: int | None = None, precision: str | None = None,
                 use_xnnpack: bool | None = None):
        from ssrconv.formats.tflite import load_interpreter, read_model

        self.path = Path(path)
        self._data = read_model(self.path)  # read and checked once, before C++ sees it
        why = refuses(self.path)
        if why:
            raise SsrconvError(f"{self.path}: {why}")
        probe = load_interpreter(self.path, use_xnnpack=False, data=self._data)
        if use_xnnpack is None:
            use_xnnpack = not has_int8_dense(probe)
        if use_xnnpack or num_threads:
            self.interpreter = load_interpreter(self.path, num_threads=num_threads,
                                                use_xnnpack=use_xnnpack, data=self._data)
        else:
            self.interpreter = probe
        # XNNPACK has no int16 kernels: on a 16x8 file the delegate takes no operator, and the
        # report must not say XNNPACK ran it.
        delegated = use_xnnpack and any(op["op_name"] == "DELEGATE"
                                        for op in self.interpreter._get_ops_details())
        self.engine = "tflite+xnnpack" if delegated else "tflite-builtin"
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

    def stage_outputs(self, batch: np.ndarray, specs) -> dict[str, np.ndarray]:
        """Stage tensors from a second interpreter that keeps every intermediate tensor
        (builtin kernels: a delegate's internal tensors are not preserved), dequantized."""
        from ssrconv.formats.tflite import load_interpreter
        from ssrconv.stages import locate

        key = tuple(s.key for s in specs)
        if getattr(self, "_stage_key", None) != key:
            interpreter = load_interpreter(self.path, preserve_all_tensors=True, data=self._data)
            tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
            # a QUANTIZE's output holds its input's values on another scale (an integer file
            # requantizes some stage tensors for the next operator): the input is the stage
            produced = {i for op in interpreter._get_ops_details() for i in op["outputs"]
                        if op["op_name"] != "QUANTIZE"}

            def candidates(units):
                return {tensors[i]["name"]: tensors[i] for i in produced
                        if len(tensors[i]["shape_signature"]) == 2
                        and tensors[i]["shape_signature"][-1] == units}

            chosen = [locate(spec, self.heads, candidates) for spec in specs]
            self._stage_interpreter, self._stage_tensors, self._stage_key = interpreter, chosen, key
        interpreter = self._stage_interpreter
        runner = interpreter.get_signature_runner()
        runner(face_bgr=self._feed(self.check_batch(batch)))
        out = {}
        for spec, (detail, columns) in zip(specs, self._stage_tensors):
            value = interpreter.get_tensor(detail["index"])
            if np.dtype(detail["dtype"]).kind in "iu":
                value = dequantize(value, *detail["quantization"])
            value = np.asarray(value, np.float32).reshape(len(batch), -1)
            out[spec.key] = value if columns is None else value[:, columns]
        return out

    def _feed(self, batch: np.ndarray) -> np.ndarray:
        detail = self.inputs["face_bgr"]
        if np.dtype(detail["dtype"]).kind in "iu":
            scale, zero_point = detail["quantization"]
            return quantize(batch, scale, zero_point, detail["dtype"])
        return batch

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_batch(batch)
        try:
            results = self.runner(face_bgr=self._feed(batch))
        except (ValueError, RuntimeError) as err:  # a kernel refused to prepare or invoke
            raise SsrconvError(f"{self.path}: the TFLite runtime cannot run it "
                               f"({clip(str(err))})") from None
        out = {}
        for head in self.heads:
            value = np.asarray(results[head])
            d = self.outputs[head]
            if np.dtype(d["dtype"]).kind in "iu":
                value = dequantize(value, *d["quantization"])
            out[head] = self.head_values(head, value, len(batch))
        return out

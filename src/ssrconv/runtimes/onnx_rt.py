"""onnxruntime (CPU) as a Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrconv.errors import ModelFileError, SsrconvError
from ssrconv.runtimes.base import HEADS, Runtime


def read_onnx(path: Path):
    """``(bytes, ModelProto)`` of an .onnx file, parsed and checked by onnx before any C++
    runtime sees it; ModelFileError (one line) for an unreadable or invalid file."""
    import onnx

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        proto = onnx.load_model_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as err:  # noqa: BLE001 - protobuf DecodeError, ValidationError, ...
        raise ModelFileError(f"{path}: not a valid ONNX model ({_first_line(err)}); re-export "
                             "it with ssrconv export") from None
    return data, proto


class OnnxRuntime(Runtime):
    """An .onnx artifact on onnxruntime's CPU execution provider."""

    backend = "onnx"
    engine = "onnxruntime-cpu"

    def __init__(self, path: Path, num_threads: int | None = None):
        import contextlib
        import io

        import onnxruntime as ort

        # Parsed and checked by onnx first: onnxruntime's own parse errors quote the corrupt
        # bytes and then fail to decode them (UnicodeDecodeError), after printing a banner.
        data, self.proto = read_onnx(path)
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

        from ssrconv.runtimes.stages import find_unique

        key = tuple(s.key for s in specs)
        if getattr(self, "_stage_key", None) != key:
            proto = onnx.ModelProto()
            proto.CopyFrom(self.proto)
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
        batch = self.check_batch(batch)
        try:
            results = self.session.run(list(self.heads), {self.input_name: batch})
        except Exception as err:  # noqa: BLE001 - onnxruntime's Fail/InvalidArgument/... types
            raise SsrconvError(f"{self.path}: onnxruntime cannot run it ({_first_line(err)})") from None
        return {head: self.head_values(head, r, len(batch)) for head, r in zip(self.heads, results)}


def _first_line(err: Exception) -> str:
    """The first line of an error message, bounded (runtime messages can be pages long)."""
    return (str(err).splitlines() or [type(err).__name__])[0][:200]

"""OpenVINO (CPU plugin) as an engine for .onnx, .tflite and its own IR (``*.openvino/``).

OpenVINO never changes precision behind the user's back here: its CPU plugin picks bf16 by
default on CPUs with AMX/avx512_bf16 (measured: 0.44 y max age diff on an fp32 ONNX, outside
the fp32 budget, with no warning), so this engine always sets ``INFERENCE_PRECISION_HINT`` from
the artifact's precision (f32 for every precision but an explicit bf16 artifact) and reports
what the compiled model says it uses (``executed_precision``, ``engine``). A CPU without bf16
support runs a bf16 request in f32, and says so: the engine then reads ``openvino-cpu-f32``.

Convolutions that read a *signed* quantized tensor (the int8 .tflite's tanh stream) run in f32
on the file's quantized values (:func:`float_signed_input_convs`): the CPU plugin feeds them to
its u8 kernels shifted by +128, whose int16 pair sums saturate on x86 CPUs without VNNI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrconv.errors import ModelFileError, SsrconvError, clip
from ssrconv.formats import HEADS
from ssrconv.runtimes.base import Runtime

# Artifact precision -> the float precision OpenVINO is told to execute. Only an explicit bf16
# artifact runs in bf16; fp16 weights are decompressed and computed in f32, int8 QDQ graphs run
# their quantized convolutions in int8 and the rest in f32.
_HINTS = {"bf16": "bf16"}
_PRECISION_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}

# Compiled models kept per batch size (each is compiled for a static shape: OpenVINO's CPU
# plugin runs static shapes without its dynamic-shape bookkeeping).
_MAX_COMPILED = 4



def _format(path: Path):
    """The format of ``path`` (from the table), refused unless OpenVINO reads it. The bytes
    were verified by :func:`ssrconv.artifacts.open_artifact` before this runtime got them."""
    from ssrconv.targets import ENGINES, format_of

    fmt = format_of(path)
    reads = ENGINES["openvino"].reads
    if fmt is None or fmt.family not in reads:
        raise ModelFileError(f"{path}: OpenVINO reads {', '.join(reads)} artifacts, not "
                             f"{path.suffix or '(no suffix)'!r}")
    return fmt


def _ir_precision(model) -> str | None:
    """The precision an ssrconv IR records for itself (rt_info ``ssrconv.precision``)."""
    try:
        return str(model.get_rt_info(["ssrconv.precision"]).astype(str))
    except RuntimeError:  # no such rt_info entry: not an ssrconv IR
        return None


class OpenVinoRuntime(Runtime):
    """An .onnx, .tflite or OpenVINO IR artifact on OpenVINO's CPU plugin.

    ``precision`` is the artifact's precision from its manifest (None for an unmanaged file: an
    ssrconv IR then supplies its own; anything else runs in f32). ``num_threads`` sets
    ``INFERENCE_NUM_THREADS``; OpenVINO's Snippets JIT is disabled
    (``SNIPPETS_MODE=DISABLE``): 2026.4 segfaults compiling fused subgraphs for one thread and a
    static batch.
    """

    def __init__(self, path: Path, num_threads: int | None = None, precision: str | None = None):
        import openvino as ov

        self.path = Path(path)
        if not self.path.exists():
            raise ModelFileError(f"{self.path}: no such file")
        fmt = _format(self.path)
        source = fmt.inner_artifact(self.path) or self.path
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(str(source))
        except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError/GeneralFailure
            raise ModelFileError(f"{self.path}: OpenVINO cannot read it ({_ov_error(err)})") from None
        self.float_convs = float_signed_input_convs(self.model)
        if precision is None:  # an ssrconv IR records its own; other files run in f32
            precision = _ir_precision(self.model)
        self.precision = precision
        self.requested_hint = _HINTS.get(precision or "", "f32")
        self.threads = num_threads
        if len(self.model.inputs) != 1:
            raise SsrconvError(f"{self.path}: not an SSR-Net export ({len(self.model.inputs)} inputs)")
        heads = [next((n for n in o.get_names() if n in HEADS), o.get_any_name())
                 for o in self.model.outputs]
        renamed = getattr(fmt.reader(), "output_names", None)  # names the frontend dropped
        if not set(heads) <= set(HEADS) and renamed is not None:
            heads = renamed(self.path)
        if not heads or not set(heads) <= set(HEADS) or len(set(heads)) != len(heads):
            raise SsrconvError(f"{self.path}: not an SSR-Net export (outputs {heads})")
        self.heads = tuple(heads)
        self._compiled: dict[int, tuple] = {}
        compiled, _ = self._request(1)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.executed_precision = _PRECISION_NAMES.get(hint.get_type_name(), hint.get_type_name())
        self.int8_ops = _int8_ops(compiled)
        self.engine = f"openvino-cpu-{hint.get_type_name()}" + ("+i8" if self.int8_ops else "")

    def _config(self) -> dict:
        # No CPU pinning: on a shared machine a pinned thread waits for its one busy core
        # (measured with load 10 on 2 cores: p10 27.5 ms per face pinned, 2.5 ms not).
        # Snippets JIT off for every thread count: 2026.4 segfaulted compiling the fused export
        # graph with one thread (session 2) and, on this AVX2 EPYC, with the default threads too
        # (parity --engine openvino on the fast-graph fp32 .onnx: SIGSEGV in compile).
        config = {"INFERENCE_PRECISION_HINT": self.requested_hint, "NUM_STREAMS": 1,
                  "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
                  "SNIPPETS_MODE": "DISABLE"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        return config

    def _request(self, n: int):
        """(compiled model, infer request) for a static batch of ``n``, compiled on first use."""
        if n in self._compiled:
            return self._compiled[n]
        if len(self._compiled) >= _MAX_COMPILED:
            self._compiled.pop(next(iter(self._compiled)))
        model = self.model.clone()
        try:
            model.reshape([n, 64, 64, 3])
            compiled = self.core.compile_model(model, "CPU", self._config())
        except Exception as err:  # noqa: BLE001
            raise ModelFileError(f"{self.path}: OpenVINO cannot compile it for a batch of {n} "
                                 f"({_ov_error(err)})") from None
        self._compiled[n] = (compiled, compiled.create_infer_request())
        return self._compiled[n]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import openvino as ov

        batch = self.check_batch(batch)
        _, request = self._request(len(batch))
        try:
            # A tensor over the caller's array (no copy) and a reused infer request: measured
            # 60-120 us per call cheaper than ``compiled([batch])``.
            request.set_input_tensor(ov.Tensor(batch, shared_memory=True))
            request.infer()
        except Exception as err:  # noqa: BLE001
            raise SsrconvError(f"{self.path}: OpenVINO cannot run it ({_ov_error(err)})") from None
        return {head: self.head_values(head, request.get_output_tensor(i).data.copy(), len(batch))
                for i, head in enumerate(self.heads)}

    def stage_outputs(self, batch: np.ndarray, specs) -> dict[str, np.ndarray]:
        """The stage tensors, from a second compiled model with them added as outputs (the
        tensor names of the source graph survive in OpenVINO's: tf2onnx's, the .tflite's kept
        stage names, the IR's); a fast-graph file's stages are columns of its fused stage
        tensors (:func:`ssrconv.stages.locate`)."""
        import openvino as ov

        from ssrconv.stages import locate

        batch = self.check_batch(batch)
        key = (tuple(s.key for s in specs), len(batch))
        if getattr(self, "_stage_key", None) != key:
            model = self.model.clone()
            model.reshape([len(batch), 64, 64, 3])
            rank2 = {}
            for op in model.get_ordered_ops():
                for port in op.outputs():
                    shape = port.get_partial_shape()
                    if shape.rank.is_static and shape.rank.get_length() == 2 and shape[1].is_static:
                        for name in port.get_names():
                            rank2[name] = (port, shape[1].get_length())

            def candidates(units):
                return {name: port for name, (port, width) in rank2.items() if width == units}

            located = [locate(spec, self.heads, candidates) for spec in specs]
            unique = list(dict.fromkeys(port for port, _ in located))  # fused: shared tensors
            model.add_outputs(unique)
            try:
                compiled = self.core.compile_model(model, "CPU", self._config())
            except Exception as err:  # noqa: BLE001
                raise SsrconvError(f"{self.path}: OpenVINO cannot compile it with the stage "
                                   f"tensors as outputs ({_ov_error(err)})") from None
            first = len(model.outputs) - len(unique)
            position = {port: first + i for i, port in enumerate(unique)}
            self._stage_request = compiled.create_infer_request()
            self._stage_located = [(position[port], columns) for port, columns in located]
            self._stage_key = key
        self._stage_request.set_input_tensor(ov.Tensor(batch, shared_memory=True))
        self._stage_request.infer()
        out = {}
        for spec, (index, columns) in zip(specs, self._stage_located):
            value = np.asarray(self._stage_request.get_output_tensor(index).data,
                               np.float32).reshape(len(batch), -1)
            out[spec.key] = (value if columns is None else value[:, columns]).copy()
        return out

    def describe(self) -> dict:
        described = super().describe()
        described.update({"executed_precision": self.executed_precision,
                          "requested_precision_hint": self.requested_hint,
                          "int8_ops": self.int8_ops, "float_signed_input_convs": self.float_convs,
                          "threads": self.threads})
        return described


def float_signed_input_convs(model) -> int:
    """Run every convolution that reads a signed quantized tensor (a FakeQuantize whose output
    range goes below 0) in f32: its weights become their dequantized f32 constant, so OpenVINO's
    low-precision transformations leave it a FakeQuantize -> f32 convolution, the same function
    as the file's int8 arithmetic. Returns how many convolutions were changed.

    Why: the CPU plugin gives convolutions an i8 input only on AMX / AVX2-VNNI-2 CPUs
    (``Transformations::Lpt`` in intel_cpu's transformation_pipeline.cpp); elsewhere a signed
    input is shifted to u8 (+128, zero point 128) and multiplied with ``VPMADDUBSW``, which on
    x86 without VNNI adds pairs of u8 x s8 products into int16 with saturation. Shifted
    activations sit around 128, so pairs of same-sign weights of up to 127 saturate: on the int8
    .tflite's tanh-stream conv2d_6, 32% of the outputs (age mean 0.405 / p99 2.07 y against
    LiteRT's 0.166 / 0.90 on the same file). Unsigned (relu) inputs stay int8: they sit near
    zero: measured within max 0.03 y of the f32 function (docs/CONVERTERS.md, OpenVINO).
    Applied on every CPU, so the same file gives the same graph everywhere (on VNNI or AMX CPUs
    these convolutions would be exact in int8 too; they are about 2.3 of the 3.8 M int8
    multiply-adds per head).
    """
    from openvino import opset13 as ops

    changed = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution"):
            continue
        source = op.input_value(0).get_node()
        if source.get_type_name() != "FakeQuantize":
            continue
        output_low = _constant(source.input_value(3))
        weights = op.input_value(1)
        if output_low is None or float(np.min(output_low)) >= 0 or \
                weights.get_node().get_type_name() == "Constant":
            continue
        value = _constant(weights)
        if value is None and weights.get_node().get_type_name() == "Reshape" \
                and op.get_input_partial_shape(1).is_static:
            # A GroupConvolution's weights (the fast graph's groups=2 convs) are reshaped to
            # [groups, out, in, h, w] by a shape computed with ShapeOf: fold the data, then
            # reshape it to the static shape the convolution reads.
            data = _constant(weights.get_node().input_value(0))
            if data is not None:
                value = data.reshape(op.get_input_partial_shape(1).to_shape())
        if value is None or value.dtype != np.float32:
            continue
        op.input(1).replace_source_output(ops.constant(value).output(0))
        changed += 1
    return changed


def _constant(output) -> np.ndarray | None:
    """The value of an output computed from constants only (e.g. the weights' i8 Constant ->
    Convert -> Multiply by the scales), None when it depends on anything else."""
    import openvino as ov

    node = output.get_node()
    if node.get_type_name() == "Constant":
        return node.get_data()
    if node.get_type_name() == "Parameter" or node.get_input_size() == 0:
        return None
    inputs = [_constant(port.get_source_output()) for port in node.inputs()]
    if any(value is None for value in inputs):
        return None
    results = [ov.Tensor(port.get_element_type(), port.get_shape()) for port in node.outputs()]
    if not node.evaluate(results, [ov.Tensor(np.ascontiguousarray(v)) for v in inputs]):
        return None
    return results[output.get_index()].data.copy()


def _int8_ops(compiled) -> int:
    """How many ops of the compiled (runtime) graph execute in u8/i8."""
    count = 0
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "runtimePrecision" in info and str(info["runtimePrecision"].astype(str)) in ("u8", "i8"):
            count += 1
    return count


def _ov_error(err: Exception) -> str:
    """The informative line of an OpenVINO exception (they start with 'Exception from
    src/...cpp:NN:' and 'Check ... failed at ...' lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return clip((useful or lines or [type(err).__name__])[0])

"""TensorFlow Lite Micro (pip ``tflite-micro``) as a Runtime: the microcontroller interpreter
with its reference kernels, run on the host. It reads integer-only ``.tflite`` files (what a
microcontroller or an Ethos-U NPU runs) and finds the smallest tensor arena the file allocates
in ("MCU RAM"), by bisection."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ssrconv.errors import ModelFileError, SsrconvError
from ssrconv.runtimes.base import HEADS, Runtime, dequantize, quantize

# Bisection bounds: the fp32 file needs 1,198,128 bytes (docs/INT8.md); 16 MiB is far above any
# SSR-Net file and far below what a corrupt one could ask for.
MAX_ARENA = 16 * 2**20
ARENA_STEP = 16  # TFLM aligns its allocations to 16 bytes


def refuses(path: Path) -> str | None:
    """Why TFLite Micro does not run ``path`` by design (a float operator or a DEQUANTIZE of
    weights: the microcontroller targets are integer-only), or None."""
    from ssrconv.converters.tflite_flatbuffer import integer_only_violations

    try:
        violations = integer_only_violations(Path(path).read_bytes())
    except Exception:  # noqa: BLE001 - unreadable: the engine's own load reports it
        return None
    if violations:
        names = ", ".join(sorted(set(violations)))
        return (f"TFLite Micro runs integer-only files; this one has {len(violations)} float "
                f"operators ({names}): export --to tflite --precision int16x8")
    return None


def _interpreter(data: bytes, arena: int):
    from tflite_micro.python.tflite_micro import runtime

    from ssrconv._imports import silenced_fd2

    with silenced_fd2():  # TFLM reports a too-small arena on stderr before raising
        return runtime.Interpreter.from_bytes(data, arena_size=arena)


@lru_cache(maxsize=16)
def smallest_arena(data: bytes) -> int:
    """The smallest tensor arena (bytes, a multiple of 16) in which TFLite Micro allocates
    ``data``: bisection between 0 and MAX_ARENA (allocation succeeds for every arena above the
    smallest). ModelFileError when even MAX_ARENA does not allocate."""
    try:
        _interpreter(data, MAX_ARENA)
    except (RuntimeError, ValueError) as err:
        raise ModelFileError(f"TFLite Micro cannot allocate this model in {MAX_ARENA:,} bytes "
                             f"({str(err).splitlines()[0][:200]})") from None
    low, high = 0, MAX_ARENA // ARENA_STEP  # in steps: low fails, high allocates
    while high - low > 1:
        middle = (low + high) // 2
        try:
            _interpreter(data, middle * ARENA_STEP)
            high = middle
        except (RuntimeError, ValueError):
            low = middle
    return high * ARENA_STEP


def output_names(data: bytes) -> list[str]:
    """The signature name of each subgraph output, in TFLite Micro's output order."""
    from ssrconv.converters.tflite_flatbuffer import load

    model = load(data)
    graph = model.subgraphs[0]
    by_tensor = {}
    for signature in model.signatureDefs or []:
        for tensor_map in signature.outputs or []:
            by_tensor[tensor_map.tensorIndex] = tensor_map.name.decode()
    return [by_tensor.get(int(t), f"output_{k}") for k, t in enumerate(graph.outputs)]


class TflmRuntime(Runtime):
    """An integer-only .tflite on TFLite Micro's reference kernels, one face per invoke, in the
    smallest arena it allocates in (``self.arena_bytes``)."""

    backend = "tflite"
    engine = "tflite-micro"

    def __init__(self, path: Path, num_threads: int | None = None, precision: str | None = None):
        from ssrconv.converters.tflite import read_model

        self.path = Path(path)
        why = refuses(self.path)
        if why:
            raise SsrconvError(f"{path}: {why}")
        data = read_model(self.path)
        self.arena_bytes = smallest_arena(data)
        self.flash_bytes = len(data)
        self.interpreter = _interpreter(data, self.arena_bytes)
        self.input = self.interpreter.get_input_details(0)
        names = output_names(data)
        if not set(names) <= set(HEADS):
            raise SsrconvError(f"{path}: not an SSR-Net export (outputs {names})")
        self._outputs = [(k, name, self.interpreter.get_output_details(k))
                         for k, name in enumerate(names)]
        self.heads = tuple(h for h in HEADS if h in names)
        self.batch = int(self.input["shape"][0])

    def _params(self, detail):
        params = detail["quantization_parameters"]
        scales = np.asarray(params["scales"])
        return (float(scales[0]), int(params["zero_points"][0])) if scales.size else None

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_batch(batch)
        if len(batch) % self.batch:
            raise SsrconvError(f"{self.path}: TFLite Micro runs {self.batch} faces per call")
        params = self._params(self.input)
        out = {head: [] for head in self.heads}
        for start in range(0, len(batch), self.batch):
            chunk = batch[start:start + self.batch]
            if params is not None:
                chunk = quantize(chunk, *params, self.input["dtype"])
            try:
                self.interpreter.set_input(chunk, 0)
                self.interpreter.invoke()
            except (RuntimeError, ValueError) as err:
                raise SsrconvError(f"{self.path}: TFLite Micro cannot run it "
                                   f"({str(err).splitlines()[0][:200]})") from None
            for k, name, detail in self._outputs:
                value = np.asarray(self.interpreter.get_output(k))
                q = self._params(detail)
                out[name].append(dequantize(value, *q) if q is not None else value)
        return {head: self.head_values(head, np.concatenate([np.ravel(v) for v in values]),
                                       len(batch))
                for head, values in out.items()}

    def describe(self) -> dict:
        return {**super().describe(), "mcu_ram_bytes": self.arena_bytes,
                "flash_bytes": self.flash_bytes}


def not_timed_reason() -> str:
    """TFLite Micro's reference kernels on this host say nothing about a microcontroller's
    speed."""
    return ("latency: not measured (TFLite Micro's reference kernels on the host are not a "
            "microcontroller; Vela estimates the Ethos-U time)")

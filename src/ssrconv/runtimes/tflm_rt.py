"""TensorFlow Lite Micro (pip ``tflite-micro``) as a Runtime: the microcontroller interpreter
with its reference kernels, run on the host. It reads integer-only ``.tflite`` files (what a
microcontroller or an Ethos-U NPU runs) and finds the smallest tensor arena the file allocates
in ("MCU RAM"), by bisection."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrconv.errors import SsrconvError
from ssrconv.mcu import interpreter, smallest_arena
from ssrconv.targets import format_of
from ssrconv.formats import HEADS
from ssrconv.runtimes.base import Runtime, dequantize, quantize

def refuses(path: Path, versions: dict | None = None) -> str | None:
    """Why TFLite Micro does not run ``path`` by design (a float operator or a DEQUANTIZE of
    weights: the microcontroller targets are integer-only), or None."""
    from ssrconv.formats.tflite_flatbuffer import integer_only_violations

    try:
        violations = integer_only_violations(Path(path).read_bytes())
    except Exception:  # noqa: BLE001 - unreadable: the engine's own load reports it
        return None
    if violations:
        names = ", ".join(sorted(set(violations)))
        return (f"TFLite Micro runs integer-only files; this one has {len(violations)} float "
                f"operators ({names}): export --to tflite --precision int8 (or int16x8)")
    return None


class TflmRuntime(Runtime):
    """An integer-only .tflite on TFLite Micro's reference kernels, one face per invoke, in the
    smallest arena it allocates in (``self.arena_bytes``)."""

    backend = "tflite"
    engine = "tflite-micro"

    def __init__(self, path: Path, num_threads: int | None = None, precision: str | None = None):
        from ssrconv.formats.tflite import output_names, read_model

        self.path = Path(path)
        fmt = format_of(self.path)  # an Ethos-U package: its pre-Vela integer file
        source = (fmt.inner_artifact(self.path) if fmt is not None else None) or self.path
        why = refuses(source)
        if why:
            raise SsrconvError(f"{path}: {why}")
        data = read_model(source)
        self.arena_bytes = smallest_arena(data)
        self.flash_bytes = len(data)
        self.interpreter = interpreter(data, self.arena_bytes)
        self.input = self.interpreter.get_input_details(0)
        names = output_names(source)
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

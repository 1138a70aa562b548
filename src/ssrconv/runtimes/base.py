"""The Runtime interface and the quantization helpers every backend shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ssrconv.errors import SsrconvError


class Runtime(ABC):
    """A loaded artifact. ``engine`` names what actually executes it (e.g. ``tflite+xnnpack``,
    ``coreml-mil-numpy``), so reports never pass one engine off as another."""

    engine: str = ""
    path: Path | None = None
    heads: tuple[str, ...] = ()
    # What computes the stage tensors of stage_outputs, when not ``engine`` (TFLite reads them
    # from a delegate-free interpreter: XNNPACK does not preserve intermediate tensors).
    stage_engine: str | None = None

    @abstractmethod
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run an N x 64 x 64 x 3 float32 BGR batch; returns {head: (N,) float32}."""

    def check_batch(self, batch) -> np.ndarray:
        """The batch as contiguous float32 N x 64 x 64 x 3, or a clear error."""
        array = np.asarray(batch)
        if array.ndim != 4 or array.shape[1:] != (64, 64, 3):
            raise SsrconvError(f"expected a batch of N x 64 x 64 x 3 BGR faces, got shape "
                               f"{array.shape}")
        return np.ascontiguousarray(array, dtype=np.float32)

    def stage_outputs(self, batch: np.ndarray, specs) -> dict[str, np.ndarray]:
        """The stage tensors named by ``specs`` (see :mod:`ssrconv.stages`) for
        ``batch``, as float32 {spec.key: (N, units)}; StagesUnavailable when this runtime
        cannot expose them."""
        from ssrconv.stages import StagesUnavailable

        raise StagesUnavailable(f"{self.engine} exposes the model outputs only")

    def head_values(self, head: str, value, n: int) -> np.ndarray:
        """One head's output for a batch of ``n`` as (n,) float32; a clear error when the model
        gave anything but one value per face (a corrupt or foreign model can)."""
        value = np.asarray(value)
        if value.size != n:
            raise SsrconvError(f"{self.path}: output {head!r} has shape {value.shape} for a batch "
                               f"of {n} faces (expected one value per face); not an SSR-Net export")
        return value.reshape(n).astype(np.float32)

    def close(self) -> None:
        """Release what the runtime holds beyond memory (a browser, a server); idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def backend(self) -> str:
        """The format family this runtime serves, asked of the table from its path ("" when it
        has none; the reference runtimes name themselves)."""
        from ssrconv.targets import format_of

        fmt = format_of(self.path) if self.path is not None else None
        return fmt.family if fmt is not None else ""

    def describe(self) -> dict:
        return {"backend": self.backend, "engine": self.engine,
                "path": str(self.path) if self.path else None, "heads": list(self.heads)}


def _delegated(name: str):
    return property(lambda self: getattr(self.inner, name))


class StaticBatchRuntime(Runtime):
    """A runtime for a file whose input batch is fixed (``ssrconv export --batch N``): every
    call is fed to ``inner`` in chunks of exactly ``batch`` faces (the last one padded by
    repeating its final face; the padding's outputs are dropped), so callers keep passing any
    number of faces. Everything else is ``inner``'s."""

    backend, engine, path = _delegated("backend"), _delegated("engine"), _delegated("path")
    heads, stage_engine = _delegated("heads"), _delegated("stage_engine")

    def __init__(self, inner: Runtime, batch: int):
        self.inner, self.batch = inner, int(batch)

    def __getattr__(self, name):
        if name == "inner":  # not set yet (unpickling, a failed __init__): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _chunks(self, batch: np.ndarray, call) -> dict[str, np.ndarray]:
        batch = self.check_batch(batch)
        outputs: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(batch), self.batch):
            chunk = batch[start:start + self.batch]
            real = len(chunk)
            if real < self.batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - real, axis=0)])
            for key, value in call(chunk).items():
                outputs.setdefault(key, []).append(np.asarray(value)[:real])
        return {key: np.concatenate(parts) for key, parts in outputs.items()}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._chunks(batch, self.inner.run)

    def stage_outputs(self, batch: np.ndarray, specs) -> dict[str, np.ndarray]:
        return self._chunks(batch, lambda chunk: self.inner.stage_outputs(chunk, specs))

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> dict:
        return {**self.inner.describe(), "static_batch": self.batch}


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Float to integer with the model's own parameters (round half to even, as TFLite does)."""
    info = np.iinfo(dtype)
    q = np.round(values / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer to float32 with the model's own parameters."""
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)

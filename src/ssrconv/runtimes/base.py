"""The Runtime interface and the quantization helpers every backend shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ssrconv.errors import SsrconvError

HEADS = ("age", "p_male")


class Runtime(ABC):
    """A loaded artifact. ``engine`` names what actually executes it (e.g. ``tflite+xnnpack``,
    ``coreml-mil-numpy``), so reports never pass one engine off as another."""

    backend: str = ""
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
        """The stage tensors named by ``specs`` (see :mod:`ssrconv.runtimes.stages`) for
        ``batch``, as float32 {spec.key: (N, units)}; StagesUnavailable when this runtime
        cannot expose them."""
        from ssrconv.runtimes.stages import StagesUnavailable

        raise StagesUnavailable(f"{self.engine} exposes the model outputs only")

    def head_values(self, head: str, value, n: int) -> np.ndarray:
        """One head's output for a batch of ``n`` as (n,) float32; a clear error when the model
        gave anything but one value per face (a corrupt or foreign model can)."""
        value = np.asarray(value)
        if value.size != n:
            raise SsrconvError(f"{self.path}: output {head!r} has shape {value.shape} for a batch "
                               f"of {n} faces (expected one value per face); not an SSR-Net export")
        return value.reshape(n).astype(np.float32)

    def describe(self) -> dict:
        return {"backend": self.backend, "engine": self.engine,
                "path": str(self.path) if self.path else None, "heads": list(self.heads)}


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Float to integer with the model's own parameters (round half to even, as TFLite does)."""
    info = np.iinfo(dtype)
    q = np.round(values / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer to float32 with the model's own parameters."""
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)

"""One Runtime per backend, the single place each backend is loaded and driven.

Every runtime takes a float32 BGR batch (N x 64 x 64 x 3, 0..255) and returns
``{"age": (N,), "p_male": (N,)}`` (the heads the artifact has), handling quantized I/O with the
model's own scale and zero-point. Parity, bench and predict all go through :func:`load_runtime`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ssrconv.errors import SsrconvError
from ssrconv.runtimes.base import Runtime

BACKENDS = ("keras", "onnx", "tflite", "coreml")
_SUFFIX_BACKEND = {".onnx": "onnx", ".tflite": "tflite", ".mlpackage": "coreml", ".h5": "keras"}


class RuntimeError_(SsrconvError):
    """An artifact could not be loaded or run by its runtime."""


def backend_for(path: str | os.PathLike) -> str:
    """The backend that runs an artifact, from its suffix."""
    suffix = Path(path).suffix.lower()
    try:
        return _SUFFIX_BACKEND[suffix]
    except KeyError:
        raise RuntimeError_(f"{path}: unknown artifact type {suffix or '(no suffix)'!r}; expected "
                            ".onnx, .tflite or .mlpackage") from None


def load_runtime(path: str | os.PathLike | None = None, backend: str | None = None,
                 num_threads: int | None = None, **options) -> Runtime:
    """Load an artifact (or the Keras reference when ``backend="keras"`` and no path; the
    reference on any engine with ``backend="reference"``, see
    :func:`ssrconv.reference.load_reference_runtime`).

    ``num_threads`` caps the backend's intra-op threads (None: the backend's default).
    Extra ``options`` go to the backend (e.g. ``task``/``age_weights`` for keras,
    ``use_xnnpack`` for tflite, ``engine`` for coreml).
    """
    if backend == "reference":
        # The reference on the engine options["engine"] picks ("auto": keras, else numpy).
        from ssrconv.reference import load_reference_runtime

        return load_reference_runtime(**options)
    if backend is None:
        if path is None:
            raise RuntimeError_("give an artifact path or a backend")
        backend = backend_for(path)
    if backend not in BACKENDS:
        raise RuntimeError_(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise RuntimeError_(f"{path}: no such file")
    if backend == "keras":
        from ssrconv.runtimes.keras_rt import KerasRuntime

        return KerasRuntime(**options)
    if backend == "onnx":
        from ssrconv.runtimes.onnx_rt import OnnxRuntime

        return OnnxRuntime(path, num_threads=num_threads)
    if backend == "tflite":
        from ssrconv.runtimes.tflite_rt import TFLiteRuntime

        return TFLiteRuntime(path, num_threads=num_threads, **options)
    from ssrconv.runtimes.coreml_rt import load_coreml

    return load_coreml(path, **options)


__all__ = ["BACKENDS", "Runtime", "RuntimeError_", "backend_for", "load_runtime"]

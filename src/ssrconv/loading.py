"""The single place an artifact or the reference is loaded for parity, eval, bench, predict and
soak: :func:`load_runtime`.

Every runtime takes a float32 BGR batch (N x 64 x 64 x 3, 0..255) and returns
``{"age": (N,), "p_male": (N,)}`` (the heads the artifact has). Which engine reads which file
comes from the format table (:mod:`ssrconv.targets`); artifacts are opened and verified once by
:mod:`ssrconv.artifacts`, then handed to their engine's runtime (:mod:`ssrconv.runtimes`); the
reference (Keras or numpy) comes from :mod:`ssrconv.reference`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ssrconv.errors import SsrconvError
from ssrconv.runtimes.base import Runtime
from ssrconv.targets import BACKENDS, REFERENCE_BACKEND, REFERENCE_ON_ENGINE, WEIGHTS_SUFFIX


class RuntimeError_(SsrconvError):
    """An artifact could not be loaded or run by its runtime."""


def is_weights_file(path: str | os.PathLike | None) -> bool:
    """True for a weights file (``.h5``): the reference is built from it, it is not exported."""
    return path is not None and Path(path).suffix.lower() == WEIGHTS_SUFFIX


def reference_from_weights(path: str | os.PathLike, engine: str = "auto") -> Runtime:
    """The reference built from one weights file (age or gender, read from its layers), on
    ``engine`` (see :func:`ssrconv.reference.load_reference_runtime`)."""
    from ssrconv.assets import resolve
    from ssrconv.reference import load_reference_runtime
    from ssrconv.reference.weights import read_h5_weights

    task = read_h5_weights(resolve(path).path).task
    runtime = load_reference_runtime(task, **{f"{task}_weights": path}, engine=engine)
    runtime.path = Path(path)  # reports name the weights file the reference was built from
    return runtime


def load_runtime(path: str | os.PathLike | None = None, backend: str | None = None,
                 num_threads: int | None = None, engine: str | None = None,
                 **options) -> Runtime:
    """Load an artifact on its engine, or the reference (``backend="reference"`` with
    ``engine`` auto/keras/numpy/numpy-float64: :func:`ssrconv.reference.load_reference_runtime`).

    ``path`` None with ``backend="keras"``: the reference (``task``/``age_weights``/
    ``gender_weights`` in ``options``). A weights file (``.h5``): the reference built from it.
    Anything else is opened and verified by :func:`ssrconv.artifacts.open_artifact` and run on
    ``engine`` (default: its format's first engine). ``backend``, when given with a path, must
    be the artifact's family. ``num_threads`` caps the engine's intra-op threads.
    """
    from ssrconv.artifacts import open_artifact

    if backend == REFERENCE_ON_ENGINE:
        from ssrconv.reference import load_reference_runtime

        return load_reference_runtime(**options, engine=engine or "auto")
    if backend is not None and backend not in BACKENDS:
        raise RuntimeError_(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if path is None:
        if backend != REFERENCE_BACKEND:
            raise RuntimeError_("give an artifact path, or backend='keras' for the reference")
        from ssrconv.reference.keras_rt import KerasRuntime

        return KerasRuntime(**options)
    if is_weights_file(path):
        if backend not in (None, REFERENCE_BACKEND):
            raise RuntimeError_(f"{path} is a weights file: the {REFERENCE_BACKEND} reference "
                                f"runs it, not {backend}")
        return reference_from_weights(path)
    artifact = open_artifact(path)
    if backend not in (None, artifact.format.family):
        raise RuntimeError_(f"{path} is a {artifact.format.family} artifact, not {backend}")
    return artifact.runtime(engine=engine, num_threads=num_threads, **options)

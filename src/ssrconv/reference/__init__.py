"""The reference SSR-Net: the Keras 3 rebuild with the published weights loaded
(:mod:`ssrconv.reference.keras_reference`), run as a Runtime by Keras
(:mod:`ssrconv.reference.keras_rt`) or by numpy (:mod:`ssrconv.reference.numpy_engine`).

This package's ``__init__`` stays light; Keras is imported when a model is built.
"""

from __future__ import annotations

import os

from ssrconv.reference.keras_reference import TASKS, Reference, load_reference, weights_provenance
from ssrconv.targets import REFERENCE_ENGINES

__all__ = ["TASKS", "Reference", "keras_available", "load_reference", "load_reference_runtime",
           "reference_engine", "weights_provenance"]


def keras_available() -> bool:
    """True when TensorFlow and Keras are installed (``ssrconv[export]``); nothing is imported."""
    from ssrconv._extras import available

    return available("tensorflow") and available("keras")


def reference_engine(engine: str = "auto") -> str:
    """The engine ``engine`` resolves to: "keras", "numpy-float32" or "numpy-float64".

    "auto" is Keras when TensorFlow is installed, else the numpy engine (float32, the Keras
    reference's own precision); "numpy" is "numpy-float32".
    """
    if engine not in REFERENCE_ENGINES:
        from ssrconv.errors import SsrconvError

        raise SsrconvError(f"unknown reference engine {engine!r}: choose one of "
                           f"{', '.join(REFERENCE_ENGINES)}")
    if engine == "auto":
        return "keras" if keras_available() else "numpy-float32"
    return "numpy-float32" if engine == "numpy" else engine


def load_reference_runtime(task: str = "age-gender", age_weights: str | os.PathLike | None = None,
                           gender_weights: str | os.PathLike | None = None,
                           engine: str = "auto"):
    """The reference as a :class:`~ssrconv.runtimes.base.Runtime` on the chosen engine.

    ``engine``: "auto" (Keras when TensorFlow is installed, else numpy), "keras", "numpy"
    (= "numpy-float32") or "numpy-float64". Every engine loads the same sha256-checked ``.h5``
    weights by layer name; ``runtime.engine`` says which one runs ("keras", "numpy-float32",
    ...), for reports. "keras" without ``ssrconv[export]`` raises MissingExtraError.
    """
    engine = reference_engine(engine)
    if engine == "keras":
        from ssrconv.reference.keras_rt import KerasRuntime

        return KerasRuntime(task, age_weights, gender_weights)
    from ssrconv.reference.numpy_engine import NumpyReference

    return NumpyReference(task, age_weights, gender_weights, engine=engine)



"""The reference SSR-Net: the Keras 3 rebuild with the published weights loaded.

This package's ``__init__`` stays light; Keras is imported when a model is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ssrconv.reference.assets import (
    DEFAULT_AGE_WEIGHTS,
    DEFAULT_GENDER_WEIGHTS,
    ResolvedAsset,
    resolve,
)
from ssrconv.targets import REFERENCE_ENGINES

if TYPE_CHECKING:
    import numpy as np

    from ssrconv.reference.family import Member

TASKS = ("age", "gender", "age-gender")


@dataclass
class Reference:
    """A built model with its provenance: which weights (name, file, sha256) went into which head."""

    model: object  # keras.Model
    task: str
    weights: dict[str, ResolvedAsset] = field(default_factory=dict)  # head task -> weights
    members: dict[str, "Member"] = field(default_factory=dict)  # head task -> family member

    def predict(self, batch, batch_size: int = 256) -> dict[str, "np.ndarray"]:
        """Run the model on an N x 64 x 64 x 3 float32 BGR batch: {"age": ..., "p_male": ...}."""
        import numpy as np

        outputs = self.model.predict(np.asarray(batch, dtype=np.float32), batch_size=batch_size,
                                     verbose=0)
        if self.task == "age-gender":
            return {"age": outputs[0][:, 0], "p_male": outputs[1][:, 0]}
        return {"age" if self.task == "age" else "p_male": outputs[:, 0]}


def _weights_label(asset: ResolvedAsset) -> str:
    return asset.asset.name if asset.asset is not None else str(asset.path)


def load_reference(task: str = "age-gender", age_weights: str | os.PathLike | None = None,
                   gender_weights: str | os.PathLike | None = None) -> Reference:
    """Build SSR-Net for ``task`` ("age", "gender", "age-gender") and load its weights.

    Weights are registry names (``age-wiki``, ...) or paths (``.h5``, a port's ``.pth`` or
    ``.params``); the defaults are ``age-wiki`` and ``gender-wiki``. Every file is
    sha256-checked, read as data, and each head is built from its file's family member.
    """
    from ssrconv.errors import SsrconvError
    from ssrconv.reference import model as m
    from ssrconv.reference.weights import load_into

    if task not in TASKS:
        raise SsrconvError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    heads = {"age": ["age"], "gender": ["gender"], "age-gender": ["age", "gender"]}[task]
    resolved, files, members = read_heads(task, age_weights, gender_weights)

    if task == "age-gender":
        model = m.build_age_gender(members["age"], members["gender"])
        for head in heads:
            load_into(model, files[head], head, prefix=f"{head}_")
    else:
        model = m.build_ssrnet(task, members[task])
        load_into(model, files[task], task)
    return Reference(model=model, task=task, weights=resolved, members=members)


def read_heads(task: str, age_weights=None, gender_weights=None):
    """(resolved assets, weights files, members) per head of ``task``, each file read as data.

    Heads of different members may share a model (each has its own in-graph preprocessing);
    an exported model needs one crop rule for both (checked by
    :func:`ssrconv.reference.preprocess.contract_for`).
    """
    from ssrconv.reference.family import get_member
    from ssrconv.reference.weights import read_weights

    heads = {"age": ["age"], "gender": ["gender"], "age-gender": ["age", "gender"]}[task]
    chosen = {"age": age_weights or DEFAULT_AGE_WEIGHTS,
              "gender": gender_weights or DEFAULT_GENDER_WEIGHTS}
    resolved = {head: resolve(chosen[head]) for head in heads}
    files = {head: read_weights(resolved[head].path) for head in heads}
    members = {head: get_member(files[head].member) for head in heads}
    return resolved, files, members




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
        from ssrconv.runtimes.keras_rt import KerasRuntime

        return KerasRuntime(task, age_weights, gender_weights)
    from ssrconv.reference.numpy_engine import NumpyReference

    return NumpyReference(task, age_weights, gender_weights, engine=engine)


def weights_provenance(reference: Reference) -> dict[str, dict[str, str]]:
    """{head: {"name", "file", "sha256", "source", "member"}} for manifests and reports."""
    return {head: {"name": _weights_label(a), "file": a.path.name, "sha256": a.sha256,
                   "source": a.source, "member": reference.members[head].name}
            for head, a in reference.weights.items()}

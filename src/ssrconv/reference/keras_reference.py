"""The reference SSR-Net as a Keras model: built for a task, the published weights loaded by
layer name, with the provenance of every weights file (Keras is imported when a model is built).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ssrconv.assets import DEFAULT_AGE_WEIGHTS, DEFAULT_GENDER_WEIGHTS, ResolvedAsset, resolve

if TYPE_CHECKING:
    import numpy as np


TASKS = ("age", "gender", "age-gender")


@dataclass
class Reference:
    """A built model with its provenance: which weights (name, file, sha256) went into which head."""

    model: object  # keras.Model
    task: str
    weights: dict[str, ResolvedAsset] = field(default_factory=dict)  # head task -> weights

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

    Weights are registry names (``age-wiki``, ...) or paths; the defaults are
    ``age-wiki`` and ``gender-wiki``. Every file is sha256-checked and copied in by layer name.
    """
    from ssrconv.errors import SsrconvError
    from ssrconv.reference import model as m
    from ssrconv.reference.weights import load_into, read_h5_weights

    if task not in TASKS:
        raise SsrconvError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    heads = {"age": ["age"], "gender": ["gender"], "age-gender": ["age", "gender"]}[task]
    chosen = {"age": age_weights or DEFAULT_AGE_WEIGHTS,
              "gender": gender_weights or DEFAULT_GENDER_WEIGHTS}
    resolved = {head: resolve(chosen[head]) for head in heads}
    h5 = {head: read_h5_weights(resolved[head].path) for head in heads}

    if task == "age-gender":
        model = m.build_age_gender()
        for head in heads:
            load_into(model, h5[head], head, prefix=f"{head}_")
    else:
        model = m.build_ssrnet(task)
        load_into(model, h5[task], task)
    return Reference(model=model, task=task, weights=resolved)


def weights_provenance(reference: Reference) -> dict[str, dict[str, str]]:
    """{head: {"name", "file", "sha256", "source"}} for manifests and reports."""
    return {head: {"name": _weights_label(a), "file": a.path.name, "sha256": a.sha256,
                   "source": a.source}
            for head, a in reference.weights.items()}

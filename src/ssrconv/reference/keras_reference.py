"""The reference SSR-Net as a Keras model: built for a task, the published weights loaded by
layer name, with the provenance of every weights file (Keras is imported when a model is built).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ssrconv.assets import ResolvedAsset

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
                   gender_weights: str | os.PathLike | None = None,
                   arch: str | None = None) -> Reference:
    """Build SSR-Net for ``task`` ("age", "gender", "age-gender") and load its weights.

    Weights are registry names (``age-wiki``, ...) or paths (``.h5``, a port's ``.pth`` or
    ``.params``); the defaults are ``age-wiki`` and ``gender-wiki``. Every file is
    sha256-checked, read as data, and each head is built from its file's family member (which
    ``arch``, when given, must be: ``--arch``).
    """
    from ssrconv.errors import SsrconvError
    from ssrconv.reference import model as m
    from ssrconv.reference.weights import load_into, read_heads

    if task not in TASKS:
        raise SsrconvError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    heads = {"age": ["age"], "gender": ["gender"], "age-gender": ["age", "gender"]}[task]
    resolved, files, members = read_heads(task, age_weights, gender_weights, arch)

    if task == "age-gender":
        model = m.build_age_gender(members["age"], members["gender"])
        for head in heads:
            load_into(model, files[head], head, prefix=f"{head}_")
    else:
        model = m.build_ssrnet(task, members[task])
        load_into(model, files[task], task)
    return Reference(model=model, task=task, weights=resolved, members=members)


def weights_provenance(reference: Reference) -> dict[str, dict[str, str]]:
    """{head: {"name", "file", "sha256", "source", "member"}} for manifests and reports."""
    return {head: {"name": _weights_label(a), "file": a.path.name, "sha256": a.sha256,
                   "source": a.source, "member": reference.members[head].name}
            for head, a in reference.weights.items()}

"""Locating SSR-Net's stage outputs inside an exported graph, for stage-by-stage parity.

The stage layers (stage probabilities ``pred_*_stage{k}``, width shifts ``delta_s{k}``, local
index shifts ``local_delta_stage{k}``) are not outputs of an exported model, but their tensors
survive conversion with the Keras layer name in their own name: tf2onnx keeps
``.../age_pred_age_stage1_1/Relu:0``, TFLite ``functional_1/age_pred_age_stage1_1/...Relu...``,
a CoreML mlprogram ``..._age_pred_age_stage1_1_Relu``. A stage is the activation tensor of its
layer: rank 2, ``units`` wide. In the fast export graph (ssrconv.graph) the stages of all heads
are columns of three fused layers: :func:`locate` falls back to those and a column slice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ssrconv.errors import SsrconvError

# Layers of the fast graph holding every stage tensor of every head, columns stage-major
# (column (k * heads + head) * units + unit): runtimes slice the original stage tensors out of
# them (:func:`locate`). (layer name, activation, units per stage and head).
FUSED_STAGE_LAYERS = {
    "probabilities": ("fused_stage_probs", "Relu", 3),
    "delta": ("fused_stage_deltas", "Tanh", 1),
    "local_delta": ("fused_stage_local_deltas", "Tanh", 3),
}
STAGES = 3


class StagesUnavailable(SsrconvError):
    """This runtime cannot expose the stage tensors (the reason is the message)."""


@dataclass(frozen=True)
class StageSpec:
    key: str  # "age.pred_age_stage1"
    layer: str  # the layer name in the exported graph, e.g. "age_pred_age_stage1"
    activation: str  # "Relu" or "Tanh"
    units: int
    kind: str  # "probabilities", "delta", "local_delta"

    def matches(self, tensor_name: str) -> bool:
        pattern = rf"(^|[/_]){re.escape(self.layer)}(_\d+)?[/_]{self.activation}(?![A-Za-z0-9])"
        return re.search(pattern, tensor_name) is not None


def stage_specs(heads: tuple[str, ...]) -> list[StageSpec]:
    """The nine stage layers of each head; layer names carry the head prefix when the artifact
    holds both heads (``age_``, ``gender_``)."""
    specs = []
    both = set(heads) == {"age", "p_male"}
    for head in heads:
        task = "age" if head == "age" else "gender"
        prefix = f"{task}_" if both else ""
        stage = "pred_age_stage{}" if task == "age" else "pred_gender_stage{}"
        for k in (1, 2, 3):
            for name, activation, units, kind in (
                    (stage.format(k), "Relu", 3, "probabilities"),
                    (f"delta_s{k}", "Tanh", 1, "delta"),
                    (f"local_delta_stage{k}", "Tanh", 3, "local_delta")):
                specs.append(StageSpec(f"{head}.{name}", prefix + name, activation, units, kind))
    return specs


def find_unique(spec: StageSpec, candidates: dict[str, object]) -> object:
    """The one candidate (name -> handle) matching ``spec``; StagesUnavailable otherwise."""
    found = [handle for name, handle in candidates.items() if spec.matches(name)]
    if len(found) != 1:
        raise StagesUnavailable(f"stage {spec.key}: {len(found)} tensors match "
                                f"{spec.layer}/{spec.activation} in this graph")
    return found[0]


def fused_location(spec: StageSpec, heads: tuple[str, ...]) -> tuple[StageSpec, slice]:
    """The fused fast-graph tensor holding ``spec`` and its columns (ssrconv.graph lays them
    out stage-major: column (k * heads + head) * units + unit)."""
    layer, activation, units = FUSED_STAGE_LAYERS[spec.kind]
    head = heads.index(spec.key.split(".", 1)[0])
    k = int(spec.layer[-1]) - 1
    start = (k * len(heads) + head) * units
    fused = StageSpec(f"{spec.key}@{layer}", layer, activation, STAGES * len(heads) * units,
                      spec.kind)
    return fused, slice(start, start + units)


def locate(spec: StageSpec, heads: tuple[str, ...], candidates_of) -> tuple[object, slice | None]:
    """(handle, columns) of ``spec``: its own tensor (columns None), else its columns of the
    fused fast-graph tensor. ``candidates_of(units)`` gives name -> handle of the graph's
    tensors that may be ``units`` wide."""
    try:
        return find_unique(spec, candidates_of(spec.units)), None
    except StagesUnavailable as err:
        fused, columns = fused_location(spec, heads)
        try:
            return find_unique(fused, candidates_of(fused.units)), columns
        except StagesUnavailable:
            raise err from None

"""The export graph: the reference SSR-Net rewritten into a faster, function-preserving graph.

``build_export_graph`` (in :mod:`ssrconv.graph.builder`) and ``check_exact`` import Keras;
this package's ``__init__`` stays light.
"""

from __future__ import annotations

from ssrconv.errors import SsrconvError

GRAPHS = ("fast", "original")

# Layers of the fast graph holding every stage tensor of every head, columns stage-major
# (column (k * heads + head) * units + unit): runtimes slice the original stage tensors out of
# them (ssrconv.runtimes.stages.locate). (layer name, activation, units per stage and head).
FUSED_STAGE_LAYERS = {
    "probabilities": ("fused_stage_probs", "Relu", 3),
    "delta": ("fused_stage_deltas", "Tanh", 1),
    "local_delta": ("fused_stage_local_deltas", "Tanh", 3),
}
STAGES = 3
DEFAULT_GRAPH = "fast"


class GraphNotExactError(SsrconvError):
    """The fused export graph does not compute what the reference computes (beyond the bounds)."""


def build_export_graph(reference_model, task: str, family: str):
    """See :func:`ssrconv.graph.builder.build_export_graph`."""
    from ssrconv.graph.builder import build_export_graph as build

    return build(reference_model, task, family)


def check_exact(reference_model, export_model, inputs):
    """See :func:`ssrconv.graph.builder.check_exact`."""
    from ssrconv.graph.builder import check_exact as check

    return check(reference_model, export_model, inputs)

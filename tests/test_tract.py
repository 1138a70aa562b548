"""tract (pure-Rust ONNX engine) on the project's .onnx exports.

Keeps the int8 interop fix: tract refused the int8 ONNX while it carried quantize_static's
stale value_info (symbolic batch dims clashing with a fixed input batch at the input Pad).
"""

from __future__ import annotations

import numpy as np
import pytest

from ssrconv.parity import head_stats, violations
from ssrconv.targets import BUDGETS, TARGETS

pytestmark = pytest.mark.slow


def _has_dynamic_reshape(path) -> bool:
    """True when a Reshape's target shape is computed from a Shape op (tf2onnx's Flatten)."""
    import onnx

    graph = onnx.load(str(path)).graph
    return any(node.op_type == "Shape" for node in graph.node)


@pytest.mark.parametrize("key", ["onnx-fp32", "onnx-int8"])
def test_tract_within_budget(export_dir, faces, reference_outputs, key):
    import onnx

    from ssrconv.loading import load_runtime

    path = export_dir / TARGETS[key].filename("age-gender")
    if key == "onnx-int8":
        assert len(onnx.load(str(path)).graph.value_info) == 0  # the fix tract needs
    runtime = load_runtime(path, engine="tract")
    assert runtime.engine.startswith("tract-") and runtime.heads == ("age", "p_male")
    # a variable batch loads only when every reshape is static (tf2onnx's Flatten is not)
    assert runtime.batch_mode == ("fixed per batch size" if _has_dynamic_reshape(path)
                                  else "symbolic")
    n = 64  # tract is the slowest engine here (tens of ms per face): a batch of the dev faces
    got = runtime.run(faces.inputs[:n])
    one = runtime.run(faces.inputs[:1])  # a second batch size on the same runtime
    stats = {h: head_stats(got[h], reference_outputs[h][:n], h) for h in runtime.heads}
    assert violations(stats, BUDGETS[TARGETS[key].budget_class]) == [], stats
    for head in runtime.heads:
        np.testing.assert_allclose(one[head], got[head][:1], rtol=1e-5, atol=1e-5)


def test_tract_refusal_is_one_line(tmp_path):
    from ssrconv.errors import ModelFileError
    from ssrconv.runtimes.tract_rt import TractRuntime

    bad = tmp_path / "not_a_model.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelFileError) as info:
        TractRuntime(bad)
    assert "\n" not in str(info.value)

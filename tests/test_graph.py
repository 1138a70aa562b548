"""The fast export graph (ssrconv.graph): exact against the reference, refused when it is not,
smaller in ops, used by the float exports, and its stage tensors still found by parity."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def probe_inputs(faces):
    from ssrconv.reference.synthetic import synthetic_inputs

    return np.concatenate([faces.inputs[:300], synthetic_inputs(48, seed=5)])


@pytest.mark.parametrize("variant", ["tflite", "onnx", "onnx-unpadded", "onnx-unpadded-fp16",
                                     "per-head", "per-head-integer", "per-head-int8-integer"])
def test_fast_graph_is_exact_for_both_heads(reference_age_gender, probe_inputs, variant):
    import keras

    from ssrconv.graph import get_variant
    from ssrconv.graph.builder import build_export_graph, check_exact

    model = reference_age_gender.model
    fast = build_export_graph(model, "age-gender", variant)
    assert fast.output_names == ["age", "p_male"] and fast.input_shape == (None, 64, 64, 3)
    diffs = check_exact(model, fast, probe_inputs)
    assert diffs["age"] <= 1e-3 and diffs["p_male"] <= 1e-4
    pools = [layer.pool_size for layer in fast.layers
             if isinstance(layer, keras.layers.AveragePooling2D)]
    # per head: relu_pool1..3, then 4x4 and 8x8 summary pools, or 2 + 3 steps of 2x2
    if get_variant(variant).average_pools_stride2:
        assert pools == [(2, 2)] * 8 * 2
    else:
        assert sorted(set(pools)) == [(2, 2), (4, 4), (8, 8)]
    # far fewer layers than the reference's ~190 (per-head keeps each head's convs and
    # Dense layers: fewer only by the BatchNorms, flattens and the merge)
    assert len(fast.layers) < (150 if variant.startswith("per-head") else 60) < len(model.layers)


def test_fp16_weight_variant_keeps_the_first_conv_weights_normal_in_float16(reference_age_gender):
    """pnnx's float16 conversion zeroes every |w| < 2^-14; BN folding leaves first-conv weights
    down to 3e-7 (41 of them zeroed: max 0.41 y on ncnn fp16). The 2^8 input scaling lifts them."""
    from ssrconv.graph.builder import build_export_graph

    smallest = {}
    for variant in ("onnx-unpadded", "onnx-unpadded-fp16"):
        fast = build_export_graph(reference_age_gender.model, "age-gender", variant)
        kernels = [fast.get_layer(n).get_weights()[0] for n in ("relu_conv1", "tanh_conv1")]
        smallest[variant] = min(float(np.abs(k[k != 0]).min()) for k in kernels)
    assert smallest["onnx-unpadded"] < 2 ** -14 <= smallest["onnx-unpadded-fp16"]


def test_every_target_converts_the_fast_graph():
    """Issue 13's "done when" in the table: every target converts a known fast variant (the
    static-QDQ int8 ones each head's own convs: one activation scale per tensor)."""
    from ssrconv.graph import VARIANTS
    from ssrconv.targets import TARGETS

    for key, target in TARGETS.items():
        assert target.variant in VARIANTS, key
    assert {TARGETS[k].graph_variant for k in ("onnx-int8", "openvino-int8")} == {"per-head"}


def test_graph_original_is_the_reference_for_every_target(reference_age_gender, tmp_path):
    """`--to all --graph original` converts the reference graph for every row it can make and
    says which rows it leaves out (the integer-only ones, made from the fast graph only); a
    row only the fast graph makes, asked for by name, is refused in one line."""
    from ssrconv.errors import OptionsError
    from ssrconv.exporter import _ExportGraphs
    from ssrconv.graph import fast_graph_only
    from ssrconv.options import ExportOptions
    from ssrconv.targets import EXPORTED_BY_ALL, TARGETS

    options = ExportOptions(to=("all",), out=tmp_path, graph="original")
    said = []
    graphs = _ExportGraphs(reference_age_gender.model, options, None, said.append,
                           reference_age_gender.members)
    made = {t.key for t in graphs.targets}
    assert {t.key for t in options.left_out} == {"tflite-int8"}
    assert made == set(EXPORTED_BY_ALL) - {"tflite-int8"}
    assert any("tflite-int8 left out of --to all" in line for line in said)
    for target in TARGETS.values():
        if not fast_graph_only(target.variant):
            assert graphs.for_target(target) == ("original", None, reference_age_gender.model,
                                                 None)
    with pytest.raises(OptionsError, match="tflite-int8 is integer-only") as err:
        ExportOptions(to=("tflite",), precision=("int8",), out=tmp_path, graph="original")
    assert "\n" not in str(err.value) and "int8-mixed" in str(err.value)
    with pytest.raises(OptionsError, match="onnx-int16x8, tflite-int16x8 are integer-only"):  # nothing left
        ExportOptions(to=("all",), precision=("int16x8",), out=tmp_path, graph="original")


def test_a_model_the_fast_graph_cannot_express_leaves_out_the_fast_only_rows(reference_age_gender,
                                                                             tmp_path):
    """A model whose heads one fast graph cannot serve converts its reference graph: `--to all`
    leaves out the rows only the fast graph makes (the integer-only files) and says so; asked
    for by name they are refused in one line before any work (they would fail after minutes of
    quantization)."""
    from dataclasses import replace

    from ssrconv.errors import OptionsError
    from ssrconv.exporter import _ExportGraphs
    from ssrconv.options import ExportOptions
    from ssrconv.reference.family import MEMBERS

    # heads that pad differently: ssrconv.graph.fast_graph_blocker says "pad"
    members = {"age": MEMBERS["oukohou-pytorch"], "gender": MEMBERS["wayen820-mxnet"]}
    said = []
    everything = ExportOptions(to=("all",), out=tmp_path)
    graphs = _ExportGraphs(reference_age_gender.model, everything, None, said.append, members)
    assert "tflite-int8" not in {t.key for t in graphs.targets}
    assert len(graphs.targets) == len(everything.targets) - 1
    assert any("tflite-int8 left out of --to all" in line for line in said)
    by_name = replace(everything, to=("tflite",), precision=("int8", "fp32"))
    with pytest.raises(OptionsError, match="cannot express this model .*pad.*tflite-int8 is "
                                           "integer-only") as err:
        _ExportGraphs(reference_age_gender.model, by_name, None, said.append, members)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("task", ["age", "gender"])
def test_fast_graph_single_head(references, faces, task):
    from ssrconv.graph.builder import build_export_graph, check_exact
    from ssrconv.reference.model import with_named_outputs

    model = with_named_outputs(references(task).reference.model, task)
    fast = build_export_graph(model, task, "tflite")
    assert fast.output_names == (["age"] if task == "age" else ["p_male"])
    check_exact(model, fast, faces.inputs[:100])


def test_a_wrong_graph_is_refused(reference_age_gender, probe_inputs):
    from ssrconv.errors import SsrconvError
    from ssrconv.graph import GraphNotExactError
    from ssrconv.graph.builder import build_export_graph, check_exact
    from ssrconv.graph.builder import FUSED_DELTAS

    model = reference_age_gender.model
    fast = build_export_graph(model, "age-gender", "tflite")
    layer = fast.get_layer(FUSED_DELTAS)
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias + 1e-3])  # a tiny shift of every width delta
    with pytest.raises(GraphNotExactError, match="not exact") as err:
        check_exact(model, fast, probe_inputs)
    assert isinstance(err.value, SsrconvError) and "\n" not in str(err.value)
    # swapped heads are refused too (age vs P(male))
    import keras

    swapped = keras.Model(fast.inputs, [fast.outputs[1], fast.outputs[0]])
    with pytest.raises(GraphNotExactError):
        check_exact(model, swapped, probe_inputs[:20])


def test_the_cropped_rows_and_columns_are_dead(reference_age_gender, faces):
    """The claim behind the 62 x 62 crop: input rows/columns 62 and 63 never reach an output."""
    x = faces.inputs[:20].copy()
    y = x.copy()
    rng = np.random.default_rng(0)
    y[:, 62:, :, :] = rng.uniform(0, 255, y[:, 62:, :, :].shape)
    y[:, :, 62:, :] = rng.uniform(0, 255, y[:, :, 62:, :].shape)
    a = reference_age_gender.predict(x)
    b = reference_age_gender.predict(y)
    for head in ("age", "p_male"):
        np.testing.assert_array_equal(a[head], b[head])


def test_unknown_graph_option_is_refused():
    from ssrconv.options import ExportOptions, OptionsError

    with pytest.raises(OptionsError, match="unknown graph"):
        ExportOptions(to=("onnx",), graph="fastest")
    assert ExportOptions(to=("onnx",)).graph == "fast"


@pytest.mark.parametrize("key", ["onnx-fp32", "tflite-fp32"])
def test_float_exports_use_the_fast_graph_and_pass_parity(exported, faces, keras_reference, key):
    from ssrconv.parity import head_stats, stage_differences, violations
    from ssrconv.loading import load_runtime
    from ssrconv.targets import BUDGETS, TARGETS

    target = TARGETS[key]
    path = exported(key).path
    manifest = json.loads(path.with_name(path.name + ".json").read_text())
    assert manifest["graph"] == "fast"
    ops = manifest["ops"]
    # no dynamic-batch flatten left, one conv per original conv pair
    assert not {"SHAPE", "PACK", "Shape", "Gather"} & set(ops)
    assert ops.get("CONV_2D", ops.get("Conv")) == 14
    runtime = load_runtime(path)
    reference = keras_reference
    inputs = faces.inputs[:300]
    got, want = runtime.run(inputs), reference.run(inputs)
    stats = {head: head_stats(got[head], want[head], head) for head in ("age", "p_male")}
    assert violations(stats, BUDGETS[target.budget_class]) == []
    stages, note = stage_differences(runtime, reference, inputs[:8])
    assert stages is not None and len(stages) == 18, note
    assert max(stages.values()) < 1e-3


def test_tflite_dynamic_on_its_own_variant_is_within_the_int8_budget_with_margin(exported, faces,
                                                                                  keras_reference):
    """Hybrid kernels quantize each conv/Dense input with one scale: the dynamic variant keeps
    each head's convs and Dense layers apart (the grouped/batched graph measured p99 1.34-1.37 y,
    the original graph 0.66 y on these faces)."""
    from ssrconv.parity import head_stats, stage_differences, violations
    from ssrconv.loading import load_runtime
    from ssrconv.targets import BUDGETS

    path = exported("tflite-dynamic").path
    manifest = json.loads(path.with_name(path.name + ".json").read_text())
    assert (manifest["graph"], manifest["graph_variant"]) == ("fast", "per-head")
    assert not {"SHAPE", "PACK", "SUM"} & set(manifest["ops"])  # static flattens, fused merge
    runtime, reference = load_runtime(path), keras_reference
    got, want = runtime.run(faces.inputs), reference.run(faces.inputs)
    stats = {head: head_stats(got[head], want[head], head) for head in ("age", "p_male")}
    assert violations(stats, BUDGETS["int8"]) == []
    assert stats["age"].p99_abs <= 0.8 and stats["p_male"].max_abs <= 0.1, stats  # margin
    stages, note = stage_differences(runtime, reference, faces.inputs[:8])
    assert stages is not None and len(stages) == 18, note


def test_graph_original_exports_the_reference_graph(exported, reference_age_gender):
    from ssrconv.reference.model import count_macs

    original = exported("tflite-fp32", graph="original").manifest
    fast = exported("tflite-fp32").manifest
    assert original["graph"] == "original" and fast["graph"] == "fast"
    assert sum(fast["ops"].values()) < 0.4 * sum(original["ops"].values())
    # The manifest's multiply-adds, counted on the file: the original graph's are the
    # reference's; the 62 x 62 crop removes 5.8% (docs/GRAPH.md), the block-sparse Dense zeros
    # add back 0.1%.
    assert original["macs_per_face"] == count_macs(reference_age_gender.model)
    assert 0.93 < fast["macs_per_face"] / original["macs_per_face"] < 0.95, fast["macs_per_face"]


@pytest.mark.parametrize("key", ["coreml-fp16", "coreml-fp32"])
def test_coreml_fast_graph_runs_exactly_on_the_mil_interpreter(reference_age_gender, keras_reference,
                                                               faces, tmp_path, key):
    """The fused graph as an mlprogram needs slice_by_index, concat, matmul and grouped conv
    from the numpy MIL interpreter; each CoreML target's variant is smaller than the original
    graph's mlprogram (fp16 291 KB vs 328 KB, fp32 458 KB vs 475 KB, docs/GRAPH.md)."""
    from ssrconv.converters import coreml
    from ssrconv.formats import coreml as coreml_format
    from ssrconv.exporter import artifact_digest
    from ssrconv.graph.builder import build_export_graph
    from ssrconv.options import ExportOptions
    from ssrconv.parity import stage_differences
    from ssrconv.loading import load_runtime
    from ssrconv.targets import TARGETS

    target = TARGETS[key]
    sizes = {}
    for graph in ("original", "fast"):
        model = (reference_age_gender.model if graph == "original" else
                 build_export_graph(reference_age_gender.model, "age-gender", target.graph_variant))
        dest = tmp_path / f"{graph}.mlpackage"
        options = ExportOptions(to=("coreml",), precision=(target.precision,), out=tmp_path)
        coreml.convert(model, target, options, dest, None, {"ssrconv.version": "test"})
        sizes[graph] = artifact_digest(dest)[0]
    assert sizes["fast"] < sizes["original"], sizes
    ops = coreml_format.describe(dest)["ops"]
    assert ops["conv"] == 14 and ops["slice_by_index"] >= 1 and ops["matmul"] >= 1
    runtime = load_runtime(dest)  # off macOS: the numpy MIL interpreter
    assert runtime.engine.startswith("coreml")
    reference = keras_reference
    inputs = faces.inputs[:50]
    got, want = runtime.run(inputs), reference.run(inputs)
    exact = target.precision == "fp32"  # fp16 compute: its own budget (parity, fp16 class)
    assert np.max(np.abs(got["age"] - want["age"])) < (1e-3 if exact else 0.25)
    assert np.max(np.abs(got["p_male"] - want["p_male"])) < (1e-4 if exact else 0.05)
    stages, note = stage_differences(runtime, reference, inputs[:4])
    assert stages is not None and len(stages) == 18, note

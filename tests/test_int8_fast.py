"""The int8 recipe's Keras-level steps on the fast export graph: the reference's layers found in
the fused graph, cross-layer equalization through groups=2 readers exact in float and confined
to the age head's channels, GPTQ rounding per group onto the int8 grid."""

from __future__ import annotations

import numpy as np


def test_int8_prep_on_the_fast_graph(reference_age_gender, faces):
    from ssrconv.converters.int8_prep import (
        equalize,
        recipe_layers,
        rewrite,
        round_kernels,
    )
    from ssrconv.converters.onnx_int8 import INT8_LAYERS
    from ssrconv.converters.tflite_int8 import float_backbone_layers
    from ssrconv.graph.builder import build_export_graph, check_exact

    reference = reference_age_gender.model
    fast = rewrite(build_export_graph(reference, "age-gender", "tflite"))
    assert float_backbone_layers(fast) == [
        "relu_conv1", "relu_conv2", "relu_pool1_dw", "relu_pool2_dw",
        "stage1_s", "stage1_x", "stage2_s", "stage2_s_pool", "stage2_x", "stage2_x_pool_dw",
        "stage3_s", "stage3_s_pool", "stage3_x", "stage3_x_pool_dw",
        "tanh_act1", "tanh_conv1", "tanh_pool1"]
    assert recipe_layers(fast, INT8_LAYERS) == {"relu_conv2", "relu_conv3", "relu_conv4",
                                                "relu_pool1_dw", "relu_pool2_dw", "relu_pool3_dw"}

    before = {n: fast.get_layer(n).get_weights()[0].copy() for n in ("relu_conv1", "relu_conv2")}
    x = faces.inputs[:48]
    equalize(fast, x[:24])
    first, second = (fast.get_layer(n).get_weights()[0] for n in ("relu_conv1", "relu_conv2"))
    # relu_conv1's 64 outputs: age 0..31 scaled per channel, gender 32..63 untouched; its reader
    # relu_conv2 (groups=2) changes only in the age group's columns (output channels 0..31)
    assert not np.allclose(first[..., :32], before["relu_conv1"][..., :32])
    np.testing.assert_array_equal(first[..., 32:], before["relu_conv1"][..., 32:])
    assert not np.allclose(second[..., :32], before["relu_conv2"][..., :32])
    np.testing.assert_array_equal(second[..., 32:], before["relu_conv2"][..., 32:])
    check_exact(reference, fast, x)  # CLE is exact in float: within the export's 1e-3 y bound

    round_kernels(fast, x[:8], only=lambda name: name == "relu_conv2")
    kernel = fast.get_layer("relu_conv2").get_weights()[0].reshape(-1, 64).astype(np.float64)
    steps = kernel / (np.abs(kernel).max(axis=0) / 127)
    assert np.abs(steps - np.round(steps)).max() < 1e-3  # every column on its int8 grid


def test_onnx_int8_per_head_graph_gives_age_activations_percentile_ranges(reference_age_gender,
                                                                          faces, tmp_path):
    """The ONNX int8 recipe on the per-head fast graph: the recipe's layers are found per head,
    each quantized tensor is attributed to one head, and only the age head's activations get
    the percentile range (below the MinMax maximum where the calibration has outliers)."""
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from ssrconv.calibration import CalibrationSet
    from ssrconv.converters.int8_prep import recipe_layers, rewrite
    from ssrconv.converters.onnx import to_proto
    from ssrconv.converters.onnx_int8 import (
        INT8_LAYERS,
        OP_TYPES,
        age_head_ranges,
        int8_nodes,
        tensor_heads,
    )
    from ssrconv.graph.builder import build_export_graph

    fast = rewrite(build_export_graph(reference_age_gender.model, "age-gender", "per-head"))
    assert recipe_layers(fast, INT8_LAYERS) == {
        f"{head}_{name}" for head in ("age", "gender")
        for name in ("relu_conv2", "relu_conv3", "relu_conv4",
                     "relu_pool1_dw", "relu_pool2_dw", "relu_pool3_dw")}
    proto = to_proto(fast, 17)
    heads = tensor_heads(proto, fast)
    by_layer = {n.name: heads.get(n.output[0]) for n in proto.graph.node}
    assert {h for name, h in by_layer.items() if "/age_relu_conv" in name} == {"age"}
    assert {h for name, h in by_layer.items() if "/gender_relu_conv" in name} == {"gender"}
    assert not any(heads.get(o) for n in proto.graph.node if "stagewise_merge" in n.name
                   for o in n.output)  # the merge holds both heads

    src = tmp_path / "fp32.onnx"
    onnx.save(proto, str(src))
    cal = CalibrationSet(inputs=faces.inputs[:40], source="test")
    nodes = int8_nodes(proto, [layer.name for layer in fast.layers],
                       recipe_layers(fast, INT8_LAYERS))
    overrides = age_head_ranges(src, proto, fast, nodes, cal.onnx_reader("face_bgr"),
                                tmp_path / "percentile.onnx")
    # the age head's six quantized convs' and pools' outputs (the relu_conv1 output read by
    # its pool too); none of the gender head's
    assert len(overrides) >= 6 and {heads[name] for name in overrides} == {"age"}
    minmax = create_calibrator(src, list(OP_TYPES), augmented_model_path=str(tmp_path / "mm.onnx"),
                               calibrate_method=CalibrationMethod.MinMax)
    minmax.collect_data(cal.onnx_reader("face_bgr"))
    ranges = minmax.compute_data()
    highs = [(float(o[0]["rmax"]), float(np.max(ranges[name].range_value[1])))
             for name, o in overrides.items()]
    assert all(p <= m * (1 + 1e-6) for p, m in highs)
    assert any(p < 0.999 * m for p, m in highs)


def test_bias_correction_of_a_same_padded_conv_counts_its_zero_border():
    """GPTQ's patch statistics read a conv's input as the conv does: with padding="same" the
    border patches hold zeros, and the bias correction (mean output shift of the rounded kernel)
    is exact over every output position (a padding=1 member's 8 x 8 maps: 28 of 64 positions
    are border; docs/PORTS.md, "int8")."""
    import keras

    from ssrconv.converters.int8_prep import round_kernels

    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, keras.layers.Conv2D(6, 3, padding="same", name="conv")(inputs))
    rng = np.random.default_rng(0)
    model.get_layer("conv").set_weights([rng.normal(size=(3, 3, 4, 6)).astype(np.float32),
                                         rng.normal(size=6).astype(np.float32)])
    cal = rng.uniform(0, 4, size=(64, 8, 8, 4)).astype(np.float32)  # relu-like: mean 2
    before = model.predict(cal, verbose=0).astype(np.float64)
    round_kernels(model, cal)
    after = model.predict(cal, verbose=0).astype(np.float64)
    shift = (after - before).mean(axis=(0, 1, 2))
    assert np.abs(after - before).max() > 1e-3  # the kernel did move onto its int8 grid
    assert np.abs(shift).max() < 1e-5, shift


def test_integer_merge_keeps_its_stage_weights_where_int8_stores_them_exactly():
    """The 16x8 graph's merge holds V / 3^k in its stage-sum matrix, one column per stage,
    so a per-channel int8 scale (max / 127) stores each exactly, and its output matrix is 0/1;
    in one output column, V/9 and V/27 were stored 0.8% low (docs/INT8.md, "The 16x8 file")."""
    from ssrconv.graph import VARIANTS
    from ssrconv.graph.builder import FusedStagewiseMerge

    assert VARIANTS["per-head-integer"].merge_scales_in_sums
    integer, plain = (FusedStagewiseMerge(2, [101.0, 1.0], scales_in_sums=flag)
                      for flag in (True, False))
    assert set(np.unique(integer._out)) == {0.0, 1.0}
    for sums in (integer._sums, plain._sums):
        for column in sums.T:  # every nonzero of a column equal: its int8 step is exact
            assert len(set(column[column != 0])) == 1
    # the same function: each stage's weight moved from one matrix to the other
    np.testing.assert_allclose(integer._sums @ integer._out, plain._sums @ plain._out, rtol=1e-6)
    steps = plain._out / (np.abs(plain._out).max(axis=0) / 127)
    assert np.abs(steps - np.round(steps)).max() > 0.1  # why: one scale per head column

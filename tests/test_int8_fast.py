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
    from ssrconv.graph import build_export_graph, check_exact

    reference = reference_age_gender.model
    fast = rewrite(build_export_graph(reference, "age-gender", "tflite"))
    assert float_backbone_layers(fast) == ["relu_conv1", "relu_pool1_dw", "tanh_act1",
                                           "tanh_conv1", "tanh_pool1"]
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

"""The rebuilt Keras SSR-Net against an independent float64 numpy pass of the ORIGINAL graph."""

from __future__ import annotations

import numpy as np
import pytest

from golden_assets import golden_outputs
from ssrconv.assets import ASSETS

AGE = [n for n, a in ASSETS.items() if a.kind == "age"]
GENDER = [n for n, a in ASSETS.items() if a.kind == "gender"]


@pytest.mark.slow
@pytest.mark.parametrize("name", AGE)
def test_age_matches_original_graph_on_all_faces(assets_dir, faces, name):
    from ssrconv.reference import load_reference

    keras_age = load_reference("age", age_weights=name).predict(faces.inputs)["age"]
    golden = golden_outputs(assets_dir, name, faces.inputs)
    assert len(faces) == 300
    assert np.max(np.abs(keras_age - golden)) < 1e-3
    assert 1.0 < np.mean(golden) < 100.0  # real ages, not a degenerate constant


@pytest.mark.slow
@pytest.mark.parametrize("name", GENDER)
def test_gender_matches_original_graph_on_all_faces(assets_dir, faces, name):
    from ssrconv.reference import load_reference

    keras_p = load_reference("gender", gender_weights=name).predict(faces.inputs)["p_male"]
    golden = golden_outputs(assets_dir, name, faces.inputs)
    assert np.max(np.abs(keras_p - golden)) < 1e-4
    assert np.std(golden) > 0.05  # it separates faces


def test_stage_outputs_reachable_and_match_original(assets_dir, faces):
    """Every intermediate stage layer is an output of stage_model() and equals the original's."""
    from ssrconv.reference import load_reference
    from ssrconv.reference.model import stage_layer_names, stage_model

    batch = faces.inputs[:16]
    ref = load_reference("age-gender")
    model = stage_model(ref.model, "gender", prefix="gender_")
    outputs = model.predict(batch, verbose=0)
    _, values = golden_outputs(assets_dir, "gender-wiki", batch, return_all=True)
    names = stage_layer_names("gender")
    assert len(outputs) == 1 + len(names) == 10
    for name, got in zip(names, outputs[1:]):
        original = name.replace("pred_gender_stage", "pred_age_stage")  # the JSON's name
        np.testing.assert_allclose(got, values[original], atol=1e-5, err_msg=name)

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
def test_age_matches_original_graph_on_all_faces(faces, references, golden, name):
    keras_age = references("age", age_weights=name).reference.predict(faces.inputs)["age"]
    original = golden(name)[:len(faces)]
    assert len(faces) == 300
    assert np.max(np.abs(keras_age - original)) < 1e-3
    assert 1.0 < np.mean(original) < 100.0  # real ages, not a degenerate constant


@pytest.mark.slow
@pytest.mark.parametrize("name", GENDER)
def test_gender_matches_original_graph_on_all_faces(faces, references, golden, name):
    reference = references("gender", gender_weights=name).reference
    keras_p = reference.predict(faces.inputs)["p_male"]
    original = golden(name)[:len(faces)]
    assert np.max(np.abs(keras_p - original)) < 1e-4
    assert np.std(original) > 0.05  # it separates faces


def test_stage_outputs_reachable_and_match_original(assets_dir, faces, reference_age_gender):
    """Every intermediate stage layer is an output of stage_model() and equals the original's."""
    from ssrconv.reference.model import stage_layer_names, stage_model

    batch = faces.inputs[:16]
    model = stage_model(reference_age_gender.model, "gender", prefix="gender_")
    outputs = model.predict(batch, verbose=0)
    _, values = golden_outputs(assets_dir, "gender-wiki", batch, return_all=True)
    names = stage_layer_names("gender")
    assert len(outputs) == 1 + len(names) == 10
    for name, got in zip(names, outputs[1:]):
        original = name.replace("pred_gender_stage", "pred_age_stage")  # the JSON's name
        np.testing.assert_allclose(got, values[original], atol=1e-5, err_msg=name)

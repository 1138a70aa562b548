"""The reference model: structure, serialization, and sanity on real faces."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_structure_matches_the_original_config(assets_dir):
    """Same layer names, classes and wiring as ssrnet_age_original_keras2.json (except I/O names)."""
    from ssrconv.reference.model import build_ssrnet

    original = json.load(open(assets_dir / "ssrnet_age_original_keras2.json"))["config"]
    model = build_ssrnet("age")
    rename = {"input_1": "face_bgr"}
    classes = {"Lambda": "SSRMerge"}
    ours = {layer.name: layer for layer in model.layers}
    for layer in original["layers"]:
        name = rename.get(layer["name"], layer["name"])
        assert name in ours, name
        assert type(ours[name]).__name__ == classes.get(layer["class_name"], layer["class_name"])
        if layer["inbound_nodes"]:
            want = [rename.get(n[0], n[0]) for n in layer["inbound_nodes"][0]]
            got = [t._keras_history.operation.name for t in _inputs(ours[name])]
            assert got == want, name
        cfg = layer["config"]
        for key in ("filters", "kernel_size", "strides", "padding", "pool_size", "units", "epsilon"):
            if key in cfg:
                value = getattr(ours[name], key, None)
                value = list(value) if isinstance(value, tuple) else value
                assert value == cfg[key], (name, key)
    assert len(ours) == len(original["layers"])


def _inputs(layer):
    node = layer._inbound_nodes[0]
    return node.input_tensors


def test_merge_layer_is_serializable_without_lambda():
    import keras

    from ssrconv.reference.model import SSRMerge, build_ssrnet

    model = build_ssrnet("gender")
    config = model.to_json()
    assert "Lambda" not in config
    clone = keras.models.model_from_json(config)
    merge = clone.get_layer("pred_gender")
    assert isinstance(merge, SSRMerge) and merge.V == 1.0 and merge.stage_num == (3, 3, 3)


def test_counts(assets_dir):
    from ssrconv.reference.model import build_ssrnet, count_macs, count_params

    model = build_ssrnet("age")
    assert count_params(model) == 40_915  # the original's stored parameter count
    assert 17.0e6 < count_macs(model) < 17.2e6


def test_age_mae_on_adult_faces(reference_age_gender, faces):
    out = reference_age_gender.predict(faces.inputs)
    adults = faces.ages >= 16
    assert adults.sum() == 240
    mae = np.mean(np.abs(out["age"][adults] - faces.ages[adults]))
    assert mae < 10.0
    accuracy = np.mean((out["p_male"][adults] > 0.5) == (faces.is_male[adults] == 1.0))
    assert accuracy > 0.85


def test_bgr_matters(reference_age_gender, faces):
    """Feeding RGB instead of BGR makes adult ages clearly worse: the contract is real."""
    adults = faces.ages >= 16
    bgr = reference_age_gender.predict(faces.inputs[adults])["age"]
    rgb = reference_age_gender.predict(faces.inputs[adults][..., ::-1])["age"]
    truth = faces.ages[adults]
    assert np.mean(np.abs(rgb - truth)) > np.mean(np.abs(bgr - truth)) + 1.0


@pytest.mark.parametrize("task", ["age", "gender"])
def test_age_gender_model_equals_single_heads(reference_age_gender, references, faces, task):
    single = references(task).reference.predict(faces.inputs[:32])
    key = "age" if task == "age" else "p_male"
    both = reference_age_gender.predict(faces.inputs[:32])[key]
    np.testing.assert_allclose(both, single[key], atol=1e-5)

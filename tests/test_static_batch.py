"""``ssrconv export --batch N``: files with a fixed input batch, for runtimes without an input
resize call (LiteRT.js), still run every batch size on every engine that reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssrconv.artifacts import open_artifact

ENGINES = {"onnx": ("onnxruntime", "openvino", "tract"), "tflite": ("litert", "openvino")}


@pytest.fixture(scope="module")
def static_export(exported):
    return {family: exported(f"{family}-fp32", batch=3) for family in ("onnx", "tflite")}


def test_the_file_declares_the_batch_and_the_manifest_records_it(static_export):
    for family, artifact in static_export.items():
        manifest = json.loads(artifact.manifest_path.read_text())
        assert manifest["batch"] == 3, family
        assert artifact.format.static_batch(artifact.path) == 3, family
        assert manifest["inputs"][0]["shape"][0] == 3, (family, manifest["inputs"])


@pytest.mark.parametrize("family,engine", [(f, e) for f, es in ENGINES.items() for e in es])
def test_any_number_of_faces_runs_within_the_fp32_budget(static_export, family, engine,
                                                         budget_check):
    # The dev faces are fed 64 at a time (parity.run_batched): 64 = 21 x 3 + 1, so the last
    # chunk of every call is padded; an engine fed the whole batch unchunked refuses the file.
    with open_artifact(static_export[family].path).runtime(engine=engine) as runtime:
        assert runtime.batch == 3
        broken, stats = budget_check(runtime, "fp32")
        one = runtime.run(np.zeros((1, 64, 64, 3), np.float32))
    assert broken == [], (family, engine, stats)
    assert one["age"].shape == (1,) and one["p_male"].shape == (1,)


def test_a_variable_batch_export_declares_none(export_dir):
    from ssrconv.artifacts import discover

    for found in discover(export_dir):
        artifact = found.open()
        if artifact.format.family in ("onnx", "tflite"):
            assert artifact.format.static_batch(artifact.path) is None, artifact.label
            assert artifact.manifest["batch"] is None

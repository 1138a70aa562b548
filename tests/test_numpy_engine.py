"""The numpy reference engine against the Keras reference and against the independent oracle
(tests/golden_numpy.py, driven by the original JSON graph), and the runtime-only fallbacks."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from golden_assets import golden_outputs
from ssrconv.errors import MissingExtraError, WeightsError
from ssrconv.reference.synthetic import synthetic_inputs
from ssrconv.reference import load_reference_runtime
from ssrconv.assets import ASSETS
from ssrconv.stages import stage_specs

ENGINES = ("numpy-float32", "numpy-float64")
AGE = [n for n, a in ASSETS.items() if a.kind == "age"]
GENDER = [n for n, a in ASSETS.items() if a.kind == "gender"]
# Largest |numpy - golden| allowed, per engine and head (years; P(male)). float64 is limited
# by the float32 outputs every runtime returns (age ~50 y: float32 spacing 4e-6 y).
GOLDEN_TOL = {"numpy-float32": {"age": 1e-4, "p_male": 2e-5},
              "numpy-float64": {"age": 1e-5, "p_male": 1e-6}}


@pytest.fixture(scope="module")
def golden_default(golden):
    return {"age": golden("age-wiki"), "p_male": golden("gender-wiki")}


@pytest.mark.parametrize("engine", ENGINES)
def test_matches_golden_on_a_few_faces(assets_dir, faces, numpy_references, engine):
    batch = np.concatenate([faces.inputs[:24], synthetic_inputs(6)])
    got = numpy_references(engine).run(batch)
    for head, name in (("age", "age-wiki"), ("p_male", "gender-wiki")):
        diff = np.max(np.abs(got[head].astype(np.float64) - golden_outputs(assets_dir, name, batch)))
        assert diff < GOLDEN_TOL[engine][head], (head, diff)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_matches_golden_on_parity_inputs(parity_inputs, golden_default, numpy_references, engine):
    runtime = numpy_references(engine)
    assert runtime.engine == engine and runtime.backend == "reference"
    assert runtime.heads == ("age", "p_male")
    got = runtime.run(parity_inputs)
    assert len(parity_inputs) == 364
    for head in ("age", "p_male"):
        assert got[head].dtype == np.float32 and got[head].shape == (364,)
        diff = np.max(np.abs(got[head].astype(np.float64) - golden_default[head]))
        assert diff < GOLDEN_TOL[engine][head], (head, diff)
    assert 1.0 < np.mean(got["age"]) < 100.0 and np.std(got["p_male"]) > 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", AGE + GENDER)
def test_single_heads_match_golden_for_every_weights_file(faces, golden, name):
    batch = faces.inputs[:64]
    kind = ASSETS[name].kind
    weights = {"age_weights": name} if kind == "age" else {"gender_weights": name}
    runtime = load_reference_runtime(kind, engine="numpy-float64", **weights)
    head = "age" if kind == "age" else "p_male"
    assert runtime.heads == (head,)
    diff = np.max(np.abs(runtime.run(batch)[head] - golden(name)[:len(batch)]))
    assert diff < GOLDEN_TOL["numpy-float64"][head], diff


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_matches_keras_to_1e4_years(keras_reference, numpy_references, parity_inputs, engine):
    keras, inputs = keras_reference, parity_inputs
    want = {h: np.concatenate([keras.run(inputs[i:i + 64])[h] for i in range(0, len(inputs), 64)])
            for h in keras.heads}
    got = numpy_references(engine).run(inputs)
    assert np.max(np.abs(got["age"] - want["age"])) < 1e-4
    assert np.max(np.abs(got["p_male"] - want["p_male"])) < 1e-4


def test_stage_outputs_match_golden_with_and_without_prefix(assets_dir, faces, numpy_references):
    batch = faces.inputs[:16]
    _, golden = golden_outputs(assets_dir, "gender-wiki", batch, return_all=True)
    both = numpy_references("numpy-float64")
    single = load_reference_runtime("gender", engine="numpy-float64")
    got_both = both.stage_outputs(batch, stage_specs(("age", "p_male")))
    got_single = single.stage_outputs(batch, stage_specs(("p_male",)))
    assert len(got_both) == 18 and len(got_single) == 9
    for spec in stage_specs(("p_male",)):
        original = spec.layer.replace("pred_gender_stage", "pred_age_stage")  # the JSON's name
        assert got_both[spec.key].shape == (16, spec.units)
        np.testing.assert_allclose(got_both[spec.key], golden[original], atol=1e-6, err_msg=spec.key)
        np.testing.assert_array_equal(got_single[spec.key], got_both[spec.key])


# Keras' stage tensors are within 1e-5 of the float64 original (tests/test_golden.py); so is
# numpy-float64; two float32 implementations rounding independently can differ by twice that
# (measured 1.5e-5 on one of 64 x 36 values: a relu output of 0.07 after cancellation).
STAGE_TOL = {"numpy-float64": 1e-5, "numpy-float32": 2e-5}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_stage_outputs_match_keras(keras_reference, numpy_references, faces, engine):
    batch = faces.inputs[:64]
    specs = stage_specs(("age", "p_male"))
    want = keras_reference.stage_outputs(batch, specs)
    got = numpy_references(engine).stage_outputs(batch, specs)
    for spec in specs:
        np.testing.assert_allclose(got[spec.key], want[spec.key], atol=STAGE_TOL[engine],
                                   err_msg=spec.key)


def test_stage_outputs_refuse_unknown_layers(assets_dir, faces):
    from ssrconv.stages import StagesUnavailable

    single = load_reference_runtime("age", engine="numpy")
    with pytest.raises(StagesUnavailable, match="age_pred_age_stage1"):
        single.stage_outputs(faces.inputs[:2], stage_specs(("age", "p_male")))


def test_wrong_or_incomplete_weights_are_refused(assets_dir, tmp_path):
    import h5py

    with pytest.raises(WeightsError, match="holds gender weights"):
        load_reference_runtime("age", age_weights="gender-wiki", engine="numpy")
    broken = tmp_path / "broken.h5"
    with h5py.File(assets_dir / ASSETS["age-wiki"].filename) as src, h5py.File(broken, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in src:
            src.copy(src[name], dst, name)
        dst.attrs["layer_names"] = [n for n in src.attrs["layer_names"]
                                    if (n.decode() if isinstance(n, bytes) else n) != "dense_5"]
    with pytest.raises(WeightsError, match="no weights for model layers dense_5"):
        load_reference_runtime("age", age_weights=str(broken), engine="numpy")


def test_batch_shapes(numpy_references):
    runtime = numpy_references("numpy-float32")
    assert runtime.run(np.zeros((0, 64, 64, 3), np.float32))["age"].shape == (0,)
    # more faces than one internal chunk, and a remainder
    assert runtime.run(np.full((37, 64, 64, 3), 128, np.float32))["p_male"].shape == (37,)
    from ssrconv.errors import SsrconvError

    with pytest.raises(SsrconvError, match="64 x 64 x 3"):
        runtime.run(np.zeros((2, 62, 62, 3), np.float32))


# --- TensorFlow missing, simulated in-process ------------------------------------------------

CONVERTERS = ("tensorflow", "keras", "tf2onnx", "coremltools")


@pytest.fixture
def no_tensorflow(monkeypatch):
    """The converters not installed: `import tensorflow` fails and find_spec finds nothing
    (a None entry in sys.modules does both), undone after the test."""
    for name in CONVERTERS:
        monkeypatch.setitem(sys.modules, name, None)


def test_auto_falls_back_to_numpy_without_tensorflow(assets_dir, no_tensorflow):
    from ssrconv.reference import reference_engine

    assert reference_engine("auto") == "numpy-float32"
    assert load_reference_runtime(engine="auto").engine == "numpy-float32"


def test_auto_is_keras_with_tensorflow():
    from ssrconv.reference import reference_engine

    assert reference_engine("auto") == "keras"  # the test environment has ssrconv[export]


@pytest.mark.parametrize("argv", [
    ["export", "--to", "tflite"],
    ["export", "--to", "onnx", "--precision", "fp32"],
    ["eval", "{faces}", "--backend", "keras"],
    ["predict", "{images}/astronaut.png", "--backend", "keras"],
])
def test_commands_needing_the_converters_fail_in_one_line(cli, tmp_path, faces_dir, images_dir,
                                                          no_tensorflow, argv):
    argv = [a.format(faces=faces_dir, images=images_dir) for a in argv]
    if argv[0] == "export":
        argv += ["--out", str(tmp_path / "out")]
    result = cli(*argv)
    err = result.stderr
    assert result.returncode == 1, err
    assert err.count("\n") == 1, err
    assert "pip install 'ssrconv[export]'" in err and "not installed" in err, err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_info_without_tensorflow_counts_on_numpy(cli, assets_dir, no_tensorflow):
    result = cli("info")
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "40,915" in out and "17,078,926" in out  # the counts test_cli reads from Keras
    assert "reference engine numpy-float32" in out and "age-wiki" in out


def test_counts_match_keras(reference_age_gender, numpy_references):
    from ssrconv.reference.model import count_macs, count_params
    from ssrconv.reference.numpy_engine import count_macs as numpy_macs

    runtime = numpy_references("numpy-float32")
    assert runtime.params == {"age": count_params(reference_age_gender.model) // 2,
                              "gender": count_params(reference_age_gender.model) // 2}
    assert numpy_macs("age") == numpy_macs("gender") == count_macs(reference_age_gender.model) // 2


def test_keras_engine_without_tensorflow_names_the_extra(assets_dir, no_tensorflow):
    with pytest.raises(MissingExtraError, match=r"the keras reference needs the converters "
                                                r"\(tensorflow is not installed\): pip install "
                                                r"'ssrconv\[export\]'"):
        load_reference_runtime(engine="keras")


def test_require_names_missing_dependency(monkeypatch):
    from ssrconv._extras import require

    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(MissingExtraError, match=r"running a \.mlpackage needs coremltools "
                                                r"\(coremltools is not installed\): pip install "
                                                r"'ssrconv\[coreml\]'"):
        require("coremltools", "coreml", "running a .mlpackage")
    assert require("json", "export", "x") is sys.modules["json"]


@pytest.fixture(scope="module")
def tflite_fp32(exported):
    """One fp32 .tflite exported with the converters (before any of them is hidden)."""
    return exported("tflite-fp32").path


@pytest.mark.slow
def test_parity_and_predict_run_on_numpy_without_tensorflow(cli, tmp_path, tflite_fp32, faces_dir,
                                                            images_dir, no_tensorflow):
    import json

    report = tmp_path / "parity.json"
    result = cli("parity", "--model", tflite_fp32, "--faces", faces_dir, "--json", report)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["reference_engine"] == "numpy-float32" and data["passed"]
    (result,) = data["results"]
    assert result["faces"] == 300 and result["real"]["age"]["max_abs"] < 1e-3
    assert result["stages"] is not None and len(result["stages"]) == 18
    assert "reference (numpy-float32)" in out
    for module in CONVERTERS:
        assert sys.modules[module] is None  # nothing imported them behind the test's back

    result = cli("predict", images_dir / "group_t1.jpg")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["faces"]) == 6
    for module in CONVERTERS:  # the reference that predicted was the numpy one: TF never loaded
        assert sys.modules[module] is None

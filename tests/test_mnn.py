"""MNN export (MNN's converter from the ONNX export) and runtime (pip MNN): parity on the dev
faces per precision, a perturbed file failing parity, describe() matching the file, the input
contract honoured."""

from __future__ import annotations


import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.faces, pytest.mark.assets]


@pytest.fixture(scope="module")
def mnn_export(exported):
    return {precision: exported(f"mnn-{precision}") for precision in ("fp32", "fp16")}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_mnn_artifact_passes_parity_on_its_runtime(mnn_export, precision, budget_check):
    from ssrconv.loading import load_runtime

    artifact = mnn_export[precision]
    assert (artifact.manifest["graph"], artifact.manifest["graph_variant"]) == ("fast",
                                                                                "onnx-unpadded")
    runtime = load_runtime(artifact.path)  # precision read from the file (its bizCode)
    assert runtime.precision == precision
    assert runtime.heads == ("age", "p_male")
    # parity runs the file under the options its manifest tells an app to use (an .mnn cannot
    # carry them): precision low (fp16 arithmetic on ARMv8.2) or high, Winograd off
    stated = artifact.manifest["mnn_runtime"]
    assert runtime.config["precision"] == stated["precision"] == \
        ("low" if precision == "fp16" else "high")
    assert runtime.hints == stated["hints"] == {"WINOGRAD_MEMORY_LEVEL": 0}
    broken, stats = budget_check(runtime, artifact.target.budget_class)
    assert broken == [], stats


def test_stage_tensors_are_found_in_the_fused_graph(mnn_export, stage_drift):
    stages = stage_drift(mnn_export["fp32"].path)
    assert max(stages.values()) < 1e-4, stages


def test_perturbed_mnn_fails_parity(mnn_export, tmp_path, budget_check):
    from ssrconv.runtimes.mnn_rt import MnnRuntime

    good = mnn_export["fp32"].path
    data = bytearray(good.read_bytes())
    # Change a run of float32 weights in the middle of the file (the weights dominate it).
    start = len(data) // 2 & ~3
    values = np.frombuffer(bytes(data[start:start + 400]), np.float32) * 1.5 + 0.05
    data[start:start + 400] = values.astype(np.float32).tobytes()
    bad = tmp_path / "perturbed.mnn"
    bad.write_bytes(bytes(data))
    broken, _ = budget_check(MnnRuntime(bad, precision="fp32"), "fp32")
    assert broken, "100 changed weights should break the fp32 budget"


def test_manifest_and_describe_match_the_file(mnn_export):
    from ssrconv.formats import mnn as reader
    from ssrconv.exporter import artifact_digest

    for precision, artifact in mnn_export.items():
        described = reader.describe(artifact.path)
        assert (artifact.manifest["bytes"], artifact.manifest["sha256"]) == \
            artifact_digest(artifact.path)
        for key in ("inputs", "outputs", "ops", "mnn_version", "biz_code"):
            assert artifact.manifest[key] == described[key], key
        assert [i["name"] for i in described["inputs"]] == ["face_bgr"]
        assert described["inputs"][0]["shape"] == [None, 64, 64, 3]
        assert [o["name"] for o in described["outputs"]] == ["age", "p_male"]
    from ssrconv.formats.mnn import file_precision

    assert [file_precision(a.path) for a in mnn_export.values()] == list(mnn_export)
    # --fp16 halves the stored weights
    assert mnn_export["fp16"].bytes < 0.7 * mnn_export["fp32"].bytes


def test_the_contract_tensor_gives_the_reference_answer(mnn_export, faces, reference_outputs):
    from ssrconv.runtimes.mnn_rt import MnnRuntime

    runtime = MnnRuntime(mnn_export["fp32"].path)
    for n in (1, 7):  # batch 1 and a batch MNN must resize to
        got = runtime.run(faces.inputs[:n])
        assert np.abs(got["age"] - reference_outputs["age"][:n]).max() < 0.01
        assert np.abs(got["p_male"] - reference_outputs["p_male"][:n]).max() < 1e-4
    swapped = runtime.run(np.ascontiguousarray(faces.inputs[:1].transpose(0, 2, 1, 3)))
    rgb = runtime.run(np.ascontiguousarray(faces.inputs[:1, ..., ::-1]))
    base = reference_outputs["age"][0]
    assert abs(swapped["age"][0] - base) > 0.01 or abs(rgb["age"][0] - base) > 0.01


def test_verify_rejects_foreign_files(tmp_path):
    from ssrconv.formats.mnn import verify
    from ssrconv.errors import ModelFileError

    short = tmp_path / "short.mnn"
    short.write_bytes(b"\x00" * 8)
    with pytest.raises(ModelFileError, match="too short"):
        verify(short)
    foreign = tmp_path / "foreign.mnn"
    foreign.write_bytes(b"\xff\xff\xff\x7f" + b"\x00" * 60)
    with pytest.raises(ModelFileError, match="not an MNN model"):
        verify(foreign)


def test_fp16_weights_are_rounded_to_nearest_before_mnns_truncating_conversion(tmp_path):
    """MNN's ``--fp16`` truncates toward zero (the cause of the PyTorch port's mnn-fp16 mean error
    0.0509 y: docs/CONVERTERS.md); after :func:`round_to_fp16` the file holds the
    round-to-nearest float16 weights exactly."""
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ssrconv.converters.mnn import _CONVERT, round_to_fp16
    from ssrconv.formats.mnn import mnn_module

    # nearest float16 / truncated: 1 + 2^-10 / 1, 1 / 1, 1 / 1 - 2^-11, -(1 + 2^-10) / -1
    values = np.array([1 + 3 * 2 ** -12, 1 + 2 ** -12 + 2 ** -14, 1 - 2 ** -13, -(1 + 3 * 2 ** -12)],
                      np.float32)
    n = len(values)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n, 1, 1])],
        [numpy_helper.from_array(np.diag(values).reshape(n, n, 1, 1), "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mnn = mnn_module()

    def weights_in_mnn(model, name):
        source, dest = tmp_path / f"{name}.onnx", tmp_path / f"{name}.mnn"
        onnx.save(model, str(source))
        subprocess.run([sys.executable, "-c", _CONVERT, "-f", "ONNX", "--modelFile", str(source),
                        "--MNNModel", str(dest), "--bizCode", "test", "--fp16"],
                       capture_output=True, check=True, timeout=120)
        module = mnn.nn.load_module_from_file(str(dest), ["x"], ["y"])
        ones = np.ones((1, n, 1, 1), np.float32)
        F = mnn.expr
        return np.array(module.forward([F.const(ones, [1, n, 1, 1], F.NCHW)])[0].read()).ravel()

    nearest = values.astype(np.float16).astype(np.float32)
    truncated = weights_in_mnn(proto, "raw")
    np.testing.assert_array_equal(truncated, [1.0, 1.0, 1 - 2 ** -11, -1.0])
    assert round_to_fp16(proto) == 1
    np.testing.assert_array_equal(weights_in_mnn(proto, "rounded"), nearest)
    assert not np.array_equal(nearest, truncated)

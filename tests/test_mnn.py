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


def test_fp16_weights_are_rounded_before_mnn_truncates_them():
    """MNN's --fp16 truncates each weight toward zero (half.hpp's default rounding): the
    converter first puts every float32 initializer on the float16 grid by rounding to nearest,
    where truncation changes nothing."""
    import onnx
    from onnx import numpy_helper

    from ssrconv.converters.mnn import round_to_half

    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.3, 4096).astype(np.float32)
    shape = numpy_helper.from_array(np.array([64, 64], np.int64), "shape")
    graph = onnx.helper.make_graph([], "g", [], [], [numpy_helper.from_array(weights, "w"), shape])
    proto = onnx.helper.make_model(graph)
    assert round_to_half(proto) == 1  # the int64 tensor is left alone
    rounded = numpy_helper.to_array(proto.graph.initializer[0])
    assert np.array_equal(rounded, weights.astype(np.float16).astype(np.float32))
    truncated = (rounded.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
    assert np.array_equal(truncated, rounded)  # MNN's cast is now exact
    # truncating the original weights instead shrinks them all, by 2.4e-4 relative on average
    shrink = 1 - np.abs((weights.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)) / np.abs(weights)
    assert np.all(shrink >= 0) and 1e-4 < shrink.mean() < 5e-4
    assert np.array_equal(numpy_helper.to_array(proto.graph.initializer[1]), [64, 64])

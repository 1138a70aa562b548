"""ncnn export (pnnx) and runtime (pip ncnn): parity on the dev faces per precision, a perturbed
bin failing parity, describe() matching the files, the input contract honoured."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.faces, pytest.mark.assets]


@pytest.fixture(scope="module")
def ncnn_export(exported):
    return {precision: exported(f"ncnn-{precision}") for precision in ("fp32", "fp16")}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_ncnn_artifact_passes_parity_on_its_runtime(ncnn_export, precision, budget_check):
    from ssrconv.loading import load_runtime

    artifact = ncnn_export[precision]
    # the fast graph: its 12 groups=2 convs are ncnn ConvolutionDepthWise layers with group 2
    # fp16: the variant with the input scaled by 2^-8 (pnnx zeroes float16 subnormal weights)
    variant = "onnx-unpadded-fp16" if precision == "fp16" else "onnx-unpadded"
    assert (artifact.manifest["graph"], artifact.manifest["graph_variant"]) == ("fast", variant)
    param = next(artifact.path.glob("*.ncnn.param"))
    from ssrconv.formats.ncnn import parse_param

    groups = [int(layer[4]["7"]) for layer in parse_param(param)["layers"]
              if layer[0] == "ConvolutionDepthWise"]
    assert groups == [2] * 12
    runtime = load_runtime(artifact.path)  # precision read from the bin's weight tag
    assert runtime.engine == f"ncnn-cpu-{precision}"
    assert runtime.heads == ("age", "p_male")
    broken, stats = budget_check(runtime, artifact.target.budget_class)
    assert broken == [], stats
    if precision == "fp32":
        assert runtime.options["use_fp16_storage"] is False
        assert runtime.options["use_winograd_convolution"] is False


def test_stage_tensors_are_found_in_the_fused_blobs(ncnn_export, stage_drift):
    stages = stage_drift(ncnn_export["fp32"].path)
    assert max(stages.values()) < 1e-4, stages


def test_perturbed_bin_fails_parity(ncnn_export, tmp_path, budget_check):
    from ssrconv.runtimes.ncnn_rt import NcnnRuntime

    package = tmp_path / "perturbed.ncnn"
    shutil.copytree(ncnn_export["fp32"].path, package)
    weights = next(package.glob("*.ncnn.bin"))
    data = bytearray(weights.read_bytes())
    # The first Convolution's float32 weights start after its 4-byte tag; scale eight of them.
    for i in range(8):
        offset = 4 + 4 * (10 * i)
        (value,) = struct.unpack_from("<f", data, offset)
        struct.pack_into("<f", data, offset, value * 1.5 + 0.05)
    weights.write_bytes(bytes(data))
    broken, _ = budget_check(NcnnRuntime(package, precision="fp32"), "fp32")
    assert broken, "eight changed weights should break the fp32 budget"


def test_manifest_and_describe_match_the_files(ncnn_export):
    from ssrconv.formats import ncnn as reader
    from ssrconv.exporter import artifact_digest

    for precision, artifact in ncnn_export.items():
        files = sorted(p.name for p in artifact.path.iterdir())
        stem = f"ssrnet_age_gender_{precision}"
        assert files == [f"{stem}.ncnn.bin", f"{stem}.ncnn.param"]  # pnnx's extras dropped
        described = reader.describe(artifact.path)
        manifest = artifact.manifest
        assert (manifest["bytes"], manifest["sha256"]) == artifact_digest(artifact.path)
        for key in ("inputs", "outputs", "layer_count", "blob_count", "files", "weights_dtype"):
            assert manifest[key] == described[key], key
        assert [i["name"] for i in described["inputs"]] == ["face_bgr"]
        assert [o["name"] for o in described["outputs"]] == ["age", "p_male"]
        assert described["weights_dtype"] == ("float16" if precision == "fp16" else "float32")
        assert reader.file_precision(artifact.path) == precision
        header = (artifact.path / f"{stem}.ncnn.param").read_text().splitlines()
        assert header[0] == "7767517"
        assert header[1].split() == [str(described["layer_count"]), str(described["blob_count"])]


def test_the_contract_tensor_gives_the_reference_answer(ncnn_export, faces, reference_outputs):
    """One contract face (64x64x3 BGR 0..255, NHWC) gives the reference's answer; the same face
    transposed (HWC -> WHC) or as RGB does not: the layout is really the one documented."""
    from ssrconv.runtimes.ncnn_rt import NcnnRuntime

    runtime = NcnnRuntime(ncnn_export["fp32"].path)
    face = faces.inputs[:1]
    got = runtime.run(face)
    assert abs(got["age"][0] - reference_outputs["age"][0]) < 0.01
    assert abs(got["p_male"][0] - reference_outputs["p_male"][0]) < 1e-4
    swapped = runtime.run(np.ascontiguousarray(face.transpose(0, 2, 1, 3)))
    rgb = runtime.run(np.ascontiguousarray(face[..., ::-1]))
    assert abs(swapped["age"][0] - got["age"][0]) > 0.01 or abs(rgb["age"][0] - got["age"][0]) > 0.01


def test_verify_rejects_broken_packages(ncnn_export, tmp_path):
    from ssrconv.formats.ncnn import verify
    from ssrconv.errors import ModelFileError

    good = ncnn_export["fp32"].path
    missing = tmp_path / "missing.ncnn"
    shutil.copytree(good, missing)
    next(missing.glob("*.ncnn.bin")).unlink()
    with pytest.raises(ModelFileError, match="one .ncnn.param and one .ncnn.bin"):
        verify(missing)
    truncated = tmp_path / "truncated.ncnn"
    shutil.copytree(good, truncated)
    param = next(truncated.glob("*.ncnn.param"))
    param.write_text("\n".join(param.read_text().splitlines()[:-3]) + "\n")
    with pytest.raises(ModelFileError, match="truncated or edited"):
        verify(truncated)
    short_bin = tmp_path / "short.ncnn"
    shutil.copytree(good, short_bin)
    weights = next(short_bin.glob("*.ncnn.bin"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="truncated"):
        verify(short_bin)
    not_param = tmp_path / "foreign.ncnn"
    shutil.copytree(good, not_param)
    next(not_param.glob("*.ncnn.param")).write_text("hello\n")
    with pytest.raises(ModelFileError, match="magic"):
        verify(not_param)

"""The SSR-Net family: the ports' files read as data, recognised, and rebuilt exactly.

Each port's rebuild (numpy engine and Keras) is held to an independent float64 evaluation that
shares no graph code with ssrconv: the MXNet port's own ``-symbol.json`` interpreted over its
``.params`` (tests/independent_mxnet.py), the PyTorch port's architecture written from its
module (tests/independent_pytorch.py) and, where torch is installed, run by PyTorch itself.
Files come from ``SSRCONV_PORTS`` (shared/ports), never from the repository.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from ssrconv.errors import WeightsError

PTH = "oukohou-pytorch/model_Adam_MSELoss_LRDecay_weightDecay0.0001_batch50_lr0.0005_epoch90_64x64.pth"
MX_AGE = "wayen820-mxnet/ssr2_megaage_1_1/model-0000.params"
MX_GENDER = "wayen820-mxnet/ssr2_imdb_gender_1_1/model-0000.params"
MEGAAGE = "b02901145-megaage/ssrnet_3_3_3_64_1.0_1.0.h5"
# The fp32 budget a rebuilt member is held to against its independent reference.
AGE_BUDGET, P_MALE_BUDGET = 0.01, 1e-4


@pytest.mark.parametrize("name, member, task, params", [
    (PTH, "oukohou-pytorch", "age", 45_255),
    (MX_AGE, "wayen820-mxnet", "age", 40_915),
    (MX_GENDER, "wayen820-mxnet", "gender", 40_915),
    (MEGAAGE, "original", "age", 40_915),
])
def test_every_published_file_is_recognised_as_its_member(ports_dir, name, member, task, params):
    from ssrconv.reference.family import get_member
    from ssrconv.reference.numpy_engine import expected_layers
    from ssrconv.reference.weights import read_weights

    weights = read_weights(ports_dir / name)
    assert (weights.member, weights.task) == (member, task)
    assert sum(a.size for layer in weights.layers.values() for a in layer.values()) == params
    expected = expected_layers(task, get_member(member).arch)
    got = {layer: {v: a.shape for v, a in arrays.items()}
           for layer, arrays in weights.layers.items() if arrays}
    assert got == expected


def test_original_spec_is_the_original_graph():
    from ssrconv.reference.family import ORIGINAL

    arch = ORIGINAL.arch
    assert arch.name == "ssrnet_3_3_3_64_1.0_1.0"
    assert arch.flat_widths() == (160, 90, 90)
    assert ORIGINAL.preprocess.identity
    assert arch.conv_sizes()["conv2d_13"] == 31


def test_pytorch_spec_reads_its_dense_widths_from_same_padding():
    from ssrconv.reference.family import get_member

    assert get_member("oukohou-pytorch").arch.flat_widths() == (640, 160, 160)


def test_fast_graph_serves_heads_that_one_conv_can_serve():
    """The fast graph groups the heads' convs: they must pad alike and share the stage-1
    summary activation; heads that zero-pad a normalised input must share its normalisation."""
    from dataclasses import replace

    from ssrconv.graph import fast_graph_blocker
    from ssrconv.reference.family import MEMBERS

    original, mxnet, pytorch = (MEMBERS[n]
                                for n in ("original", "wayen820-mxnet", "oukohou-pytorch"))
    for member in MEMBERS.values():
        assert fast_graph_blocker({"age": member, "gender": member}) is None
    assert "pad" in fast_graph_blocker({"age": pytorch, "gender": mxnet})
    assert "ReLU" in fast_graph_blocker({"age": original, "gender": mxnet})
    # valid convs fold each head's own normalisation into its first convs
    assert fast_graph_blocker(
        {"age": mxnet, "gender": replace(mxnet, preprocess=original.preprocess)}) is None
    # padding=1 keeps one input_affine layer for every head
    assert "normalise" in fast_graph_blocker(
        {"age": pytorch, "gender": replace(pytorch, preprocess=original.preprocess)})


def _port_reference(ports_dir, files):
    from ssrconv.reference import load_reference
    from ssrconv.reference.model import with_named_outputs

    task = "age-gender" if len(files) == 2 else "age"
    reference = load_reference(task, *(ports_dir / f for f in files))
    return task, reference, with_named_outputs(reference.model, task)


@pytest.mark.slow
@pytest.mark.parametrize("files", [(MX_AGE, MX_GENDER), (PTH,)], ids=["mxnet", "pytorch"])
def test_fast_graph_of_each_port_is_exact_in_every_variant(ports_dir, faces, independent, files):
    """The builder follows the member's spec (BN epsilon, stage-1 ReLU, padding, preprocessing):
    each variant passes the export's exactness check on the 300 dev faces and synthetic inputs,
    and the member's independent reference agrees with it to the fp32 budget."""
    from ssrconv.graph.builder import build_export_graph, check_exact, grouped_convs_runnable
    from ssrconv.reference.synthetic import synthetic_inputs

    task, reference, model = _port_reference(ports_dir, files)
    inputs = np.concatenate([faces.inputs, synthetic_inputs(96, seed=13)])
    # one variant per knob: XLA groups, padded summaries, input scaling, per-head convs and
    # Dense, the 16x8 graph's summary pools in 2x2 steps (padding=1: 16 -> 8 -> 4 and
    # 32 -> 16 -> 8 -> 4) and its merge, per-stage Dense with plain groups
    for variant in ("tflite", "onnx", "onnx-unpadded-fp16", "per-head", "per-head-integer",
                    "coreml-perstage"):
        fast = build_export_graph(model, task, variant, reference.members)
        diffs = check_exact(model, fast, inputs)  # raises above 1e-3 y / 1e-4
        assert set(diffs) == ({"age", "p_male"} if task == "age-gender" else {"age"})
    with grouped_convs_runnable():  # the last variant's GroupedConv2D
        got = fast.predict(faces.inputs, verbose=0)
    got = got if isinstance(got, list) else [got]
    for out, name, budget in zip(got, files, (AGE_BUDGET, P_MALE_BUDGET)):
        want = independent(name)
        assert np.max(np.abs(out[:, 0] - want)) < budget


@pytest.mark.slow
def test_fast_graph_built_as_the_original_is_refused_for_a_port(ports_dir, faces):
    """The spec matters and the check sees it: the MXNet pair (the original's shapes) built
    with the original's spec (BN eps 1e-3, ReLU summaries, no preprocessing) fails the check."""
    from ssrconv.graph import GraphNotExactError
    from ssrconv.graph.builder import build_export_graph, check_exact

    task, _, model = _port_reference(ports_dir, (MX_AGE, MX_GENDER))
    wrong = build_export_graph(model, task, "tflite")  # members default to the original
    with pytest.raises(GraphNotExactError, match="not exact"):
        check_exact(model, wrong, faces.inputs[:64])


@pytest.mark.parametrize("member", ["original", "wayen820-mxnet", "oukohou-pytorch"])
def test_every_members_calibrated_targets_convert_its_fast_graph(tmp_path, member):
    """int8 converts the fast graph for every member, as every other precision does: no
    per-member special case in the exporter (the recipes' float layers:
    test_int8_recipe_keeps_a_wide_stage1_float_for_the_pytorch_port; the MXNet pair's files:
    test_mxnet_pair_exports_every_target_and_each_passes_parity)."""
    from ssrconv.exporter import _ExportGraphs
    from ssrconv.options import ExportOptions
    from ssrconv.reference.family import MEMBERS
    from ssrconv.targets import CALIBRATED_PRECISIONS, TARGETS

    graphs = _ExportGraphs("reference", ExportOptions(to=("all",), out=tmp_path), None, print,
                           {"age": MEMBERS[member], "gender": MEMBERS[member]})
    graphs.built = {t.variant: f"fast {t.variant}" for t in TARGETS.values()}  # no Keras here
    for target in (t for t in TARGETS.values() if t.precision in CALIBRATED_PRECISIONS):
        assert graphs.for_target(target) == ("fast", target.variant, f"fast {target.variant}",
                                             None)


@pytest.mark.parametrize("name", ["per-head-integer", "per-head-int8-integer"])
def test_integer_graphs_split_only_a_delta_wider_than_the_originals(ports_dir, faces, name):
    """The integer graphs (16x8 and integer int8) compute the PyTorch port's stage-1 delta
    (640 products) as four Dense outputs, one per group of its weights by magnitude, summed
    by weights 1: the same function, and a per-channel int8 scale per group (one scale for
    the 640 weights cost the port's 16x8 file p99 1.05 y; its integer int8 file, calibrated
    on faces, p99 1.53 -> 1.33 y). The 160-wide deltas (the port's stages 2-3, every
    original delta) stay one Dense: grouped, the original's data-free file measured worse
    (docs/INT8.md, "The 16x8 file")."""
    from ssrconv.graph import VARIANTS
    from ssrconv.graph.builder import build_export_graph, check_exact
    from ssrconv.reference import load_reference

    variant = VARIANTS[name]
    assert variant.delta_scale_groups == 4
    task, reference, model = _port_reference(ports_dir, (PTH,))
    fast = build_export_graph(model, task, variant, reference.members)
    check_exact(model, fast, faces.inputs[:32])  # raises beyond 1e-3 y
    names = {layer.name for layer in fast.layers}
    assert "delta_s1_groups" in names and not {"delta_s2_groups", "delta_s3_groups"} & names
    groups = fast.get_layer("delta_s1_groups").get_weights()[0]
    total = fast.get_layer("delta_s1").get_weights()[0]
    want = model.get_layer("delta_s1").get_weights()[0][:, 0]
    assert groups.shape == (640, 4) and np.all(total == 1.0)
    assert np.all((groups != 0).sum(axis=1) <= 1)  # each weight in one group
    np.testing.assert_array_equal(groups.sum(axis=1), want)
    peaks = np.abs(groups).max(axis=0)  # the groups' int8 scales differ
    assert peaks.min() < peaks.max() / 2
    original = build_export_graph(load_reference("age").model, "age", variant)
    assert not any(layer.name.endswith("_groups") for layer in original.layers)


@pytest.mark.slow
@pytest.mark.parametrize("calibration", ["faces", "data-free"])
def test_pytorch_ports_16x8_file_is_within_the_int8_budget(exported, ports_dir, faces, faces_dir,
                                                           calibration):
    """The PyTorch port's 16x8 file holds the int8 budget, calibrated on faces and data-free.
    It measured p99 1.05 y > 1.0 before its 640-input stage-1 delta was split into groups with
    their own int8 scales and the merge's stage weights moved where per-channel int8 stores
    them exactly (docs/INT8.md, "The 16x8 file")."""
    from ssrconv.parity import check

    weights = str(ports_dir / PTH)
    options = {} if calibration == "faces" else {"calibration": None}
    artifact = exported("tflite-int16x8", task="age", age_weights=weights, **options)
    assert artifact.manifest["integer_only"] is True
    report = check([artifact.path], faces.inputs, str(faces_dir), synthetic=0,
                   age_weights=weights, raise_on_failure=False)
    (r,) = report.results
    assert r.budget["p99_age"] == 1.0 and r.budget["max_age"] == 2.5
    assert r.passed, r.violations


@pytest.mark.slow
@pytest.mark.parametrize("calibration", ["faces", "data-free"])
def test_pytorch_ports_int8_integer_file_is_within_the_int8_budget_on_both_engines(
        exported, ports_dir, faces_dir, tmp_path, capsys, calibration):
    """The PyTorch port's int8-integer file holds the int8 budget (tail included), calibrated on
    faces and data-free, on LiteRT (XNNPACK's QS8 kernels for its int8 conv, the builtin 16x8
    kernels for the rest) and on TFLite Micro. All its maps int8 it measured 0.43 / 1.33 / 1.65
    y (faces) and 0.50 / 2.51 / 7.69 (data-free): the rounding of every map, the input affine's
    most. Now only relu_conv2 (44% of its multiply-adds) is int8, every other map int16
    (Variant.wide_stage1_int8_maps; docs/INT8.md, "The PyTorch port's int8-integer file: int16
    maps"); the original's and the MXNet pair's files keep every map int8."""
    import json

    from ssrconv.formats.tflite_flatbuffer import operators, schema

    fb = schema()
    options = {} if calibration == "faces" else {"calibration": None}
    artifact = exported("tflite-int8", task="age", age_weights=str(ports_dir / PTH),
                        **options)
    assert artifact.manifest["integer_only"] is True
    assert artifact.manifest["fine_tuning"]["steps"] == (600 if calibration == "faces" else 0)
    assert artifact.manifest["int8_maps"] == ["relu_conv2"]
    _, sg, ops = operators(artifact.path.read_bytes())
    # (the export's names are compacted away: relu_conv2 is the 3x3 conv on 32 x 32 x 32)
    int8_convs = [(list(sg.tensors[op.inputs[0]].shape), list(sg.tensors[op.inputs[1]].shape))
                  for name, op in ops
                  if name == "CONV_2D" and sg.tensors[op.inputs[0]].type == fb.TensorType.INT8]
    assert int8_convs == [([1, 32, 32, 32], [32, 3, 3, 32])]
    # its SAME-padded 64 x 64 (and 32 x 32 int16) convs in row bands on explicitly PADded
    # inputs: TFLite Micro's arena measured 226,224 bytes, 374,112 unbanded
    assert [name for name, _ in ops].count("PAD") == 2
    assert artifact.manifest["mcu"]["ram_bytes"] < 250_000
    report = tmp_path / "parity.json"
    _cli(["parity", "--model", artifact.path, "--faces", faces_dir, "--synthetic", "0",
          "--weights", ports_dir / PTH, "--engines", "litert,tflite-micro", "--json", report],
         capsys)
    results = json.loads(report.read_text())["results"]
    assert {r["engine"] for r in results} == {"tflite+xnnpack", "tflite-micro"}
    for r in results:
        assert r["faces"] == 300 and r["budget"]["max_age"] == 2.5
        assert r["passed"], (r["engine"], r["violations"])


@pytest.mark.slow
@pytest.mark.parametrize("key, engines", [("tflite-int16x8", {"tflite-builtin", "tflite-micro"}),
                                          ("tflite-int8", {"tflite+xnnpack", "tflite-micro"})])
def test_mxnet_pairs_data_free_integer_files_are_within_the_int8_budget(
        exported, ports_dir, faces_dir, tmp_path, capsys, key, engines):
    """The MXNet pair's integer files calibrated data-free hold the int8 budget on its aligned
    faces, on LiteRT (XNNPACK for the int8 convolutions, builtin kernels for int16) and on
    TFLite Micro. The 16x8 file measured mean 0.17 / p99 1.34 / max 2.54 y, the integer int8
    file 0.33 / 1.38 / 3.1 y, while the distilled inputs matched BatchNorm statistics alone:
    they spanned 10-55 y of output and reached a third to a tenth of the ranges the faces reach
    in the age head's stage-1 tensors; each input now also gets a target output spread over
    [0, V] (calibration.distill_inputs; docs/INT8.md, "The MXNet pair's data-free 16x8 file"),
    and the integer int8 file's average pools are clipped (tflite_qat.RECIPE_DATA_FREE; "Every
    member's data-free int8-integer file")."""
    from ssrconv.calibration import DATA_FREE_KIND

    artifact = exported(key, age_weights=str(ports_dir / MX_AGE),
                        gender_weights=str(ports_dir / MX_GENDER), calibration=None)
    assert artifact.manifest["calibration"]["kind"] == DATA_FREE_KIND
    assert artifact.manifest["calibration"]["output_targets"] == ["age", "p_male"]
    _assert_mxnet_integer_file_within_budget(artifact, faces_dir, tmp_path, capsys, engines)


@pytest.mark.slow
def test_mxnet_pairs_int8_file_calibrated_on_faces_is_within_the_int8_budget(
        mxnet_export_dir, faces_dir, tmp_path, capsys):
    """The MXNet pair's integer int8 file calibrated (and fine-tuned) on its aligned faces, the
    one of its `--to all` export, holds the int8 budget on XNNPACK and TFLite Micro (measured
    0.26 / 0.88 / 0.94 y and 0.25 / 0.95 / 1.2 y; docs/INT8.md, "Every member's data-free
    int8-integer file")."""
    from ssrconv.artifacts import open_artifact

    artifact = open_artifact(mxnet_export_dir / "ssrnet_age_gender_int8.tflite")
    assert artifact.manifest["calibration"]["crop_rule"] == "align5-arcface112"
    assert artifact.manifest["fine_tuning"]["steps"] > 0
    _assert_mxnet_integer_file_within_budget(artifact, faces_dir, tmp_path, capsys,
                                             {"tflite+xnnpack", "tflite-micro"})


def _assert_mxnet_integer_file_within_budget(artifact, faces_dir, tmp_path, capsys, engines):
    """``ssrconv parity`` of the MXNet pair's integer ``artifact`` on LiteRT and TFLite Micro:
    one row per engine in ``engines``, each on the 300 faces aligned by 5 points, within the
    int8 budget (tail included)."""
    import json

    assert artifact.manifest["integer_only"] is True
    report = tmp_path / "parity.json"
    _cli(["parity", "--model", artifact.path, "--faces", faces_dir, "--synthetic", "0",
          "--engines", "litert,tflite-micro", "--json", report], capsys)
    results = json.loads(report.read_text())["results"]
    assert {r["engine"] for r in results} == engines
    for r in results:
        assert r["crop_rule"] == "align5-arcface112" and r["faces"] == 300
        assert r["budget"]["p99_age"] == 1.0 and r["budget"]["max_age"] == 2.5
        assert r["passed"], r["violations"]


def test_arch_names_a_member_and_refuses_a_wrong_one(ports_dir):
    from ssrconv.reference.weights import read_weights

    assert read_weights(ports_dir / PTH, member="oukohou-pytorch").member == "oukohou-pytorch"
    with pytest.raises(WeightsError, match="a pytorch file, not --arch wayen820-mxnet"):
        read_weights(ports_dir / PTH, member="wayen820-mxnet")
    with pytest.raises(WeightsError, match="unknown SSR-Net member"):
        read_weights(ports_dir / PTH, member="nope")


def test_cli_arch_lists_the_known_members_for_an_unknown_name(cli, ports_dir, tmp_path):
    from ssrconv.reference.family import MEMBERS

    result = cli("export", "--to", "onnx", "--task", "age", "--weights", ports_dir / PTH,
                 "--arch", "nope", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "--arch" in result.stderr and all(name in result.stderr for name in MEMBERS)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["export", "eval", "predict", "parity"])
@pytest.mark.parametrize("name, arch, says", [
    (PTH, "wayen820-mxnet", "a pytorch file, not --arch wayen820-mxnet"),
    (MX_AGE, "oukohou-pytorch", "a mxnet file, not --arch oukohou-pytorch"),
    (MEGAAGE, "oukohou-pytorch", "an .h5 holds the original Keras graph, not --arch oukohou-pytorch"),
    (PTH, "original", "a pytorch file, not --arch original"),
])
def test_cli_arch_refuses_a_file_of_another_member_in_one_line(cli, ports_dir, faces_dir, images_dir,
                                                               tmp_path, command, name, arch, says):
    path = ports_dir / name
    args = {"export": ["export", "--to", "onnx", "--task", "age", "--weights", path,
                       "--out", tmp_path / "out"],
            "eval": ["eval", faces_dir, "--model", path],
            "predict": ["predict", images_dir / "group_t1.jpg", "--model", path],
            "parity": ["parity", tmp_path, "--weights", path]}[command]
    result = cli(*args, "--arch", arch)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("ssrconv: error:")]
    assert len(lines) == 1 and says in lines[0] and str(path) in lines[0], result.stderr
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_cli_arch_default_weights_are_the_original_member(cli, faces_dir):
    result = cli("eval", faces_dir, "--arch", "wayen820-mxnet")
    assert result.returncode == 1
    assert "an .h5 holds the original Keras graph, not --arch wayen820-mxnet" in result.stderr


def test_cli_arch_reads_a_file_of_that_member(cli, ports_dir, faces_dir):
    """``--arch`` naming the file's own member changes nothing: eval of the PyTorch port's
    reference gives the same figures with and without it."""
    args = ["eval", faces_dir, "--model", ports_dir / PTH, "--reference-engine", "numpy"]
    named = cli(*args, "--arch", "oukohou-pytorch")
    plain = cli(*args)
    assert named.returncode == plain.returncode == 0, named.stderr
    assert "MAE" in named.stdout and named.stdout == plain.stdout


def test_a_file_that_matches_no_member_lists_expected_and_found(ports_dir, tmp_path):
    from ssrconv.reference.weights import read_weights

    # Same-length renames keep the legacy pickle valid: the tensors are read, the names differ.
    data = (ports_dir / PTH).read_bytes().replace(b"stage1_prob.0", b"stage1_PROB.0")
    renamed = tmp_path / "renamed.pth"
    renamed.write_bytes(data)
    with pytest.raises(WeightsError) as err:
        read_weights(renamed)
    message = str(err.value)
    assert "matches no SSR-Net member" in message and "\n" not in message
    assert "missing e.g. stage1_prob.0.bias" in message
    assert "unexpected e.g. stage1_PROB.0.bias" in message


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _legacy_pth(payload) -> bytes:
    """PyTorch's legacy layout: magic, protocol, system info, then the object's pickle."""
    parts = [pickle.dumps(0x1950A86A20F9469CFC6C, 2), pickle.dumps(1001, 2),
             pickle.dumps({"little_endian": True}, 2), pickle.dumps(payload, 2)]
    return b"".join(parts)


@pytest.mark.parametrize("container", ["legacy", "zip"])
def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path, container):
    from ssrconv.reference.weights import read_weights

    marker = tmp_path / "executed"
    payload = {"state_dict": {"conv.weight": _RunsCode(marker)}}
    evil = tmp_path / "evil.pth"
    if container == "legacy":
        evil.write_bytes(_legacy_pth(payload))
    else:
        with zipfile.ZipFile(evil, "w") as archive:
            archive.writestr("evil/data.pkl", pickle.dumps(payload, 2))
    with pytest.raises(WeightsError) as err:
        read_weights(evil)
    assert not marker.exists()
    assert "refused to load" in str(err.value) and "system" in str(err.value)
    assert "\n" not in str(err.value)


def test_pytorch_reader_resolves_a_checkpoints_tensors_without_torch(ports_dir):
    from ssrconv.reference.torch_pickle import load_torch_file

    checkpoint = load_torch_file(ports_dir / PTH)
    assert set(checkpoint) == {"state_dict", "epoch", "optimizer_state_dict"}
    weight = checkpoint["state_dict"]["stream1_stage3.0.weight"]
    assert weight.shape == (32, 3, 3, 3) and weight.dtype == np.float32
    assert np.all(np.isfinite(weight)) and np.std(weight) > 0


def test_truncated_mxnet_params_is_one_clear_error(ports_dir, tmp_path):
    from ssrconv.reference.weights import read_weights

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model-symbol.json").write_bytes(
        (ports_dir / "wayen820-mxnet/ssr2_megaage_1_1/model-symbol.json").read_bytes())
    (folder / "model-0000.params").write_bytes((ports_dir / MX_AGE).read_bytes()[:5000])
    with pytest.raises(WeightsError, match="truncated MXNet .params"):
        read_weights(folder / "model-0000.params")


def test_mxnet_params_without_its_symbol_says_what_is_missing(ports_dir, tmp_path):
    from ssrconv.reference.weights import read_weights

    lone = tmp_path / "model-0000.params"
    lone.write_bytes((ports_dir / MX_AGE).read_bytes())
    with pytest.raises(WeightsError, match="model-symbol.json"):
        read_weights(lone)


@pytest.fixture(scope="session")
def independent(made_once, ports_dir, faces):
    """``independent(name) -> float64 array``: the independent evaluation of the port's file
    ``name`` (``_mxnet_reference``/``_pytorch_reference``) on every face of SSRCONV_FACES,
    computed once per run (about 10 CPU-s each) and read by every test that compares with it."""
    computed = {}

    def get(name: str) -> np.ndarray:
        if name not in computed:
            def make(out):
                outputs = (_mxnet_reference(ports_dir, name, faces.inputs) if name != PTH
                           else _pytorch_reference(ports_dir, faces.inputs))
                np.save(out / "outputs.npy", outputs)

            saved = made_once("independent-" + name.replace("/", "-"), make)
            computed[name] = np.load(saved / "outputs.npy", allow_pickle=False)
        return computed[name]

    return get


def _mxnet_reference(ports_dir, name, faces):
    from independent_mxnet import mxnet_port_outputs

    folder = (ports_dir / name).parent
    return mxnet_port_outputs(folder / "model-symbol.json", ports_dir / name, faces)


def _pytorch_reference(ports_dir, faces):
    from independent_pytorch import port_forward, port_input

    from ssrconv.reference.torch_pickle import load_torch_file, state_dict_of

    path = ports_dir / PTH
    return port_forward(state_dict_of(load_torch_file(path), path), port_input(faces))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["numpy-float64", "numpy-float32"])
def test_numpy_engine_matches_each_ports_independent_reference(ports_dir, faces, independent,
                                                              engine):
    from ssrconv.reference import load_reference_runtime

    x = faces.inputs
    tolerance = {"numpy-float64": 1e-5, "numpy-float32": 1e-3}[engine]
    got = load_reference_runtime("age", age_weights=ports_dir / PTH, engine=engine).run(x)
    assert np.max(np.abs(got["age"] - independent(PTH))) < tolerance
    got = load_reference_runtime("age-gender", ports_dir / MX_AGE, ports_dir / MX_GENDER,
                                 engine=engine).run(x)
    assert np.max(np.abs(got["age"] - independent(MX_AGE))) < tolerance
    assert np.max(np.abs(got["p_male"] - independent(MX_GENDER))) < tolerance / 10


@pytest.mark.slow
def test_keras_rebuild_of_each_port_matches_its_independent_reference(ports_dir, faces,
                                                                     independent):
    from ssrconv.reference import load_reference

    x = faces.inputs
    assert len(x) == 300
    got = load_reference("age", age_weights=ports_dir / PTH).predict(x)["age"]
    assert np.max(np.abs(got - independent(PTH))) < AGE_BUDGET
    got = load_reference("age-gender", ports_dir / MX_AGE, ports_dir / MX_GENDER).predict(x)
    assert np.max(np.abs(got["age"] - independent(MX_AGE))) < AGE_BUDGET
    assert np.max(np.abs(got["p_male"] - independent(MX_GENDER))) < P_MALE_BUDGET


def test_one_model_with_heads_of_different_crop_rules_has_no_contract(ports_dir):
    from ssrconv.reference.weights import read_heads
    from ssrconv.reference.preprocess import contract_for

    _, _, members = read_heads("age-gender", ports_dir / PTH, ports_dir / MX_GENDER)
    with pytest.raises(WeightsError, match="different face crops") as err:
        contract_for(members)
    assert "oukohou-pytorch (margin)" in str(err.value)
    assert contract_for({"age": members["age"]})["crop_rule"] == "margin"
    assert contract_for({"gender": members["gender"]})["crop_rule"] == "align5-arcface112"


def _torch_module():
    """The port's architecture as a torch module under its own state_dict names (written from
    SSR_models/SSR_Net_model.py; the port's file itself is not committed), so PyTorch's own
    conv/BatchNorm/pool/view semantics evaluate the checkpoint loaded with strict=True."""
    import torch
    from torch import nn

    def block(c_in, c_out, act, pool, twice=False):
        layers = [nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), act(), pool(2, 2)]
        if twice:
            layers += [nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), act()]
        return nn.Sequential(*layers)

    class Port(nn.Module):
        def __init__(self):
            super().__init__()
            for stream, (ch, act, pool) in {1: (32, nn.ReLU, nn.AvgPool2d),
                                            2: (16, nn.Tanh, nn.MaxPool2d)}.items():
                setattr(self, f"stream{stream}_stage3", block(3, ch, act, pool))
                setattr(self, f"stream{stream}_stage2", block(ch, ch, act, pool))
                setattr(self, f"stream{stream}_stage1", block(ch, ch, act, pool, twice=True))
                for k, size in ((3, 8), (2, 4), (1, None)):
                    before = [nn.Conv2d(ch, 10, 1), nn.ReLU()] + ([pool(size, size)] if size else [])
                    setattr(self, f"funsion_block_stream{stream}_stage_{k}_before_PB",
                            nn.Sequential(*before))
                    setattr(self, f"funsion_block_stream{stream}_stage_{k}_prediction_block",
                            nn.Sequential(nn.Dropout(0.2), nn.Linear(640 if k == 1 else 160, 3),
                                          nn.ReLU()))
            for k in (1, 2, 3):
                setattr(self, f"stage{k}_FC_after_PB", nn.Sequential(nn.Linear(3, 6), nn.ReLU()))
                setattr(self, f"stage{k}_prob", nn.Sequential(nn.Linear(6, 3), nn.ReLU()))
                setattr(self, f"stage{k}_index_offsets", nn.Sequential(nn.Linear(6, 3), nn.Tanh()))
                setattr(self, f"stage{k}_delta_k",
                        nn.Sequential(nn.Linear(640 if k == 1 else 160, 1), nn.Tanh()))

        def forward(self, image):
            feats = {}
            for s in (1, 2):
                f3 = getattr(self, f"stream{s}_stage3")(image)
                f2 = getattr(self, f"stream{s}_stage2")(f3)
                f1 = getattr(self, f"stream{s}_stage1")(f2)
                for k, f in ((3, f3), (2, f2), (1, f1)):
                    e = getattr(self, f"funsion_block_stream{s}_stage_{k}_before_PB")(f)
                    feats[s, k] = e.view(e.size(0), -1)
            total, denominator = 0, 1
            for k in (1, 2, 3):
                delta = getattr(self, f"stage{k}_delta_k")(feats[1, k] * feats[2, k])
                after = (getattr(self, f"funsion_block_stream1_stage_{k}_prediction_block")(feats[1, k])
                         * getattr(self, f"funsion_block_stream2_stage_{k}_prediction_block")(feats[2, k]))
                after = getattr(self, f"stage{k}_FC_after_PB")(after)
                prob = getattr(self, f"stage{k}_prob")(after)
                offset = getattr(self, f"stage{k}_index_offsets")(after)
                index = torch.arange(3, dtype=prob.dtype)
                regress = ((index + offset) * prob).sum(1, keepdim=True)
                denominator = denominator * (3 * (1 + delta))
                total = total + regress / denominator
            return (total * 101)[:, 0]

    return Port()


@pytest.mark.slow
def test_pytorch_itself_agrees_with_the_ports_rebuild(ports_dir, faces, independent):
    torch = pytest.importorskip("torch", reason="torch not installed (optional: ssrconv[torch-tests])")
    from independent_pytorch import port_input

    from ssrconv.reference import load_reference_runtime

    module = _torch_module().double().eval()
    checkpoint = torch.load(ports_dir / PTH, map_location="cpu", weights_only=True)
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    x = faces.inputs
    with torch.no_grad():
        want = module(torch.from_numpy(np.ascontiguousarray(port_input(x)))).numpy()
    got = load_reference_runtime("age", age_weights=ports_dir / PTH, engine="numpy-float64").run(x)
    assert np.max(np.abs(got["age"] - want)) < 1e-5
    assert np.max(np.abs(want - independent(PTH))) < 1e-9


def _cli(args, capsys):
    from ssrconv.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    return out, err


@pytest.mark.slow
@pytest.mark.parametrize("files, to, member, crop_rule", [
    ((PTH,), "onnx", "oukohou-pytorch", "margin"),
    ((MEGAAGE,), "onnx", "original", "margin"),
])
def test_each_member_exports_and_passes_parity_naming_member_and_contract(
        ports_dir, faces_dir, tmp_path, capsys, files, to, member, crop_rule):
    """Each member exports its fast graph (checked exact at export) and passes parity (the
    MXNet pair: test_mxnet_pair_exports_every_target_and_each_passes_parity)."""
    import json

    out_dir = tmp_path / "out"
    weights = [arg for name in files for arg in ("--weights", ports_dir / name)]
    task = "age-gender" if len(files) == 2 else "age"
    _cli(["export", "--to", to, "--task", task, *weights, "--arch", member, "--out", out_dir],
         capsys)
    (manifest_path,) = out_dir.glob(f"*.{to}.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["preprocessing"]["input"] == "face_bgr"
    assert manifest["preprocessing"]["crop_rule"] == crop_rule
    assert manifest["graph"] == "fast" and manifest["graph_note"] is None
    assert {entry["member"] for entry in manifest["family"].values()} == {member}
    assert manifest["family"]["age"]["arch"]["name"] == "ssrnet_3_3_3_64_1.0_1.0"
    report = tmp_path / "parity.json"
    out, _ = _cli(["parity", out_dir, "--faces", faces_dir, "--reference-engine", "numpy",
                   "--json", report], capsys)
    (result,) = json.loads(report.read_text())["results"]
    assert result["faces"] == 300 and result["crop_rule"] == crop_rule
    assert result["real"]["age"]["max_abs"] < AGE_BUDGET
    assert f"age: {member}" in out and f"({crop_rule})" in out


@pytest.mark.slow
def test_predict_cuts_faces_by_the_artifacts_crop_rule(ports_dir, images_dir, mxnet_export_dir,
                                                        capsys):
    """The MXNet pair's artifact aligns faces by 5 landmarks: predict reads that rule from the
    manifest, and its ages equal the reference's on those aligned crops."""
    import json

    from ssrconv.detect import YuNetDetector
    from ssrconv.reference import load_reference_runtime
    from ssrconv.reference.preprocess import align_face, read_image

    model = mxnet_export_dir / "ssrnet_age_gender_fp32.onnx"
    photo = images_dir / "group_t1.jpg"
    out, _ = _cli(["predict", photo, "--model", model], capsys)
    faces = json.loads(out)["faces"]
    image = read_image(photo)
    found = sorted(YuNetDetector().detect(image), key=lambda f: f.box[0])
    reference = load_reference_runtime("age-gender", ports_dir / MX_AGE, ports_dir / MX_GENDER,
                                       engine="numpy-float64")
    want = reference.run(np.stack([align_face(image, f.landmarks) for f in found]))["age"]
    got = np.array([r["age"] for r in sorted(faces, key=lambda r: r["box"][0])])
    assert len(got) == len(found) == 6
    assert np.max(np.abs(got - want)) < 1e-2


def test_alignment_puts_landmarks_on_the_arcface_template():
    from ssrconv.reference.preprocess import ARCFACE_112, _similarity

    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (ARCFACE_112 - shift) @ np.linalg.inv(rotation).T  # template = rotation @ p + shift
    matrix = _similarity(points, ARCFACE_112)
    assert np.allclose(points @ matrix[:, :2].T + matrix[:, 2], ARCFACE_112)


@pytest.mark.slow
def test_pytorch_port_exports_every_target_and_each_passes_parity(ports_dir, faces_dir, tmp_path,
                                                                   capsys):
    """One port through ``--to all`` (the CI budget allows one): every target is written and
    held to its budget against the port's own reference, faces cut by its contract (its
    tflite-int8 is integer-only; its mnn-fp16 is rounded to nearest before
    MNN's truncating conversion: docs/PORTS.md)."""
    import json

    from ssrconv.options import ExportOptions

    out_dir = tmp_path / "all"
    _cli(["export", "--to", "all", "--task", "age", "--weights", ports_dir / PTH,
          "--calibration", faces_dir, "--out", out_dir], capsys)
    written = {json.loads(p.read_text())["target"] for p in out_dir.glob("*.json")
               if p.name != "index.json"}
    assert written == {t.key for t in ExportOptions(to=("all",), task="age").targets}
    report = tmp_path / "parity.json"
    _cli(["parity", out_dir, "--faces", faces_dir, "--reference-engine", "numpy",
          "--json", report], capsys)
    results = json.loads(report.read_text())["results"]
    assert all(r["passed"] and r["member"] == "age: oukohou-pytorch" for r in results)


@pytest.mark.slow
def test_mxnet_pair_exports_every_target_and_each_passes_parity(mxnet_export_dir, faces_dir,
                                                                 tmp_path, capsys):
    """The MXNet pair through ``--to all``: every target written from the fast graph (int8
    too: calibrated on the pair's own aligned crops, docs/PORTS.md "int8"), the manifests name
    the member and its contract, and each file passes its budget against the pair's own
    reference, faces cut by its 5-point alignment."""
    import json

    from ssrconv.options import ExportOptions

    manifests = [json.loads(p.read_text()) for p in mxnet_export_dir.glob("*.json")
                 if p.name != "index.json"]
    assert {m["target"] for m in manifests} == \
        {t.key for t in ExportOptions(to=("all",), task="age-gender").targets}
    for manifest in manifests:
        assert manifest["graph"] == "fast" and manifest["graph_note"] is None
        assert manifest["preprocessing"]["crop_rule"] == "align5-arcface112"
        assert {entry["member"] for entry in manifest["family"].values()} == {"wayen820-mxnet"}
        if manifest["calibration"] is not None:
            assert manifest["calibration"]["crop_rule"] == "align5-arcface112"
    report = tmp_path / "parity.json"
    out, _ = _cli(["parity", mxnet_export_dir, "--faces", faces_dir, "--reference-engine", "numpy",
                   "--json", report], capsys)
    results = json.loads(report.read_text())["results"]
    assert len(results) == len(manifests)
    assert all(r["passed"] and r["faces"] == 300 and r["crop_rule"] == "align5-arcface112"
               for r in results)
    assert "age: wayen820-mxnet" in out and "(align5-arcface112)" in out


def test_mnn_fp16_of_the_pytorch_port_runs_in_float32_arithmetic(ports_dir):
    """The port's mnn-fp16 broke the fp16 budget in fp16 arithmetic on arm64 (mean 0.063 y,
    Winograd off, rounded weights; float32 arithmetic 0.012: docs/ARM64.md): its file names the
    run options with float32 arithmetic (MNN precision normal); the original's keeps fp16
    arithmetic (precision low)."""
    from ssrconv.converters.mnn import run_key_for
    from ssrconv.formats.mnn import RUN_OPTIONS
    from ssrconv.reference import load_reference

    port = load_reference("age", ports_dir / PTH).model
    original = load_reference("age", ports_dir / MEGAAGE).model
    assert run_key_for(port, "fp16") == "fp16-fp32-arithmetic"
    assert RUN_OPTIONS["fp16-fp32-arithmetic"]["precision"] == "normal"
    assert (run_key_for(original, "fp16"), run_key_for(port, "fp32")) == ("fp16", "fp32")
    assert RUN_OPTIONS["fp16"]["precision"] == "low"


def test_stage1_products_of_a_model_are_its_specs(ports_dir):
    """Whether stage 1 is wider than the original's (family.wide_stage1: the MNN run key, the
    int8 recipes' float blocks, the 16x8 graph's grouped delta) is asked of a model through
    graph.stage1_products: the reference's and the export graph's stage-1 summary, with or
    without a head prefix, give the count the member's spec gives."""
    from ssrconv.graph import stage1_products
    from ssrconv.graph.builder import build_export_graph
    from ssrconv.reference import load_reference
    from ssrconv.reference.family import wide_stage1

    port = load_reference("age", ports_dir / PTH)
    pair = load_reference("age-gender", ports_dir / MX_AGE, ports_dir / MX_GENDER)
    for reference, products in ((port, 640), (pair, 160)):
        fast = build_export_graph(reference.model, reference.task, "per-head", reference.members)
        assert reference.members["age"].arch.flat_widths()[0] == products
        assert stage1_products(reference.model) == stage1_products(fast) == products
    assert (wide_stage1(640), wide_stage1(160)) == (True, False)


def test_int8_recipe_keeps_a_wide_stage1_float_for_the_pytorch_port(ports_dir):
    """The PyTorch port's fourth blocks output 8 x 8 maps (the original's 4 x 4): both int8
    recipes keep them float besides their float layers for the original (without: tflite-int8-mixed
    p99 1.23 y, onnx-int8 1.19 y; docs/PORTS.md)."""
    from ssrconv.converters.int8_prep import STAGE1_BLOCKS, rewrite
    from ssrconv.converters.onnx_int8 import INT8_LAYERS, int8_layer_names
    from ssrconv.converters.tflite_int8 import FLOAT_BACKBONE, float_backbone_layers
    from ssrconv.graph.builder import build_export_graph
    from ssrconv.reference import load_reference

    reference = load_reference("age", ports_dir / PTH)
    port = rewrite(reference.model)
    original = rewrite(load_reference("age", ports_dir / MEGAAGE).model)
    assert set(float_backbone_layers(port)) == {*FLOAT_BACKBONE, *STAGE1_BLOCKS, "input_affine"}
    # the same layers in the fast graph int8 converts: the fourth blocks' fused layers
    fast = rewrite(build_export_graph(reference.model, "age", "tflite", reference.members))
    assert {"relu_conv4", "tanh_conv4", "tanh_act4", "input_affine"} <= \
        set(float_backbone_layers(fast))
    assert set(float_backbone_layers(original)) == set(FLOAT_BACKBONE)
    # onnx-int8 (and openvino-int8, the same file): the relu stream's third block and its pools
    assert int8_layer_names(port) == {"conv2d_3", "activation_3", "average_pooling2d_2_dw",
                                      "average_pooling2d_3_dw"}
    assert int8_layer_names(original) == set(INT8_LAYERS)


def test_int8_float_layers_of_the_mxnet_pair_are_matched_through_twins(ports_dir):
    """The MXNet pair's reference graph has one ``input_affine`` per head, both reading
    ``face_bgr`` with the same kernel: TFLite keeps one op for the two, named for one head, and
    tflite-int8-mixed finds the other head's float layer through its twin (docs/PORTS.md, "int8")."""
    from ssrconv.converters.tflite_int8 import _twins
    from ssrconv.reference import load_reference

    model = load_reference("age-gender", ports_dir / MX_AGE, ports_dir / MX_GENDER).model
    twins = _twins(model, ["gender_input_affine", "gender_conv2d_1", "age_conv2d_1"])
    assert twins == {"gender_input_affine": {"age_input_affine"}, "gender_conv2d_1": set(),
                     "age_conv2d_1": set()}

"""Exports: every target from the real weights, loadable, described truthfully by its manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssrconv.targets import EXPORTED_BY_ALL, TARGETS

pytestmark = pytest.mark.slow


def _manifest(export_dir, key):
    target = TARGETS[key]
    path = export_dir / target.filename("age-gender")
    return path, json.loads((export_dir / (path.name + ".json")).read_text())


def test_every_target_exported_with_manifest_and_index(export_dir):
    index = json.loads((export_dir / "index.json").read_text())
    assert sorted(e["target"] for e in index["artifacts"]) == sorted(EXPORTED_BY_ALL)
    for entry in index["artifacts"]:
        assert (export_dir / entry["file"]).exists()
        assert (export_dir / entry["manifest"]).is_file()
    leftovers = [p.name for p in export_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize("key", EXPORTED_BY_ALL)
def test_manifest_matches_file_on_disk(export_dir, key):
    from ssrconv.artifacts import artifact_digest

    path, manifest = _manifest(export_dir, key)
    size, sha = artifact_digest(path)
    assert manifest["bytes"] == size and manifest["sha256"] == sha
    assert manifest["target"] == key and manifest["file"] == path.name
    assert manifest["weights"]["age"]["name"] == "age-wiki"
    assert manifest["weights"]["gender"]["name"] == "gender-wiki"
    assert manifest["preprocessing"]["colour"] == "BGR"
    assert {"tensorflow", "onnx", "coremltools", "tf2onnx"} <= set(manifest["tools"])
    assert [o["name"] for o in manifest["outputs"]] == ["age", "p_male"]
    assert manifest["inputs"][0]["name"] == "face_bgr"


def test_onnx_checker_runtime_and_metadata(export_dir, faces):
    import onnx
    import onnxruntime as ort

    path, manifest = _manifest(export_dir, "onnx-fp32")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["ssrconv.preprocessing"])["colour"] == "BGR"
    assert meta["ssrconv.weights.age.sha256"] == manifest["weights"]["age"]["sha256"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert manifest["opset"] == 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == ["tensor(float)"]
    for batch in (1, 5):
        age, p_male = session.run(["age", "p_male"], {"face_bgr": faces.inputs[:batch]})
        assert age.shape == (batch, 1) and np.all(np.isfinite(age)) and np.all((0 <= p_male) & (p_male <= 1))


@pytest.mark.parametrize("key", [k for k in TARGETS if k.startswith("tflite")])
def test_tflite_loads_and_manifest_io_matches_interpreter(exported, faces, key):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    artifact = exported(key)  # the --to all file when the session has one
    path, manifest = artifact.path, artifact.manifest
    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner = interpreter.get_signature_runner()
    for entry, (name, detail) in zip(manifest["inputs"] + manifest["outputs"],
                                     list(runner.get_input_details().items())
                                     + list(runner.get_output_details().items())):
        assert entry["name"] == name and entry["dtype"] == np.dtype(detail["dtype"]).name
        scale, zero_point = detail["quantization"]
        if entry["quantization"] is None:
            assert scale == 0.0
        else:
            assert entry["quantization"] == {"scale": pytest.approx(scale), "zero_point": zero_point}
    feed = faces.inputs[:1]
    out = runner(face_bgr=feed)
    assert out["age"].shape == (1, 1) and np.all(np.isfinite(out["age"]))


def test_int8_mixed_backbone_is_integer_head_float_and_says_so(export_dir, exported):
    manifest = exported("tflite-int8-mixed").manifest
    # The fast graph (docs/GRAPH.md): one fused conv per layer for both heads (groups=2 after the
    # first). int8: the relu stream's conv3/conv4 and pool3, the tanh stream's conv2-4 and their
    # pools (5 of the 14 convolutions, 1 of the 5 average pools as depthwise, 2 of the 5 max
    # pools); float: the first block of each stream, the relu stream's second, the six 1x1
    # summary convs with their pools, and the head (FLOAT_BACKBONE, docs/INT8.md)
    assert manifest["graph"] == "fast"
    assert manifest["ops"]["CONV_2D"] == 14 and manifest["ops"]["DEPTHWISE_CONV_2D"] == 5
    assert manifest["ops"]["CONV_2D"] - manifest["float_ops"]["CONV_2D"] == 5
    assert manifest["ops"]["DEPTHWISE_CONV_2D"] - manifest["float_ops"]["DEPTHWISE_CONV_2D"] == 1
    assert manifest["ops"]["MAX_POOL_2D"] - manifest["float_ops"]["MAX_POOL_2D"] == 2
    assert manifest["float_ops"]["FULLY_CONNECTED"] == manifest["ops"]["FULLY_CONNECTED"]
    assert manifest["integer_only"] is False and "float16-stored weights): the first conv block" in manifest["int8_recipe"]
    assert manifest["calibration"] == {"kind": "real faces", "source": manifest["calibration"]["source"],
                                       "images": 300, "files": 300, "chips": 300, "photos": 0,
                                       "faces_kind": "auto", "crop_rule": "margin"}
    _, fp32 = _manifest(export_dir, "tflite-fp32")
    assert fp32["integer_only"] is False and fp32["calibration"] is None
    _, dynamic = _manifest(export_dir, "tflite-dynamic")
    assert dynamic["integer_only"] is False and "CONV_2D" in dynamic["float_ops"]


def test_onnx_int8_relu_stream_fused_to_qlinearconv_and_says_so(export_dir, faces):
    import onnx
    import onnxruntime as ort

    path, manifest = _manifest(export_dir, "onnx-int8")
    # per head: conv2d_2..4 and the three average pools (fixed depthwise convs) are quantized
    # (QDQ, S8S8); everything else stays float. The manifest reports what onnxruntime's own
    # optimizer makes of it (QLinearConv fusions), read back from a session, not assumed.
    assert manifest["integer_ops"] == {"Conv": 2 * 6}
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(export_dir.parent / "int8-optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = sum(n.op_type == "QLinearConv" for n in onnx.load(options.optimized_model_filepath).graph.node)
    assert manifest["onnxruntime_ops"]["ops"].get("QLinearConv", 0) == fused
    assert manifest["float_ops"]["MatMul"] == manifest["ops"]["MatMul"]  # the SSR head
    assert manifest["float_ops"]["Conv"] == manifest["ops"]["Conv"] - 2 * 6
    assert manifest["integer_only"] is False and "float: the first conv block, the tanh stream" in manifest["int8_recipe"]
    assert manifest["calibration"]["images"] == 300 and manifest["opset"] == 17
    assert [(e["name"], e["dtype"]) for e in manifest["inputs"]] == [("face_bgr", "float32")]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    from onnx import numpy_helper

    int8 = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer
            if i.data_type == onnx.TensorProto.INT8}
    kernels = [n for n in int8 if n.endswith("_quantized")]
    # 6 conv kernels, plus the 1/4 pool kernel tf2onnx shares between the six 2x2 pools
    assert len(kernels) == 2 * 3 + 1
    for kernel in kernels:  # symmetric weights (activations are asymmetric int8)
        zero = int8.get(kernel[:-len("_quantized")] + "_zero_point")
        assert zero is None or not zero.any(), kernel
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["ssrconv.weights.age.sha256"] == manifest["weights"]["age"]["sha256"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        age, p_male = session.run(["age", "p_male"], {"face_bgr": faces.inputs[:batch]})
        assert age.shape == (batch, 1) and np.all(np.isfinite(age)) and np.all((0 <= p_male) & (p_male <= 1))


@pytest.mark.parametrize("key", ["coreml-fp16", "coreml-fp32"])
def test_coreml_spec_matches_manifest(export_dir, key):
    import coremltools as ct

    path, manifest = _manifest(export_dir, key)
    spec = ct.utils.load_spec(str(path))
    assert spec.WhichOneof("Type") == "mlProgram"
    assert [i.name for i in spec.description.input] == [e["name"] for e in manifest["inputs"]]
    assert [o.name for o in spec.description.output] == [e["name"] for e in manifest["outputs"]]
    for feature, entry in zip(spec.description.output, manifest["outputs"]):
        assert feature.shortDescription == entry["description"] and entry["description"]
    assert "BGR" in spec.description.input[0].shortDescription
    assert spec.description.metadata.license.startswith("Apache-2.0")
    assert spec.description.metadata.userDefined["ssrconv.weights.age"] == "age-wiki"
    weights = (path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size
    assert weights > 100_000  # the weights are in the package, not lost


def test_single_task_uint8_io_and_image_input(tmp_path, assets_dir, faces_dir, cli):
    out = tmp_path / "one"
    result = cli("export", "--to", "tflite", "--precision", "int8-mixed", "--task", "age",
                 "--int8-io", "uint8", "--calibration", faces_dir, "--calibration-limit", "50",
                 "--out", out)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "ssrnet_age_int8-mixed.tflite.json").read_text())
    assert [o["name"] for o in manifest["outputs"]] == ["age"]
    # camera bytes in; the float head gives float years out
    assert manifest["inputs"][0]["dtype"] == "uint8" and manifest["outputs"][0]["dtype"] == "float32"
    assert manifest["int8_io"] == {"input": "uint8", "outputs": "float32"}
    assert manifest["inputs"][0]["quantization"]["scale"] > 0
    assert manifest["calibration"]["images"] == 50
    # the fast graph: 6 Dense layers for all stages and 2 merge matmuls (the reference has 18 Dense)
    assert manifest["graph"] == "fast" and manifest["ops"]["FULLY_CONNECTED"] == 8

    result = cli("export", "--to", "coreml", "--task", "gender", "--image-input", "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "ssrnet_gender_fp16.mlpackage.json").read_text())
    assert manifest["inputs"][0]["dtype"] == "image(BGR)" and manifest["image_input"] is True
    index = json.loads((out / "index.json").read_text())
    assert len(index["artifacts"]) == 2  # merged with the earlier export into the same directory


def test_int8_mixed_graph_original_is_the_reference_graph(tmp_path, assets_dir, faces_dir, cli):
    """`--graph original` still gives the reference-graph mixed int8 file (the recipe finds the
    reference's own layer names): 18 Dense layers, per-stream convs, the same 5 of 14 in int8."""
    out = tmp_path / "original"
    result = cli("export", "--to", "tflite", "--precision", "int8-mixed", "--task", "age",
                 "--graph", "original", "--calibration", faces_dir,
                 "--calibration-limit", "40", "--out", out)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "ssrnet_age_int8-mixed.tflite.json").read_text())
    assert manifest["graph"] == "original" and manifest["ops"]["FULLY_CONNECTED"] == 18
    assert manifest["ops"]["CONV_2D"] - manifest["float_ops"]["CONV_2D"] == 5
    assert "STRIDED_SLICE" not in manifest["ops"]  # no input crop


@pytest.mark.parametrize("args,needle", [
    (["--to", "tensorrt"], "Invalid value for '--to'"),
    (["--to", "coreml", "--precision", "int8"], "coreml has no int8 export"),
    (["--to", "tflite", "--calibration", "."],
     "--calibration applies to int8, int8-mixed, int8-integer, int16x8 exports only"),
    (["--to", "tflite", "--precision", "int8-integer"],
     "tflite has no int8-integer export (available: fp32, fp16, dynamic, int8, int8-mixed, "
     "int16x8)"),
    (["--to", "tflite", "--precision", "int8", "--graph", "original"],
     "--graph original: tflite-int8 is integer-only, made from the fast graph only"),
    (["--to", "onnx", "--int8-io", "uint8"], "--int8-io applies"),
    (["--to", "onnx", "--image-input"], "--image-input applies"),
    (["--to", "onnx", "--weights", "yunet"], "not SSR-Net weights"),
    (["--to", "onnx", "--batch", "0"], "--batch 0: choose a static batch from 1"),
    (["--to", "onnx", "--precision", "int8-integer", "--opset", "17"],
     "--opset 17: onnx-int8-integer is written at opset 21 only; pass --opset 21 or leave "
     "--opset out"),
    (["--to", "onnx", "--precision", "fp32", "--precision", "int16x8", "--opset", "13"],
     "--opset 13: onnx-int16x8 is written at opset 21 only; export them separately"),
    (["--to", "onnx", "--opset", "5"], "--opset 5: onnx-fp32 is written at opset 7..18 only; "
                                       "choose from 7..18"),
    (["--to", "tflite", "--opset", "17"], "--opset applies to the onnx-fp32, onnx-int8"),
])
def test_bad_options_one_line_nothing_written(tmp_path, args, needle, cli):
    out = tmp_path / "out"
    result = cli("export", *args, "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_each_row_says_its_opsets_and_an_accepted_opset_is_used():
    """The rows written through ONNX take --opset within their range (the integer ONNX rows:
    21 only, int16 QDQ), the others take none; without --opset each row is written at its
    own (17, or 21 for the integer rows), with it at the one asked for."""
    from ssrconv.options import ExportOptions
    from ssrconv.targets import TARGETS

    takers = {k for k, t in TARGETS.items() if "opset" in t.options}
    through_onnx = {k for k, t in TARGETS.items()
                    if t.family in ("onnx", "web", "openvino", "ncnn", "mnn")}
    assert {"onnx-fp32", "onnx-int8", "onnx-int8-integer", "onnx-int16x8", "web-fp32",
            "openvino-int8", "ncnn-fp32", "mnn-fp16"} <= takers
    assert takers == through_onnx
    assert TARGETS["tflite-fp32"].opset(None) is None
    assert TARGETS["onnx-fp32"].opset(None) == 17 and TARGETS["onnx-fp32"].opset(13) == 13
    for key in ("onnx-int8-integer", "onnx-int16x8"):
        assert TARGETS[key].opsets == (21, 21) and TARGETS[key].opset(None) == 21
    options = ExportOptions(to=("onnx",), precision=("int8-integer", "int16x8"), opset=21)
    assert [t.opset(options.opset) for t in options.targets] == [21, 21]
    mixed = ExportOptions(to=("onnx", "tflite"), precision=("fp32",), opset=13)
    assert [t.opset(mixed.opset) for t in mixed.targets] == [13, None]


def test_the_tables_opsets_are_those_the_installed_tf2onnx_writes():
    """TF2ONNX_OPSETS's last is the newest opset tf2onnx writes (its OPSET_TO_IR_VERSION, read
    from its source: importing tf2onnx imports TensorFlow), so an accepted --opset never fails
    inside tf2onnx after TensorFlow has loaded."""
    import ast
    import importlib.util

    from ssrconv.targets import TF2ONNX_OPSETS

    path = Path(importlib.util.find_spec("tf2onnx").submodule_search_locations[0]) / "constants.py"
    tree = ast.parse(path.read_text())
    table = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                 if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "OPSET_TO_IR_VERSION" for t in node.targets))
    assert TF2ONNX_OPSETS == (TF2ONNX_OPSETS[0], max(table)) and TF2ONNX_OPSETS[0] in table


def test_bad_paths_one_line_nothing_written(tmp_path, assets_dir, cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    cases = [
        (["--to", "tflite", "--precision", "int8", "--calibration", str(tmp_path / "missing")],
         "not a directory"),
        (["--to", "tflite", "--precision", "int8", "--calibration", str(empty)], "no images"),
    ]
    for args, needle in cases:
        out = tmp_path / "out"
        result = cli("export", *args, "--out", str(out))
        assert result.returncode == 2 and needle in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not out.exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = cli("export", "--to", "onnx", "--out", str(blocker / "sub"))
    assert result.returncode == 2 and "not writable" in result.stderr
    result = cli("export", "--to", "onnx", "--out", str(blocker))
    assert result.returncode == 2 and "not a directory" in result.stderr


def test_failure_mid_conversion_leaves_directory_as_it_was(tmp_path, assets_dir, monkeypatch):
    from ssrconv.converters import tflite
    from ssrconv.exporter import export

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("existing")

    def half_written(model, target, options, dest, calibration, metadata):
        dest.write_bytes(b"TFL3 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(tflite, "convert", half_written)
    with pytest.raises(KeyboardInterrupt):
        export(to=("onnx", "tflite"), out=out)
    # onnx finished before the interrupt and stays complete (and indexed); the tflite
    # half-file is gone.
    names = sorted(p.name for p in out.iterdir())
    assert names == ["index.json", "keep.txt", "ssrnet_age_gender_fp32.onnx",
                     "ssrnet_age_gender_fp32.onnx.json"]
    index = json.loads((out / "index.json").read_text())
    assert [e["file"] for e in index["artifacts"]] == ["ssrnet_age_gender_fp32.onnx"]

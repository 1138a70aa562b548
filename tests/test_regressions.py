"""One regression file per crash the fuzzing found (docs/BAD_INPUTS.md), rebuilt
deterministically from a real export, so each stays fixed even if the generator that found it
changes: every one is refused in one line naming the file, before a runtime sees its bytes."""

from __future__ import annotations

import json

import pytest

from ssrconv.artifacts import discover, open_artifact, read_index
from ssrconv.formats import tflite_flatbuffer as tfb
from ssrconv.errors import ManifestError, ModelFileError


@pytest.fixture(scope="module")
def fp32_tflite(export_dir) -> bytes:
    return (export_dir / "ssrnet_age_gender_fp32.tflite").read_bytes()


def _mutated(tmp_path, fp32_tflite, edit, name):
    model = tfb.load(fp32_tflite)
    edit(model, model.subgraphs[0])
    path = tmp_path / name
    path.write_bytes(tfb.pack(model))
    return path


def _refused(path, match):
    with pytest.raises(ModelFileError, match=match) as err:
        open_artifact(path)
    assert path.name in str(err.value) and "\n" not in str(err.value)


def test_tflite_huge_tensor_shape_is_refused_not_allocated(tmp_path, fp32_tflite):
    """A flipped bit made 1x12x12x16 into 1x12x12x33554448: allocate_tensors hung on 19 GB."""
    def edit(model, sg):
        activation = sg.operators[0].outputs[0]  # a 4-D activation (no constant data)
        shape = list(sg.tensors[activation].shape)
        shape[-1] = 33554448
        sg.tensors[activation].shape = shape
    _refused(_mutated(tmp_path, fp32_tflite, edit, "huge.tflite"), "declares shape")


def test_tflite_non_utf8_tensor_name_is_refused(tmp_path, fp32_tflite):
    """Non-UTF-8 names raised UnicodeDecodeError in the Python wrapper (reported as unexpected)."""
    def edit(model, sg):
        sg.tensors[0].name = b"\xff\xfe bad"
    _refused(_mutated(tmp_path, fp32_tflite, edit, "name.tflite"), "UTF-8")


def test_tflite_conv_pointed_at_another_operators_tensors_is_refused(tmp_path, fp32_tflite):
    """A CONV_2D pointed at another operator's tensor lists: one tensor written twice, one never
    (every index in range): XNNPACK segfaulted."""
    def edit(model, sg):
        names = {v: k for k, v in tfb.schema().BuiltinOperator.__dict__.items() if not k.startswith("_")}
        convs = [op for op in sg.operators
                 if names[max(model.operatorCodes[op.opcodeIndex].builtinCode,
                              model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)] == "CONV_2D"]
        convs[-1].outputs = list(convs[0].outputs)
    _refused(_mutated(tmp_path, fp32_tflite, edit, "dataflow.tflite"), "already written|never written|no earlier operator")


def test_onnx_parse_error_keeps_stdout_clean(tmp_path, export_dir, images_dir, cli):
    """onnxruntime printed an 'EP Error' banner on stdout (predict's JSON) for a corrupt file."""
    bad = tmp_path / "bad.onnx"
    data = bytearray((export_dir / "ssrnet_age_gender_fp32.onnx").read_bytes())
    data[100:400] = bytes(300)
    bad.write_bytes(bytes(data))
    out = cli("predict", images_dir / "astronaut.png", "--model", bad)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("ssrconv: error:") == 1 and "bad.onnx" in out.stderr


@pytest.mark.parametrize("entry", ["../escape.onnx", "/etc/passwd", "nul\u0000.onnx", ""])
def test_index_entries_never_leave_the_directory(tmp_path, entry):
    (tmp_path / "index.json").write_text(json.dumps(
        {"artifacts": [{"file": entry, "manifest": "m.json"}]}))
    with pytest.raises(ManifestError, match="index.json"):
        read_index(tmp_path)
    with pytest.raises(ManifestError):
        discover(tmp_path)


def test_deeply_nested_manifest_is_refused(tmp_path, export_dir):
    """Deep nesting raised RecursionError from the JSON parser."""
    artifact = tmp_path / "ssrnet_age_gender_fp32.onnx"
    artifact.write_bytes((export_dir / artifact.name).read_bytes())
    (tmp_path / (artifact.name + ".json")).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ManifestError, match="nested too deeply|not an ssrconv manifest"):
        open_artifact(artifact)


def test_manifest_field_of_the_wrong_type_is_refused(tmp_path, export_dir):
    """Wrong field types reached consumers as TypeError/AttributeError."""
    artifact = tmp_path / "ssrnet_age_gender_fp32.onnx"
    artifact.write_bytes((export_dir / artifact.name).read_bytes())
    manifest = json.loads((export_dir / (artifact.name + ".json")).read_text())
    manifest["weights"] = {"age": "age-wiki"}
    (tmp_path / (artifact.name + ".json")).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="weights entry"):
        open_artifact(artifact)

"""Untrusted files run no code: weights files are read as numbers, never deserialized as models."""

from __future__ import annotations

import base64
import json
import marshal
import shutil
import zipfile

import pytest

from ssrconv.errors import WeightsError


def _payload(marker):
    """Marshalled bytecode that would create ``marker`` if anything executed it."""
    source = f"open({str(marker)!r}, 'w').write('pwned')"
    return base64.b64encode(marshal.dumps(compile(source, "<payload>", "exec"))).decode()


def test_h5_with_lambda_code_payload_loads_weights_without_running_it(assets_dir, tmp_path):
    import h5py

    from ssrconv.reference import load_reference

    marker = tmp_path / "executed"
    evil = tmp_path / "evil weights.h5"
    shutil.copy(assets_dir / "ssrnet_age_wiki.h5", evil)
    config = {"class_name": "Model", "config": {"layers": [
        {"class_name": "Lambda", "name": "pred_a",
         "config": {"function": [_payload(marker), None, None], "function_type": "lambda"}}]}}
    with h5py.File(evil, "a") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
    reference = load_reference("age", age_weights=evil)  # a user file: read as numbers only
    assert reference.weights["age"].asset is None
    assert not marker.exists()


def test_keras_zip_and_npz_are_refused_as_weights(tmp_path):
    from ssrconv.reference import load_reference

    marker = tmp_path / "executed"
    keras_file = tmp_path / "model.keras"
    with zipfile.ZipFile(keras_file, "w") as z:
        z.writestr("config.json", json.dumps({"class_name": "Lambda",
                                              "config": {"function": _payload(marker)}}))
    npz = tmp_path / "weights.npz"
    import numpy as np

    np.savez(npz, a=np.array([object()], dtype=object))  # a pickled object inside
    for path in (keras_file, npz):
        with pytest.raises(WeightsError, match="not a readable HDF5"):
            load_reference("age", age_weights=path)
    assert not marker.exists()


def test_library_never_calls_unsafe_deserializers():
    """No pickle, Keras model loading or marshal anywhere in the library; np.load only with
    allow_pickle=False spelled out."""
    from pathlib import Path

    import ssrconv

    root = Path(ssrconv.__file__).parent
    import re

    # load_model( is Keras' deserializer; ncnn's Net.load_model reads weights as numbers.
    banned = ("pickle.load", r"(?<!net\.)load_model\(", "model_from_json(", "marshal.loads",
              "safe_mode=False")
    for path in root.rglob("*.py"):
        text = path.read_text()
        for word in banned:
            found = re.search(word, text) if word.startswith("(?") else word in text
            assert not found, f"{path.relative_to(root)} uses {word}"
        for line in text.splitlines():
            if "np.load(" in line:
                assert "allow_pickle=False" in line, f"{path.relative_to(root)}: {line.strip()}"

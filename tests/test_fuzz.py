"""Property-based fuzzing of everything that reads a file a user hands us.

Property, for every generated input: a valid result, or the project's own error class
(:class:`ssrconv.errors.SsrconvError` and its subclasses) — never another exception, never a
crash, never a hang. Covered: the image loader (bytes and decoded arrays), the manifest and
index readers, and the artifact loaders (.onnx, .tflite, .mlpackage: random bytes, bit flips,
overwritten bytes, truncations of real exports).

Examples per property: ``SSRCONV_FUZZ_EXAMPLES`` (default 200 for the cheap properties, a
quarter of it for the .tflite/.onnx loaders and a fifteenth for .mlpackage, whose examples each
load a model); CI runs the default,
``SSRCONV_FUZZ_EXAMPLES=5000`` is the long run. A faulthandler watchdog turns a hang inside a
runtime (C++ code a hypothesis deadline cannot interrupt) into a failed run with a traceback.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import shutil
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ssrconv.errors import InputError, ManifestError, SsrconvError

EXAMPLES = int(os.environ.get("SSRCONV_FUZZ_EXAMPLES", "200"))
MODEL_EXAMPLES = max(10, EXAMPLES // 4)
PACKAGE_EXAMPLES = max(5, EXAMPLES // 15)  # each loads a CoreML package: ~1-2 s
WATCHDOG_SECONDS = 120  # one example; the slowest real load (CoreML package) takes ~0.2 s

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_MODELS = settings(FUZZ, max_examples=MODEL_EXAMPLES)
FUZZ_PACKAGES = settings(FUZZ, max_examples=PACKAGE_EXAMPLES)


@contextlib.contextmanager
def watchdog(seconds: float = WATCHDOG_SECONDS):
    """Abort the whole run with every thread's traceback if the block does not finish."""
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


# -- byte mutations ----------------------------------------------------------------------

EDITS = st.lists(st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "delete"]),
                           st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                 min_size=1, max_size=8)


def mutate(data: bytes, edits) -> bytes:
    """Apply bit flips, byte overwrites, truncation, insertions and deletions at relative
    positions (so the same edit list means something for files of any size)."""
    out = bytearray(data)
    for kind, where, value in edits:
        if not out:
            break
        i = int(where * len(out))
        if kind == "flip":
            out[i] ^= 1 << (value % 8)
        elif kind == "set":
            out[i] = value
        elif kind == "cut":
            del out[i:]
        elif kind == "insert":
            out[i:i] = bytes([value]) * (1 + value % 16)
        else:
            del out[i:i + 1 + value % 16]
    return bytes(out)


FLIPS = st.lists(st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
                 min_size=1, max_size=3)


def corrupted(valid: bytes):
    """Random bytes, a few bit flips in ``valid`` (mostly still parseable: the case that gets
    past format checks), or heavier edits of it."""
    return st.one_of(st.binary(max_size=2048), FLIPS.map(lambda e: mutate(valid, e)),
                     EDITS.map(lambda e: mutate(valid, e)))


# -- (a) the image loader ----------------------------------------------------------------

def _encodings() -> dict[str, bytes]:
    import cv2

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    out = {ext: cv2.imencode(ext, image)[1].tobytes() for ext in (".png", ".jpg", ".bmp", ".webp", ".tiff")}
    out[".png16"] = cv2.imencode(".png", (image.astype(np.uint16) * 257)[..., :1])[1].tobytes()
    return out


ENCODINGS = _encodings()


@FUZZ
@given(data=st.sampled_from(sorted(ENCODINGS)).flatmap(lambda k: corrupted(ENCODINGS[k])))
def test_read_image_bytes(data, tmp_path_factory):
    from ssrconv.reference.preprocess import read_image

    path = tmp_path_factory.getbasetemp() / "fuzz-image.bin"
    path.write_bytes(data)
    with watchdog():
        try:
            image = read_image(path)
        except InputError as err:
            assert str(path) in str(err)
            event("refused")
            return
    event("decoded")
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    assert image.flags.c_contiguous and min(image.shape[:2]) >= 1


DTYPES = st.sampled_from([np.uint8, np.uint16, np.int8, np.int16, np.int32, np.int64, np.float16,
                          np.float32, np.float64, np.bool_, np.complex64])
SHAPES = st.one_of(  # images of every channel layout, and anything else
    st.tuples(st.integers(1, 9), st.integers(1, 9)),
    st.tuples(st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 3, 4])),
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7))
ARRAYS = st.tuples(DTYPES, SHAPES).flatmap(lambda spec: hnp.arrays(
    spec[0], spec[1], elements=(st.floats(allow_nan=True, allow_infinity=True, width=16)
                                if np.dtype(spec[0]).kind == "f" else None)))


@FUZZ
@given(array=ARRAYS, view=st.sampled_from(["as-is", "flipped", "transposed"]),
       box=st.tuples(st.floats(-20, 20), st.floats(-20, 20), st.floats(0.5, 30), st.floats(0.5, 30)))
def test_image_arrays(array, view, box):
    from ssrconv.reference.preprocess import crop_face, prepare_chip, to_bgr_uint8

    if view == "flipped" and array.ndim >= 2:
        array = array[::-1, ::-1]  # negative strides
    elif view == "transposed" and array.ndim >= 2:
        array = np.swapaxes(array, 0, 1)  # not C-contiguous
    try:
        image = to_bgr_uint8(array)
    except InputError:
        event("refused")
        return
    event("converted")
    assert image.shape == array.shape[:2] + (3,) and image.dtype == np.uint8
    assert prepare_chip(array).shape == (64, 64, 3)
    try:
        crop = crop_face(array, box)
    except InputError:
        return
    assert crop.shape == (64, 64, 3) and crop.dtype == np.float32


# -- (b) manifests and index.json --------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12),
                                                                       children, max_size=4),
    max_leaves=20)


def _json_edits(valid: dict):
    """A real manifest/index with keys dropped or values replaced by random JSON, nested."""
    def edit(doc, path, action, value):
        doc = json.loads(json.dumps(doc))
        parent, key = None, None
        node = doc
        for step in path:  # walk as far as the random path allows
            keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
            if not keys:
                break
            parent, key = node, keys[step % len(keys)]
            node = node[key]
        if parent is None:
            return value if action == "replace" else doc
        if action == "drop" and isinstance(parent, dict):
            del parent[key]
        else:
            parent[key] = value
        return doc

    return st.builds(edit, st.just(valid), st.lists(st.integers(0, 50), max_size=4),
                     st.sampled_from(["drop", "replace"]), JSON)


def _documents(valid: dict):
    text = json.dumps(valid, indent=2).encode()
    return st.one_of(
        JSON.map(lambda d: json.dumps(d).encode()),
        _json_edits(valid).map(lambda d: json.dumps(d).encode()),
        EDITS.map(lambda e: mutate(text, e)),  # truncated, non-UTF-8, broken syntax
        st.just(b"[" * 100_000),  # nesting deeper than the JSON parser's recursion limit
        st.binary(max_size=512))


@pytest.fixture(scope="session")
def valid_manifest(export_dir) -> dict:
    return json.loads((export_dir / "ssrnet_age_gender_fp32.onnx.json").read_text())


@pytest.fixture(scope="session")
def valid_index(export_dir) -> dict:
    return json.loads((export_dir / "index.json").read_text())


@FUZZ
@given(data=st.data())
def test_manifest_reader(data, valid_manifest, tmp_path_factory):
    from ssrconv.artifacts import open_artifact, read_manifest

    folder = tmp_path_factory.getbasetemp() / "fuzz-manifest"
    folder.mkdir(exist_ok=True)
    artifact = folder / "ssrnet_age_gender_fp32.onnx"
    artifact.write_bytes(b"model")
    document = data.draw(_documents(valid_manifest))
    (folder / (artifact.name + ".json")).write_bytes(document)
    try:
        manifest = read_manifest(artifact)
    except ManifestError as err:
        assert artifact.name in str(err) and "\n" not in str(err)
        event("refused")
        return
    event("accepted")
    assert isinstance(manifest, dict) and isinstance(manifest["target"], str)
    for entry in manifest.get("weights", {}).values():
        assert isinstance(entry.get("name", ""), (str, type(None)))
    try:  # the consumer: verifies the bytes against any accepted manifest, in one line
        opened = open_artifact(artifact)
    except SsrconvError as err:
        assert artifact.name in str(err) and "\n" not in str(err)
        return
    assert opened.target.key == manifest["target"]


@FUZZ
@given(data=st.data())
def test_index_reader(data, valid_index, tmp_path_factory):
    from ssrconv.artifacts import discover

    folder = tmp_path_factory.getbasetemp() / "fuzz-index"
    folder.mkdir(exist_ok=True)
    (folder / "index.json").write_bytes(data.draw(_documents(valid_index)))
    try:
        paths = [f.path for f in discover(folder)]
    except ManifestError as err:
        assert "index.json" in str(err) and "\n" not in str(err)
        event("refused")
        return
    except SsrconvError as err:  # a readable index with no entries: "no artifacts"
        assert str(folder) in str(err)
        return
    event("accepted")
    for path in paths:  # an index never points outside its directory
        assert path.parent == folder and path.name not in ("", ".", "..")


# -- (c) the artifact loaders ------------------------------------------------------------

BATCH = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)


def _check_loads(path) -> None:
    from ssrconv.loading import load_runtime

    with watchdog():
        try:
            runtime = load_runtime(path)
            out = runtime.run(BATCH)
        except SsrconvError as err:
            assert path.name in str(err), err
            event(f"refused: {type(err).__name__}")
            return
    event("ran")
    assert set(out) == set(runtime.heads) and runtime.heads
    for values in out.values():
        assert values.shape == (2,) and values.dtype == np.float32


@pytest.fixture(scope="session")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-models")


@FUZZ_MODELS
@given(data=st.data())
@pytest.mark.parametrize("name", ["ssrnet_age_gender_fp32.tflite", "ssrnet_age_gender_int8.tflite",
                                  "ssrnet_age_gender_fp32.onnx"])
def test_model_file_loaders(name, data, export_dir, fuzz_dir):
    valid = (export_dir / name).read_bytes()
    path = fuzz_dir / name
    path.write_bytes(data.draw(corrupted(valid)))
    _check_loads(path)


@pytest.mark.filterwarnings("ignore:The recursion limit will not be reset")  # coremltools sets it
@FUZZ_PACKAGES
@given(member=st.sampled_from(["Manifest.json", "Data/com.apple.CoreML/model.mlmodel",
                               "Data/com.apple.CoreML/weights/weight.bin"]), data=st.data())
def test_mlpackage_loader(member, data, export_dir, fuzz_dir):
    source = export_dir / "ssrnet_age_gender_fp16.mlpackage"
    path = fuzz_dir / source.name
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(source, path)
    target = path / member
    target.write_bytes(data.draw(corrupted((source / member).read_bytes())))
    _check_loads(path)

"""The browser: ``--to web`` folders and the ``chromium-ort-wasm`` engine, in a real headless
Chromium (Debian's, driven by Playwright for Python). ``make browser`` installs Chromium, the
npm packages and Playwright; CI runs it before the suite, so there a missing piece fails."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _need_browser() -> None:
    from ssrconv.formats.web import BrowserSetupError, node_modules_dir
    from ssrconv.runtimes.browser_rt import chromium_path

    try:
        chromium_path()
        node_modules_dir()
        import playwright.sync_api  # noqa: F401
    except (BrowserSetupError, ImportError) as err:
        message = f"browser engine not installed ({err}); run `make browser`"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run it before the tests", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def web_export(exported):
    """``ssrconv export --to web`` of the default age-gender reference."""
    _need_browser()
    return exported("web-fp32")


def _locked(package: str) -> str:
    """The version package-lock.json pins for an npm package."""
    lock = json.loads((Path(__file__).parents[1] / "package-lock.json").read_text())
    return lock["packages"][f"node_modules/{package}"]["version"]


def _parity(runtime, faces, reference_outputs):
    from ssrconv.parity import head_stats, violations
    from ssrconv.targets import BUDGETS

    got = runtime.run(faces.inputs)
    stats = {h: head_stats(got[h], reference_outputs[h], h) for h in runtime.heads}
    return stats, violations(stats, BUDGETS["fp32"])


def test_export_folder_is_self_contained(web_export):
    from ssrconv.formats import web

    folder = web_export.path
    assert folder.suffix == ".web" and folder.is_dir()
    web.verify(folder)
    config = json.loads((folder / "model.json").read_text())
    pinned = _locked("onnxruntime-web")
    assert config["runtime"] == {"onnxruntime-web": pinned}
    assert web_export.manifest["web"]["runtime"] == {"onnxruntime-web": pinned}
    assert [i["name"] for i in web_export.manifest["inputs"]] == ["face_bgr"]
    assert {"index.html", "app.mjs", "ssrconv.mjs", "yunet.onnx", "ort/ort.wasm.min.mjs",
            "ort/ort-wasm-simd-threaded.wasm", config["model"]} <= set(web_export.manifest["files"])


def test_verify_refuses_a_broken_folder(web_export, tmp_path):
    from ssrconv.formats import web
    from ssrconv.errors import ModelFileError

    broken = tmp_path / "broken.web"
    shutil.copytree(web_export.path, broken)
    (broken / "ort" / "ort-wasm-simd-threaded.wasm").write_bytes(b"<html>404</html>")
    with pytest.raises(ModelFileError, match="not a WebAssembly module"):
        web.verify(broken)
    (broken / "ort" / "ort-wasm-simd-threaded.wasm").unlink()
    with pytest.raises(ModelFileError, match="is missing"):
        web.verify(broken)
    (broken / "model.json").write_text("{")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        web.verify(broken)


def test_fp32_onnx_on_chromium_ort_wasm_within_fp32_budget(web_export, faces, reference_outputs):
    from ssrconv.runtimes.browser_rt import BrowserRuntime

    onnx_file = web_export.path / web_export.manifest["web"]["model"]
    with BrowserRuntime(onnx_file) as runtime:
        assert (runtime.backend, runtime.engine) == ("onnx", "chromium-ort-wasm")
        assert runtime.heads == ("age", "p_male")
        assert runtime.cross_origin_isolated  # COOP/COEP: 5 us timers, wasm threads allowed
        stats, broken = _parity(runtime, faces, reference_outputs)
        times = runtime.time_in_browser(faces.inputs[:1], repeats=50)
    print(f"\nchromium-ort-wasm fp32 .onnx: max age diff {stats['age'].max_abs:.2e} y, "
          f"P(male) {stats['p_male'].max_abs:.2e}; batch 1: median {np.median(times):.2f} ms, "
          f"min {times.min():.2f} ms per face")
    assert broken == [], broken
    assert np.all(times > 0) and np.isfinite(times).all()


def test_web_export_passes_parity_on_its_engine(web_export, faces, reference_outputs):
    from ssrconv.loading import load_runtime

    assert (web_export.manifest["graph"], web_export.manifest["graph_variant"]) == ("fast", "onnx")
    runtime = load_runtime(web_export.path)
    try:
        assert (runtime.backend, runtime.engine) == ("web", "chromium-ort-wasm")
        stats, broken = _parity(runtime, faces, reference_outputs)
    finally:
        runtime.close()
    assert broken == [], broken


@pytest.mark.parametrize("isolate", [True, False], ids=["coop-coep", "plain-server"])
def test_web_page_reads_the_group_photo_like_the_reference(web_export, images_dir,
                                                           keras_reference, isolate):
    """The page a user opens: choose the photo, the app finds the faces and prints ages; they
    match ``ssrconv predict``'s detector + crops + the Keras reference. Also from a plain static
    server without cross-origin isolation headers (one wasm thread needs none)."""
    from ssrconv.detect import make_detector
    from ssrconv.parity import head_stats, violations
    from ssrconv.predict import Predictor, label
    from ssrconv.reference.preprocess import read_image
    from ssrconv.runtimes.browser_rt import BrowserPage
    from ssrconv.targets import BUDGETS

    photo = images_dir / "group_t1.jpg"
    with BrowserPage(web_export.path, isolate=isolate) as browser:
        page = browser.page
        page.goto(browser.url + "/index.html")
        page.wait_for_function("document.getElementById('status').dataset.state !== 'loading'")
        assert page.evaluate("self.crossOriginIsolated") is isolate
        assert page.get_attribute("#status", "data-state") == "ready", page.text_content("#status")
        page.set_input_files("#file", str(photo))
        page.wait_for_function(
            "['done', 'error'].includes(document.getElementById('status').dataset.state)")
        status = page.text_content("#status")
        result = page.evaluate("window.ssrconvApp.lastResult")
        labels = page.eval_on_selector_all("#faces tbody tr td:last-child",
                                           "cells => cells.map(c => c.textContent)")
        assert browser.errors == []
    assert status.startswith("6 face(s)"), status

    predictor = Predictor(keras_reference, make_detector("yunet"))
    want = predictor.faces_of(read_image(photo), photo.name)
    got = result["faces"]
    assert len(got) == len(want) == 6
    for g, w in zip(got, want, strict=True):  # same detector, same order (score-sorted NMS)
        assert np.allclose(g["box"], w["box"], atol=0.1), (g["box"], w["box"])
    stats = {h: head_stats([g[h] for g in got], [w[h] for w in want], h) for h in ("age", "p_male")}
    print(f"\npage on {photo.name}: {len(got)} faces, max age diff {stats['age'].max_abs:.2e} y, "
          f"P(male) {stats['p_male'].max_abs:.2e}; {status}")
    assert violations(stats, BUDGETS["fp32"]) == []
    assert labels == [label(w["age"], w["p_male"]) for w in want]


@pytest.fixture(scope="module")
def tflite_fp32(exported):
    _need_browser()
    return exported("tflite-fp32").path


def test_litert_js_refuses_a_dynamic_batch_tflite(tflite_fp32):
    from ssrconv.errors import ModelFileError
    from ssrconv.runtimes.browser_rt import LiteRtBrowserRuntime

    with pytest.raises(ModelFileError, match="variable batch"):
        LiteRtBrowserRuntime(tflite_fp32)


def test_batch_1_export_on_chromium_litert_wasm_within_fp32_budget(exported, faces,
                                                                    reference_outputs):
    # `export --batch 1` is how a user gets a .tflite LiteRT.js runs; opened through the format
    # table like parity does, so the 64-face batches are fed one face per call.
    from ssrconv.artifacts import open_artifact
    from ssrconv.formats.tflite_flatbuffer import is_dynamic_batch

    artifact = exported("tflite-fp32", batch=1)
    assert not is_dynamic_batch(artifact.path.read_bytes())
    with open_artifact(artifact.path).runtime(engine="chromium-litert-wasm") as runtime:
        assert (runtime.backend, runtime.runtime_version) == ("tflite", _locked("@litertjs/core"))
        stats, broken = _parity(runtime, faces, reference_outputs)
        times = runtime.time_in_browser(faces.inputs[:1], repeats=50)
    print(f"\nchromium-litert-wasm fp32 batch-1 .tflite: max age diff {stats['age'].max_abs:.2e} y; "
          f"median {np.median(times):.2f} ms, min {times.min():.2f} ms per face")
    assert broken == [], broken


def test_web_page_webcam_loop_runs_on_a_fake_camera(web_export):
    """The webcam button: Chromium's fake capture device (a test pattern, no face) feeds the
    detect-and-draw loop frame after frame without an error."""
    from ssrconv.runtimes.browser_rt import BrowserPage

    fake_camera = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
    with BrowserPage(web_export.path, extra_args=fake_camera) as browser:
        page = browser.page
        page.goto(browser.url + "/index.html")
        page.wait_for_function("document.getElementById('status').dataset.state === 'ready'")
        page.click("#webcam")
        page.wait_for_function("document.getElementById('status').dataset.state !== 'ready'")
        state = page.get_attribute("#status", "data-state")
        status = page.text_content("#status")
        page.wait_for_function("window.ssrconvApp.frames >= 3")
        size = page.evaluate("[document.getElementById('canvas').width, "
                             "document.getElementById('canvas').height]")
        assert browser.errors == []
    assert state == "webcam", status
    assert size[0] > 0 and size[1] > 0


def test_browser_engine_refuses_a_corrupt_onnx_in_one_line(tmp_path):
    """The read path verifies the file before the browser engine is handed it."""
    _need_browser()
    from ssrconv.errors import ModelFileError
    from ssrconv.loading import load_runtime

    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(ModelFileError, match="garbage.onnx") as err:
        load_runtime(bad, engine="chromium-ort-wasm")
    assert "\n" not in str(err.value)


def test_browser_engine_reports_a_model_the_page_cannot_load(web_export, tmp_path):
    """A parseable ONNX that onnxruntime-web rejects (an unknown op) fails with one line
    naming the file and the engine."""
    import onnx
    from onnx import TensorProto, helper

    from ssrconv.errors import ModelFileError
    from ssrconv.runtimes.browser_rt import BrowserRuntime

    graph = helper.make_graph([helper.make_node("NoSuchOp", ["face_bgr"], ["age"], domain="x.y")],
                              "g", [helper.make_tensor_value_info("face_bgr", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("age", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("x.y", 1)])
    path = tmp_path / "foreign.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelFileError, match="chromium-ort-wasm could not load it") as err:
        BrowserRuntime(path)
    assert "foreign.onnx" in str(err.value) and "\n" not in str(err.value)

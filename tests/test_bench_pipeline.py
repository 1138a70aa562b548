"""``ssrconv bench`` beyond the model call: the end-to-end rows (YuNet + crop + model on the sample
photos), the numpy reference when Keras is not installed, the browser's in-page time beside
native, and the progress bar. Runs are tiny; no test asserts on speed."""

from __future__ import annotations

import json
import math

import pytest

from ssrconv.benchmarks.fingerprint import fingerprint
from ssrconv.benchmarks.plan import Entry, reference_entries
from ssrconv.benchmarks.schedule import run_bench
from ssrconv.benchmarks.settings import Settings
from ssrconv.benchmarks.report import build_report, render_json, render_markdown, render_text

TINY = dict(runs=2, warmup=1, rounds=2, batch=2, pipeline_runs=2, pipeline_warmup=1)
T1_FACES = 6  # YuNet finds all six faces of the group sample photo t1.jpg


def _no_keras(monkeypatch):
    """This process as a runtime-only install sees it: TensorFlow and Keras not installed."""
    import ssrconv._extras

    real = ssrconv._extras.available
    monkeypatch.setattr(ssrconv._extras, "available",
                        lambda module: module not in ("tensorflow", "keras") and real(module))


# ---------------------------------------------------------------- planning without Keras


def test_reference_rows_are_numpy_without_keras(monkeypatch, assets_dir):
    """`bench --all` / `--with-keras` / `--model X.h5` in a runtime-only install plan the numpy
    reference (it planned Keras rows whose workers then failed importing TensorFlow);
    `--backend keras` insists on Keras and says which extra brings it, in one line."""
    from ssrconv.benchmarks import command
    from ssrconv.errors import MissingExtraError

    assert [r.backend for r in reference_entries()] == ["keras", "keras"]  # this venv has Keras
    _no_keras(monkeypatch)
    (row,) = reference_entries()
    assert (row.backend, row.options["engine"], row.mode) == ("reference", "numpy-float32", "run")
    weights = assets_dir / "ssrnet_age_wiki.h5"
    (one,) = command._plan(None, weights, (), False, print)
    assert one.backend == "reference" and one.heads == ["age"] and one.options["task"] == "age"
    assert one.options["age_weights"] == str(weights)
    with pytest.raises(MissingExtraError, match=r"ssrconv\[export\]"):
        command._plan("keras", None, (), False, print)


# ---------------------------------------------------------------- real runs, numpy reference


@pytest.fixture(scope="module")
def numpy_report(assets_dir):
    """A tiny real bench of the numpy reference: model calls and the end-to-end rows."""
    messages: list[str] = []
    report = run_bench(reference_entries("numpy"), Settings(**TINY), progress=messages.append)
    return report, messages


def test_pipeline_rows_on_the_sample_photos(numpy_report):
    report, messages = numpy_report
    (row,) = report["results"]
    assert row["status"] == "ok" and row["engine"] == "numpy-float32", row["error"]
    assert row["tensorflow_imported"] is False
    assert set(row["pipeline"]) == {"t1.jpg", "astronaut.png"}
    t1, astronaut = row["pipeline"]["t1.jpg"], row["pipeline"]["astronaut.png"]
    assert t1["faces"] == T1_FACES and t1["faces_seen"] == [T1_FACES]
    assert astronaut["faces"] == 1
    for photo in (t1, astronaut):
        assert photo["n"] == TINY["pipeline_runs"]
        for key in ("detect_ms", "crop_ms", "model_ms", "total_ms"):
            assert math.isfinite(photo[key]) and photo[key] > 0, key
            assert photo["per_face"][key] == pytest.approx(photo[key] / photo["faces"])
        assert photo["total_ms"] >= photo["total_min_ms"] > 0
        assert "in_page_model_ms" not in photo  # no page: a native engine
    photos = {p["name"]: p for p in report["pipeline"]["photos"]}
    assert photos["t1.jpg"]["faces"] == T1_FACES and photos["t1.jpg"]["asset"] == "sample-t1"
    assert report["pipeline"]["error"] is None
    assert report["reference_engine"] == "numpy-float32"
    assert any("pipeline: round 2/2 done" in m for m in messages)  # plain lines: no TTY here


def test_pipeline_and_reference_in_every_rendering(numpy_report):
    report, _ = numpy_report
    # The terminal's default view keeps the main columns (within 100 columns); --wide has all.
    text, wide, markdown = render_text(report), render_text(report, wide=True), render_markdown(report)
    assert "End to end per photo and per face" in text and "YuNet ms" in text
    for rendered in (wide, markdown):
        assert "End to end per photo and per face" in rendered
        assert "YuNet ms" in rendered and "YuNet per face" in rendered
    for rendered in (text, wide, markdown):
        flat = " ".join(rendered.split())  # the terminal wraps notes at 100 columns
        assert "issue #21" in flat and "20-30 ms" in flat
        assert "numpy-float32 engine of the rebuilt SSR-Net" in flat
    line = next(ln for ln in markdown.splitlines() if ln.startswith("| reference numpy-float32")
                and "t1.jpg" in ln)
    assert f"| {T1_FACES} |" in line
    data = json.loads(render_json(report))
    assert data["results"][0]["pipeline"]["t1.jpg"]["faces"] == T1_FACES
    assert data["pipeline"]["context"]["ssrnet_issue_21_ms"] == [20, 30]


def test_no_pipeline_rows_when_asked_for_none(assets_dir):
    report = run_bench(reference_entries("numpy"), Settings(**{**TINY, "pipeline_runs": 0}))
    (row,) = report["results"]
    assert row["status"] == "ok" and row["pipeline"] == {}
    assert "End to end per photo" not in render_text(report)


def test_engines_option_errors_are_usage_errors(cli):
    out = cli("bench", "--model", "x.onnx", "--engines", "nosuch")
    assert out.returncode == 2 and "--engines takes all or names from" in out.stderr
    assert "chromium-ort-wasm" in out.stderr


# ---------------------------------------------------------------- progress bar


def test_progress_bar_replaces_round_lines_when_shown(monkeypatch, capsys, assets_dir):
    """SSRCONV_PROGRESS=1 (a terminal) draws the bar on stderr and drops the per-round lines it
    stands for; without it (stderr not a TTY, as under pytest) there is no bar, only lines."""
    rows = [Entry("fake", "fake", "fake-fp32", "fp32", options={"delay_us": 10})]
    settings = Settings(**{**TINY, "pipeline_runs": 0})
    monkeypatch.setenv("SSRCONV_PROGRESS", "1")
    shown: list[str] = []
    run_bench(rows, settings, progress=shown.append)
    bar = capsys.readouterr().err
    assert "bench" in bar and "step" in bar and "\r" in bar
    assert not any(" done" in m for m in shown) and any("loading" in m for m in shown)
    monkeypatch.delenv("SSRCONV_PROGRESS")
    plain: list[str] = []
    run_bench(rows, settings, progress=plain.append)
    assert capsys.readouterr().err == ""
    assert sum(" done" in m for m in plain) == 2 * len(settings.batches)  # 2 rounds per batch


# ---------------------------------------------------------------- browser beside native (report)


def _timed(name, backend, path, per_call_us, in_page_us=None):
    e = Entry(name, backend, f"{backend}-fp32", "fp32", path=path, heads=["age", "p_male"])
    e.status, e.engine, e.import_s, e.load_s = "ok", backend, 0.1, 0.1
    for batch in (1, 2):
        e.times_ns[batch] = [int(per_call_us * batch * 1000)] * 4
        e.overhead_ns[batch] = [300] * 4
        if in_page_us is not None:
            e.in_page_ms[batch] = [in_page_us * batch / 1000] * 4
    return e


def test_browser_in_page_time_beside_native_in_the_report(tmp_path):
    """A browser row's in-page per-face time is its own column, beside the round trip and the
    native engine's time for the same file (for a .web folder: the .onnx it carries)."""
    onnx, web = str(tmp_path / "m.onnx"), str(tmp_path / "m.web")
    rows = [_timed("m.onnx", "onnx", onnx, 1500),
            _timed("m.onnx on chromium-ort-wasm", "onnx", onnx, 9000, in_page_us=3000),
            _timed("m.web", "web", web, 8000, in_page_us=4500),
            _timed("m.web/m.onnx", "onnx", f"{web}/m.onnx", 1200)]
    rows[1].engine = rows[2].engine = "chromium-ort-wasm"
    report = build_report(rows, [3_000_000] * 4, Settings(**TINY), fingerprint(1), "random")
    by_name = {r["name"]: r for r in report["results"]}
    page = by_name["m.onnx on chromium-ort-wasm"]["latency"]["2"]["in_page_per_face_us"]
    assert page["median"] == pytest.approx(3000)
    assert by_name["m.onnx on chromium-ort-wasm"]["latency"]["2"]["per_face_us"]["median"] == pytest.approx(9000)
    assert "in_page_per_face_us" not in by_name["m.onnx"]["latency"]["1"]
    markdown = render_markdown(report)
    assert "In the browser vs native" in markdown
    table = markdown.split("In the browser vs native")[1].split("\n\n- ")[0]
    lines = [ln for ln in table.splitlines() if ln.startswith("| m.")]
    assert len(lines) == 4  # two rows x batch sizes 1 and 2
    onnx_line = next(ln for ln in lines if "on chromium" in ln and "| 1 |" in ln)
    assert "9,000 | 3,000" in onnx_line and "m.onnx (onnx)" in onnx_line and "2.00x" in onnx_line
    web_line = next(ln for ln in lines if ln.startswith("| m.web |") and "| 1 |" in ln)
    assert "m.web/m.onnx (onnx)" in web_line and "3.75x" in web_line


# ---------------------------------------------------------------- browser, real (slow)


@pytest.mark.slow
def test_bench_web_folder_in_chromium_beside_native(exported, tmp_path, cli):
    """`ssrconv bench --model X.web`: the folder in headless Chromium (chromium-ort-wasm) with its
    in-page time, and the .onnx it carries on onnxruntime beside it; both get end-to-end rows."""
    from test_browser import _need_browser

    _need_browser()
    web = exported("web-fp32")
    json_out, md_out = tmp_path / "b.json", tmp_path / "b.md"
    out = cli("bench", "--model", web.path, "--runs", "2", "--warmup", "1", "--rounds", "1",
              "--batch", "2", "--pipeline-runs", "1", "--json", json_out, "--markdown", md_out)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(json_out.read_text())
    rows = {r["name"]: r for r in report["results"]}
    browser, native = rows[web.path.name], rows[f"{web.path.name}/{web.path.stem}.onnx"]
    assert browser["engine"] == "chromium-ort-wasm" and native["engine"].startswith("onnxruntime")
    for batch in ("1", "2"):
        page = browser["latency"][batch]["in_page_per_face_us"]
        assert page["n"] == 2 and 0 < page["median"] < math.inf
        assert "in_page_per_face_us" not in native["latency"][batch]
    assert browser["pipeline"]["t1.jpg"]["faces"] == T1_FACES
    assert browser["pipeline"]["t1.jpg"]["in_page_model_ms"] > 0
    assert native["pipeline"]["t1.jpg"]["faces"] == T1_FACES
    # the terminal shows the table; the native row's name is a --wide/Markdown column (it alone
    # is wider than the 100-column default view)
    assert "In the browser vs native" in out.stdout
    assert f"{native['name']} (" in md_out.read_text()


def test_in_page_time_sums_the_chunks_of_a_fixed_batch_file():
    """A fixed-batch file (export --batch 1) is fed to its browser runtime one face per run()
    (StaticBatchRuntime): a timed call of 4 faces is 4 page runs, and its in-page time is their
    sum, not the last run's."""
    import numpy as np

    from ssrconv.benchmarks.worker import Worker, make_batches
    from ssrconv.runtimes.base import Runtime, StaticBatchRuntime

    class Page(Runtime):  # a browser runtime's timing contract, without the browser
        heads = ("age",)
        last_browser_ms, browser_ms_total = None, 0.0

        def run(self, batch):
            self.last_browser_ms = 2.0 * len(batch)
            self.browser_ms_total += self.last_browser_ms
            return {"age": np.zeros(len(batch), np.float32)}

    worker = Worker()
    worker.runtime = StaticBatchRuntime(Page(), 1)
    worker.calls["run"] = worker.runtime.run
    worker.batches[4] = make_batches(np.zeros((8, 64, 64, 3), np.float32), 4)
    reply = worker.cmd_time({"mode": "run", "batch": 4, "n": 3})
    assert reply["in_page_ms"] == [8.0, 8.0, 8.0]

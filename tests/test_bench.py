"""``ssrconv bench``: statistics and reports on synthetic timings, the worker-process harness on
a fake backend (including crashes), and short real runs of every backend. No test asserts on
speed: only that numbers exist, are finite and positive, and are put where they belong."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from ssrconv.benchmarks import stats
from ssrconv.benchmarks.fingerprint import fingerprint, one_line, parse_cpuinfo
from ssrconv.atomic import write_atomic
from ssrconv.benchmarks.plan import Entry, artifact_entry
from ssrconv.benchmarks.schedule import run_bench
from ssrconv.benchmarks.settings import Settings
from ssrconv.benchmarks.report import build_report, render_json, render_markdown, render_plot, render_text
from ssrconv.runtimes.coreml_rt import not_timable_reason
from ssrconv.benchmarks.sizes import PAPER_MODEL_BYTES, size_info

TINY = dict(runs=4, warmup=1, rounds=2, batch=4, pipeline_runs=2)


# ---------------------------------------------------------------- statistics (pure)


def test_summarize_known_values():
    times_ns = [1000 * v for v in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)]  # 1..10 us
    s = stats.summarize(times_ns)
    assert s["n"] == 10 and s["min"] == 1 and s["max"] == 10
    assert s["median"] == pytest.approx(5.5) and s["mean"] == pytest.approx(5.5)
    assert s["p90"] == pytest.approx(9.1) and s["p10"] == pytest.approx(1.9)
    assert s["p99"] == pytest.approx(9.91)
    assert s["std"] == pytest.approx(math.sqrt(8.25))
    per_face = stats.summarize(times_ns, divisor=4)
    assert per_face["median"] == pytest.approx(5.5 / 4)
    empty = stats.summarize([])
    assert empty["n"] == 0 and math.isnan(empty["median"])


def test_throughput_flops_and_efficiency():
    # 4 calls of batch 8 taking 2 ms each: 32 faces in 8 ms.
    assert stats.throughput([2_000_000] * 4, 8) == pytest.approx(4000.0)
    assert stats.flops_per_face(2) == 2 * 2 * 17_078_926
    # 34.16 MFLOP per face per head in 1 ms = 34.16 GFLOP/s.
    assert stats.achieved_gflops(stats.flops_per_face(1), 1e-3) == pytest.approx(34.157852)
    gemm = stats.gemm_gflops(100, [2_000_000, 1_000_000, 4_000_000])  # 2e6 FLOP each
    assert gemm["best_gflops"] == pytest.approx(2.0) and gemm["median_gflops"] == pytest.approx(1.0)
    assert stats.fraction(1.0, 4.0) == 0.25 and math.isnan(stats.fraction(1.0, 0.0))
    assert stats.param_bytes(100, "fp16") == 200 and stats.param_bytes(100, "weird") is None


def test_analyse_latency_reports_raw_and_overhead_separately():
    times = [1_000_000] * 9 + [2_000_000]  # 1 ms per call, one slow call
    overhead = [500] * 10  # 0.5 us per empty call
    lat = stats.analyse_latency(times, overhead, batch=8, heads=2, gemm_median_gflops=50.0,
                                gemm_best_gflops=100.0)
    assert lat["per_call_us"]["median"] == pytest.approx(1000.0)  # nothing subtracted
    assert lat["per_face_us"]["median"] == pytest.approx(125.0)
    assert lat["overhead_us"]["median"] == pytest.approx(0.5)
    assert lat["overhead_share"] == pytest.approx(0.0005)
    expected = 2 * 2 * 17_078_926 / 125e-6 / 1e9
    assert lat["gflops"] == pytest.approx(expected)
    assert lat["fraction_of_core_gemm"] == pytest.approx(expected / 50.0)
    assert lat["fraction_of_core_gemm_best"] == pytest.approx(expected / 100.0)
    assert lat["throughput_faces_per_s"] == pytest.approx(80 / 0.011)


def test_latency_ratios():
    medians = {"predict": 1000.0, "a": 10.0, "b": 20.0, "c": 5.0}
    ratios = stats.latency_ratios(medians, "predict", fp32_names=["a", "b", "predict"])
    assert ratios["a"]["speedup_vs_keras_predict"] == pytest.approx(100.0)
    assert ratios["predict"]["speedup_vs_keras_predict"] == pytest.approx(1.0)
    assert ratios["a"]["time_vs_fastest_fp32"] == pytest.approx(1.0)
    assert ratios["b"]["time_vs_fastest_fp32"] == pytest.approx(2.0)
    assert ratios["c"]["time_vs_fastest_fp32"] == pytest.approx(0.5)  # an int8 row may beat it
    none = stats.latency_ratios({"a": 1.0}, None, [])
    assert math.isnan(none["a"]["speedup_vs_keras_predict"])


def test_parse_cpuinfo():
    text = ("processor\t: 0\nmodel name\t: Test CPU @ 2.5GHz\nflags\t\t: fpu avx2 fma avx512f "
            "avx512_vnni\nphysical id\t: 0\ncpu cores\t: 2\n\nprocessor\t: 1\nmodel name\t: Test "
            "CPU @ 2.5GHz\nflags\t\t: fpu avx2\nphysical id\t: 0\ncpu cores\t: 2\n")
    info = parse_cpuinfo(text)
    assert info["model"] == "Test CPU @ 2.5GHz" and info["logical_cpus"] == 2
    assert info["physical_cores"] == 2
    assert {"avx2", "avx512f", "avx512_vnni"} <= set(info["flags"]) and "fpu" not in info["flags"]


def test_sizes(tmp_path):
    single = tmp_path / "m.tflite"
    single.write_bytes(b"\0" * 1000)
    package = tmp_path / "m.mlpackage"
    (package / "Data").mkdir(parents=True)
    (package / "Data" / "a.bin").write_bytes(b"\1" * 300)
    (package / "Manifest.json").write_bytes(b"{}" * 50)
    one = size_info([single], "fp16", heads=2)
    assert one["file_bytes"] == 1000 and 0 < one["gzip_bytes"] < 1000
    assert one["param_bytes"] == 2 * stats.PARAMS_PER_HEAD * 2
    assert one["ratio_to_paper"] == pytest.approx(1000 / PAPER_MODEL_BYTES)
    assert one["ratio_to_paper_per_head"] == pytest.approx(500 / PAPER_MODEL_BYTES)
    assert "bytes per parameter" in one["param_bytes_method"]
    assert size_info([package], "fp32", heads=1)["file_bytes"] == 400


# ---------------------------------------------------------------- report on a fake backend


def _fake_entries() -> list[Entry]:
    """Rows with injected per-call times (ns): no clock involved."""
    def timed(name, backend, precision, per_call_us, mode="run"):
        e = Entry(name, backend, f"{backend}-{precision}", precision, mode=mode,
                  heads=["age", "p_male"], worker_key=backend)
        e.status, e.engine, e.import_s, e.load_s = "ok", backend, 1.0, 0.5
        e.first_ms = {1: 10.0, 4: 12.0}
        for batch in (1, 4):
            e.times_ns[batch] = [int(per_call_us * batch * 1000 * f) for f in (1.0, 1.1, 0.9, 1.2)]
            e.overhead_ns[batch] = [300, 310, 290, 305]
        e.process = {"peak_rss_bytes": 100 * 2**20, "tensorflow_imported": backend == "keras"}
        e.info = {"macs_per_head": stats.MACS_PER_FACE_PER_HEAD} if backend == "keras" else {}
        e.size = {"file_bytes": 1000, "gzip_bytes": 800, "param_bytes": 900, "heads": 2,
                  "ratio_to_paper": 0.5, "ratio_to_paper_per_head": 0.25,
                  "param_bytes_method": "count x bytes"}
        return e

    rows = [timed("keras (model call)", "keras", "fp32", 5000),
            timed("keras (model.predict)", "keras", "fp32", 20000, mode="predict"),
            timed("a.onnx", "onnx", "fp32", 600), timed("a.tflite", "tflite", "fp32", 400),
            timed("a_int8.tflite", "tflite", "int8", 800)]
    coreml = Entry("a.mlpackage", "coreml", "coreml-fp16", "fp16", timed=False,
                   note=not_timable_reason(), status="not-timed", heads=["age", "p_male"])
    failed = Entry("bad.tflite", "tflite", "tflite-fp32", "fp32", status="failed",
                   error="load: worker killed by signal SIGSEGV")
    return rows + [coreml, failed]


@pytest.fixture(scope="module")
def fake_report():
    settings = Settings(threads=1, **TINY)
    return build_report(_fake_entries(), [3_000_000] * 5, settings, fingerprint(1),
                        "seeded random inputs")


def test_report_structure_on_fake_timings(fake_report):
    rows = {r["name"]: r for r in fake_report["results"]}
    assert fake_report["schema"] == "ssrconv.bench/1"
    assert fake_report["settings"]["batches"] == [1, 4]
    tfl = rows["a.tflite"]
    assert set(tfl["latency"]) == {"1", "4"}
    assert tfl["latency"]["4"]["per_face_us"]["median"] == pytest.approx(400 * 1.05)
    assert tfl["latency"]["4"]["per_call_us"]["median"] == pytest.approx(1600 * 1.05)
    assert tfl["latency"]["1"]["overhead_us"]["median"] == pytest.approx(0.3025)
    assert tfl["ratios"]["1"]["time_vs_fastest_fp32"] == pytest.approx(1.0)
    assert tfl["ratios"]["1"]["speedup_vs_keras_predict"] == pytest.approx(50.0)
    assert rows["a.onnx"]["ratios"]["4"]["time_vs_fastest_fp32"] == pytest.approx(1.5)
    assert rows["keras (model.predict)"]["ratios"]["1"]["speedup_vs_keras_predict"] == pytest.approx(1.0)
    assert rows["a.mlpackage"]["status"] == "not-timed" and rows["a.mlpackage"]["latency"] == {}
    assert fake_report["failed"] == ["bad.tflite"]
    assert fake_report["gemm"]["median_gflops"] == pytest.approx(2 * 512**3 / 3e-3 / 1e9)
    assert rows["a.tflite"]["tensorflow_imported"] is False


def test_vs_original_fp32_is_the_same_format_and_engines_original_graph_row():
    rows = _fake_entries()[:5]
    for row in rows:
        row.graph = "fast"
    original = Entry("a.tflite [original graph]", "tflite", "tflite-fp32", "fp32",
                     heads=["age", "p_male"], graph="original")
    original.status, original.engine = "ok", "tflite"
    original.times_ns = {b: [int(500 * b * 1000)] * 4 for b in (1, 4)}
    report = build_report(rows + [original], [3_000_000] * 5, Settings(threads=1, **TINY),
                          fingerprint(1), "seeded random inputs")
    by_name = {r["name"]: r["ratios"]["1"] for r in report["results"] if r["ratios"]}
    assert by_name["a.tflite"]["time_vs_original_fp32"] == pytest.approx(400 * 1.05 / 500)
    assert by_name["a_int8.tflite"]["time_vs_original_fp32"] == pytest.approx(800 * 1.05 / 500)
    assert by_name["a.tflite [original graph]"]["time_vs_original_fp32"] == pytest.approx(1.0)
    assert "time_vs_original_fp32" not in by_name["a.onnx"]  # no original onnx row: no ratio
    # same target: the fp32 row over the original fp32, the int8 row has no original int8 row
    assert by_name["a.tflite"]["time_vs_original_target"] == pytest.approx(400 * 1.05 / 500)
    assert "time_vs_original_target" not in by_name["a_int8.tflite"]
    assert "vs original fp32" in render_markdown(report)
    assert "vs original same target" in render_markdown(report)


def test_vs_original_same_target_compares_int8_with_original_int8():
    rows = _fake_entries()[:5]
    for row in rows:
        row.graph = "fast"
    originals = []
    for name, target, precision, us in (("a.tflite [original graph]", "tflite-fp32", "fp32", 500),
                                        ("a_int8.tflite [original graph]", "tflite-int8", "int8",
                                         1000)):
        original = Entry(name, "tflite", target, precision, heads=["age", "p_male"],
                         graph="original")
        original.status, original.engine = "ok", "tflite"
        original.times_ns = {b: [int(us * b * 1000)] * 4 for b in (1, 4)}
        originals.append(original)
    report = build_report(rows + originals, [3_000_000] * 5, Settings(threads=1, **TINY),
                          fingerprint(1), "seeded random inputs")
    by_name = {r["name"]: r["ratios"]["1"] for r in report["results"] if r["ratios"]}
    assert by_name["a_int8.tflite"]["time_vs_original_target"] == pytest.approx(800 * 1.05 / 1000)
    assert by_name["a_int8.tflite"]["time_vs_original_fp32"] == pytest.approx(800 * 1.05 / 500)


def test_two_export_dirs_label_their_rows_by_graph():
    from ssrconv.benchmarks.command import _label_by_graph
    from ssrconv.errors import SsrconvError

    fast = Entry("m.tflite", "tflite", "tflite-fp32", "fp32", graph="fast")
    orig = Entry("m.tflite", "tflite", "tflite-fp32", "fp32", graph="original")
    assert [e.name for e in _label_by_graph([fast, orig])] == [
        "m.tflite [fast graph]", "m.tflite [original graph]"]
    # each file runs in its own worker (a shared one would time the first file twice)
    assert fast.worker_key != orig.worker_key
    with pytest.raises(SsrconvError, match="more than one directory"):
        _label_by_graph([Entry("m.tflite", "tflite", "tflite-fp32", "fp32", graph="fast"),
                         Entry("m.tflite", "tflite", "tflite-fp32", "fp32", graph="fast")])


def test_report_renderings(fake_report, tmp_path):
    text = render_text(fake_report)
    markdown = render_markdown(fake_report)
    for rendered in (text, markdown):
        assert "a.tflite" in rendered and "not measured" in rendered
        assert "FAILED" in rendered and "SIGSEGV" in rendered
        assert "macOS" in rendered and "never subtracted" in rendered
    assert one_line(fake_report["fingerprint"]) in markdown
    assert markdown.count("|---|") >= 3
    data = json.loads(render_json(fake_report))  # strict JSON: NaN became null
    assert data["results"][0]["name"] == "keras (model call)"
    png = render_plot(fake_report)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "r.json"
    write_atomic(out, render_json(fake_report))
    assert json.loads(out.read_text())["schema"] == "ssrconv.bench/1"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_a_bench_column_is_one_entry(fake_report, monkeypatch):
    """A column is defined in one place: one Column entry in report.TABLES (header, value from
    a table line, formatter, shown in the terminal's default view or only with --wide) puts its
    header and cells in the Markdown and both terminal views; a row with no timing gets "-"."""
    from dataclasses import replace

    from ssrconv.benchmarks import report

    def spread(line):
        face = line["lat"]["per_face_us"]
        return face["p90"] / face["median"]

    def with_column(narrow):
        column = report.Column("p90 / median", spread, report.fmt_ratio, narrow=narrow)
        return tuple(replace(t, columns=(*t.columns, column)) if t.title.startswith("Latency")
                     else t for t in report.TABLES)

    face = fake_report["results"][3]["latency"]["4"]["per_face_us"]  # a.tflite, batch 4
    cell = report.fmt_ratio(face["p90"] / face["median"])
    monkeypatch.setattr(report, "TABLES", with_column(narrow=False))
    markdown = render_markdown(fake_report)
    assert "| overhead share | p90 / median |" in markdown
    tflite = next(ln for ln in markdown.splitlines() if ln.startswith("| a.tflite | tflite | 4 |"))
    assert tflite.endswith(f"| {cell} |")
    failed = next(ln for ln in markdown.splitlines() if ln.startswith("| bad.tflite | - | - |"))
    assert failed.endswith("| - |")
    assert "p90 / median" in render_text(fake_report, wide=True)
    assert "p90 / median" not in render_text(fake_report)  # --wide only
    monkeypatch.setattr(report, "TABLES", with_column(narrow=True))
    text = render_text(fake_report)
    header = text.splitlines()[text.splitlines().index(next(
        t for t, _, _ in report.tables(fake_report) if t.startswith("Latency"))) + 1]
    assert header.split() == ["backend", "engine", "batch", "median", "p90", "min", "p90", "/",
                              "median"]
    assert any(ln.startswith("a.tflite") and ln.rstrip().endswith(cell) and " 4 " in ln
               for ln in text.splitlines())


# ---------------------------------------------------------------- harness: processes, crashes


def test_harness_isolates_crashing_workers():
    """A worker killed by a signal mid-run, and one that dies while loading, are reported as
    failed with their signal; the other rows are measured as usual."""
    rows = [Entry("fake-ok", "fake", "fake-fp32", "fp32", options={"delay_us": 20}),
            Entry("fake-segv", "fake", "fake-fp32", "fp32",
                  options={"crash": "time", "crash_signal": "SIGSEGV"}),
            Entry("fake-killed-at-load", "fake", "fake-fp32", "fp32",
                  options={"crash": "load", "crash_signal": "SIGKILL"}),
            Entry("fake-ok-2", "fake", "fake-int8", "int8", options={"delay_us": 40})]
    messages = []
    report = run_bench(rows, Settings(**TINY), progress=messages.append)
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["fake-segv"]["status"] == "failed"
    assert "SIGSEGV" in by_name["fake-segv"]["error"]
    assert by_name["fake-killed-at-load"]["status"] == "failed"
    assert "SIGKILL" in by_name["fake-killed-at-load"]["error"]
    assert sorted(report["failed"]) == ["fake-killed-at-load", "fake-segv"]
    for name in ("fake-ok", "fake-ok-2"):
        row = by_name[name]
        assert row["status"] == "ok"
        for batch in ("1", "4"):
            lat = row["latency"][batch]
            assert lat["per_call_us"]["n"] == TINY["runs"]
            assert 0 < lat["per_face_us"]["median"] < math.inf
            assert lat["overhead_us"]["n"] == TINY["runs"]
        assert row["memory"]["peak_rss_bytes"] > 0
        assert row["tensorflow_imported"] is False
    assert report["gemm"]["n"] > 0 and report["gemm"]["median_gflops"] > 0
    assert "random" in report["inputs"]
    assert any("FAILED" in m for m in messages)


# ---------------------------------------------------------------- CLI errors (one line each)


def _one_line_error(out, *needles):
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssrconv: error:"), out.stderr
    for needle in needles:
        assert needle in lines[0]


def test_cli_errors(cli, tmp_path):
    _one_line_error(cli("bench", "--model", str(tmp_path / "missing.onnx")), "no such file")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(cli("bench", "--all", str(empty)), "no artifacts")
    onnx = tmp_path / "x.onnx"
    onnx.write_bytes(b"not really")
    _one_line_error(cli("bench", "--backend", "coreml", "--model", onnx), "x.onnx",
                    "not a valid ONNX")
    _one_line_error(cli("bench", "--backend", "keras", "--plot", str(tmp_path / "x.jpg")), ".png")


def test_backend_without_model_uses_or_makes_the_default_export(tmp_path, monkeypatch):
    """`ssrconv bench --backend onnx` verbatim: with no ssrconv-out/ it exports that backend's
    precisions there first, saying so (the export itself is stubbed here: the real one is the
    exporter's own tests)."""
    import ssrconv.exporter
    from ssrconv.benchmarks import command

    monkeypatch.chdir(tmp_path)
    calls, said = [], []
    monkeypatch.setattr(ssrconv.exporter, "export", lambda options, progress=None: calls.append(options) or [])
    assert command._default_artifacts("onnx", said.append) == []
    (options,) = calls
    assert options.to == ("onnx",) and set(options.precision) == {"fp32", "int8"}
    assert options.out == command.DEFAULT_EXPORT_DIR and "exporting" in said[0]
    # the opt-in rows (int8-mixed: beside the integer int8 file; int16x8: not a desktop file)
    # are not part of the default export
    command._default_artifacts("tflite", said.append)
    assert set(calls[1].precision) == {"fp32", "fp16", "dynamic", "int8"}


@pytest.mark.slow
def test_backend_tflite_verbatim_times_the_default_export(export_dir, tmp_path, cli):
    """The design card's `ssrconv bench --backend tflite`, run where ssrconv-out/ exists: every
    tflite artifact there, beside the reference."""
    import shutil

    shutil.copytree(export_dir, tmp_path / "ssrconv-out")
    json_out = tmp_path / "b.json"
    out = cli("bench", "--backend", "tflite", "--runs", "2", "--warmup", "1", "--rounds", "1",
              "--batch", "2", "--pipeline-runs", "1", "--json", json_out, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    names = [r["name"] for r in json.loads(json_out.read_text())["results"]]
    assert sorted(n for n in names if n.endswith(".tflite")) == sorted(
        p.name for p in export_dir.glob("*.tflite"))
    assert any(n.startswith("keras") for n in names) and "timing the tflite artifacts" in out.stderr
    usage = cli("bench")
    assert usage.returncode == 2 and "--all DIR" in usage.stderr


def test_command_module_is_light():
    code = ("import sys, ssrconv.benchmarks.command\n"
            "print([m for m in ('numpy', 'tensorflow', 'onnxruntime', 'matplotlib') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ---------------------------------------------------------------- real backends


@pytest.mark.slow
def test_bench_all_real_backends(export_dir, assets_dir, faces_dir, tmp_path, cli):
    """Every artifact of a real export plus Keras, interleaved: finite positive medians for
    each timed row, CoreML reported as not timed off macOS, TFLite workers without TensorFlow."""
    json_out, md_out, png_out = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    out = cli("bench", "--all", export_dir, "--runs", "4", "--warmup", "1", "--rounds", "2",
              "--batch", "4", "--faces", faces_dir, "--pipeline-runs", "2",
              "--json", json_out, "--markdown", md_out, "--plot", png_out)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(json_out.read_text())
    rows = {r["name"]: r for r in report["results"]}
    assert "real faces" in report["inputs"]
    targets = {r["target"] for r in rows.values()}
    assert {"keras-fp32", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"} <= targets
    for row in rows.values():
        if row["backend"] == "coreml" and sys.platform != "darwin":
            assert row["status"] == "not-timed" and "macOS" in row["note"]
            assert row["size"]["file_bytes"] > 0
            continue
        assert row["status"] == "ok", row["error"]
        for batch in ("1", "4"):
            median = row["latency"][batch]["per_face_us"]["median"]
            assert math.isfinite(median) and median > 0
        assert row["memory"]["peak_rss_bytes"] > 0
        assert row["size"]["file_bytes"] > 0 and row["size"]["gzip_bytes"] > 0
        if row["backend"] == "tflite":
            assert row["tensorflow_imported"] is False
        # End to end on every timed row, Keras' model.predict included: t1.jpg's six faces.
        t1 = row["pipeline"]["t1.jpg"]
        assert t1["faces"] == 6 and t1["detect_ms"] > 0 and t1["model_ms"] > 0, row["name"]
    keras = rows["keras (model call)"]
    assert keras["worker"]["macs_per_head"] == stats.MACS_PER_FACE_PER_HEAD
    assert keras["worker"]["params_per_head"] == stats.PARAMS_PER_HEAD
    assert keras["worker"]["tf_intra_op_threads"] == 1
    assert rows["keras (model.predict)"]["ratios"]["1"]["speedup_vs_keras_predict"] == pytest.approx(1.0)
    assert report["gemm"]["median_gflops"] > 0
    assert "Machine:" in md_out.read_text()
    assert png_out.read_bytes()[:4] == b"\x89PNG"
    assert "ssrnet_age_gender_int8.tflite" in out.stdout  # the table went to stdout
    assert "round" in out.stderr  # progress went to stderr


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_single_tflite_worker_does_not_import_tensorflow(export_dir, tmp_path, precision, cli):
    model = export_dir / f"ssrnet_age_gender_{precision}.tflite"
    json_out = tmp_path / "b.json"
    out = cli("bench", "--backend", "tflite", "--model", model, "--runs", "3", "--warmup", "1",
              "--rounds", "1", "--batch", "2", "--pipeline-runs", "0", "--json", json_out)
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = json.loads(json_out.read_text())["results"]
    assert row["status"] == "ok" and row["tensorflow_imported"] is False
    assert row["latency"]["2"]["per_face_us"]["median"] > 0


@pytest.mark.slow
def test_corrupt_tflite_refused_before_timing(export_dir, tmp_path, cli):
    """Random bytes named .tflite are refused by the read path, in one line, before any worker
    is started; a verified artifact's row is measured."""
    from ssrconv.artifacts import open_artifact
    from ssrconv.errors import ModelFileError

    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(os.urandom(4096))
    with pytest.raises(ModelFileError, match="corrupt.tflite") as err:
        open_artifact(corrupt)
    assert "\n" not in str(err.value)
    out = cli("bench", "--model", str(corrupt), "--runs", "2")
    assert out.returncode == 1 and "corrupt.tflite" in out.stderr and "Traceback" not in out.stderr
    rows = [artifact_entry(open_artifact(export_dir / "ssrnet_age_gender_fp32.onnx"))]
    report = run_bench(rows, Settings(**TINY))
    (onnx,) = report["results"]
    assert onnx["status"] == "ok" and onnx["latency"]["4"]["per_face_us"]["median"] > 0


def test_gemm_note_says_when_openblas_is_pinned_to_another_cpus_kernels():
    """OPENBLAS_CORETYPE=Haswell on an AVX-512 machine made the onnx fp32 file 148% of the
    '1-core GEMM': the note must say the reference was pinned, and say nothing when it was not."""
    from ssrconv.benchmarks.report import _coretype_caveat

    assert "OPENBLAS_CORETYPE=Haswell" in _coretype_caveat({"fingerprint": {"env": {"OPENBLAS_CORETYPE": "Haswell"}}})
    assert _coretype_caveat({"fingerprint": {"env": {}}}) == ""

"""What a newcomer meets in the first hour (issue 27): the install, the taglines and hints, the
error lines, predict's outputs and its Python call."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "ssrconv.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ the install
def test_setup_venv_holds_no_cuda_packages():
    """`make setup`'s venv (the one running this suite) has every extra and pnnx, and not one
    CUDA distribution: pnnx is installed with --no-deps (its wheel requires a CUDA torch).
    `make setup` installs no torch at all; a CPU build added for the optional PyTorch-port
    checks is tolerated, a CUDA one (no "+cpu", nvidia-* requirements) is not."""
    dists = {(dist.metadata["Name"] or "").lower(): dist for dist in metadata.distributions()}
    assert "tensorflow" in dists and "pnnx" in dists  # the full install, not a small one
    cuda = sorted(n for n in dists if n.startswith("nvidia-") or n in ("triton", "pytorch-triton"))
    assert not cuda, f"CUDA packages installed: {cuda}"
    torch = dists.get("torch")
    if torch is not None:
        requires = " ".join(torch.requires or [])
        assert torch.version.endswith("+cpu") and "nvidia" not in requires, \
            f"a CUDA torch {torch.version} is installed"


# ------------------------------------------------------------------ taglines and hints
def test_taglines_name_every_format_of_the_table():
    import ssrconv
    from ssrconv.targets import FORMATS, formats_in_words

    titles = [f.title for f in FORMATS.values()]
    assert all(titles) and formats_in_words().endswith(" and " + titles[-1])
    group, export = _cli("--help").stdout, _cli("export", "--help").stdout
    for text in (" ".join(group.split()), " ".join(export.split()),
                 " ".join(ssrconv.__doc__.split())):
        missing = [t for t in titles if t not in text]
        assert not missing, f"{missing} not named in: {text[:200]}"
    assert "ONNX, TFLite and CoreML" not in group + export + ssrconv.__doc__


def test_coreml_runtime_hint_names_the_coreml_extra(tmp_path, monkeypatch):
    """A .mlpackage needs coremltools to run: the hint names ssrconv[coreml] (the README's),
    not the converters' [export]."""
    import ssrconv._extras as extras
    from ssrconv.errors import MissingExtraError
    from ssrconv.targets import get_engine

    real = extras.available
    monkeypatch.setattr(extras, "available", lambda m: m != "coremltools" and real(m))
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'ssrconv[coreml]'")):
        get_engine("coreml").load(tmp_path / "x.mlpackage")


# ------------------------------------------------------------------ predict
def test_readme_predict_example_is_the_default_json_and_annotates_with_out():
    """The README's predict example shows what the command prints by default (JSON) and says
    that annotated copies are written with --out."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### predict", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    command = re.search(r"^ssrconv predict .*$", section, re.M).group(0)
    assert "--format csv" not in command
    output = section.split("```json", 1)[1].split("```", 1)[0]
    assert output.lstrip().startswith("{") and '"faces"' in output
    assert "--out" in command and "annotated" in section


def test_predict_writes_nothing_beside_inputs_without_out(images_dir, tmp_path, assets_dir):
    photo = tmp_path / "astronaut.png"
    photo.write_bytes((images_dir / "astronaut.png").read_bytes())
    done = _cli("predict", photo, "--reference-engine", "numpy")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["annotated"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut.png"]


def test_predict_annotated_copy_keeps_the_input_format(images_dir, tmp_path, assets_dir):
    import cv2

    done = _cli("predict", images_dir / "astronaut.png", images_dir / "group_t1.jpg",
                "--reference-engine", "numpy", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    png, jpg = tmp_path / "astronaut_annotated.png", tmp_path / "group_t1_annotated.jpg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff"
    original = cv2.imread(str(images_dir / "astronaut.png"))
    assert cv2.imread(str(png)).shape == original.shape
    assert json.loads(done.stdout)["annotated"] == [str(png), str(jpg)]


def test_predict_faces_python_call(images_dir, assets_dir):
    """Photo in, faces with ages out: the same faces and ages as `ssrconv predict`."""
    import cv2

    import ssrconv

    photo = images_dir / "group_t1.jpg"
    faces = ssrconv.predict_faces(photo)
    assert len(faces) == 6
    assert {"box", "score", "age", "p_male", "gender"} <= set(faces[0])
    cli = json.loads(_cli("predict", photo).stdout)["faces"]
    assert [f["age"] for f in faces] == pytest.approx([f["age"] for f in cli], abs=1e-3)
    from_array = ssrconv.predict_faces(cv2.imread(str(photo)))
    assert [f["box"] for f in from_array] == [f["box"] for f in faces]
    assert all(0 < f["age"] < 101 and 0 <= f["p_male"] <= 1 for f in faces)


# ------------------------------------------------------------------ bench output
@pytest.fixture(scope="module")
def long_named_report():
    """The bench test's fake rows, named like a full export's longest file and engine names."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_bench import TINY, Settings, _fake_entries, build_report, fingerprint

    names = {"a.onnx": "ssrnet_age_gender_fp32.openvino", "a.tflite": "ssrnet_age_gender_fp16.openvino",
             "a_int8.tflite": "ssrnet_age_gender_int8.openvino"}
    entries = _fake_entries()
    for entry in entries:
        if entry.name in names:
            entry.name, entry.engine = names[entry.name], "mnn-cpu-high-nowinograd"
    return build_report(entries, [3_000_000] * 5, Settings(threads=1, **TINY), fingerprint(1),
                        "seeded random inputs")


def test_bench_text_fits_100_columns_unless_wide(long_named_report):
    from ssrconv.benchmarks.report import render_markdown, render_text

    text = render_text(long_named_report)
    too_wide = [line for line in text.splitlines() if len(line) > 100]
    assert not too_wide, too_wide[:3]
    lines = text.splitlines()
    header = lines[lines.index("Throughput and efficiency") + 1]
    assert "faces/s" in header and "GFLOP/s" not in header and "--wide" in text
    wide = render_text(long_named_report, wide=True)
    assert max(len(line) for line in wide.splitlines()) > 100
    for column in ("GFLOP/s", "p99", "peak RSS MB", "overhead us/call", "x paper 0.32 MB"):
        assert column in wide and column in render_markdown(long_named_report)


def test_bench_plot_leaves_model_predict_off_the_log_axis(long_named_report):
    from ssrconv.benchmarks.report import plotted_rows, render_plot

    drawn, left_out = plotted_rows(long_named_report["results"])
    assert [r["name"] for r in left_out] == ["keras (model.predict)"]
    assert "keras (model call)" in [r["name"] for r in drawn]
    assert all(r["mode"] != "predict" for r in drawn)
    assert render_plot(long_named_report)[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_cli_has_wide():
    assert "--wide" in _cli("bench", "--help").stdout


# ------------------------------------------------------------------ make demo's last screen
def test_demo_summary_reads_what_the_demo_wrote(long_named_report, tmp_path):
    from ssrconv.benchmarks.report import render_json
    from ssrconv.parity import HeadStats, ParityReport, ParityResult

    files = ["ssrnet_age_gender_fp32.tflite", "ssrnet_age_gender_int8.tflite",
             "ssrnet_age_gender_fp16.mlpackage"]
    (tmp_path / "index.json").write_text(json.dumps({"artifacts": [
        {"file": f, "bytes": 1000, "target": "t"} for f in files]}))

    def row(name, max_age, not_run=None):
        real = {} if not_run else {"age": HeadStats(max_age, max_age / 4, max_age, 1.0)}
        return ParityResult(name, "t", "e", {}, 0 if not_run else 7, 64, real, {},
                            not_run=not_run)

    report = ParityReport("samples", [row(files[0], 4e-5), row(files[1], 0.93),
                                      row(files[2], 0, not_run="engine coreml is not installed")])
    (tmp_path / "parity.json").write_text(json.dumps(report.as_dict()))
    (tmp_path / "bench.json").write_text(render_json(long_named_report))
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "demo_summary.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"artifacts written: 3 in {tmp_path}/" in text
    assert "parity: PASS: 2 of 2 checks within budget on 7 real faces, 1 not run" in text
    assert "largest age difference 0.93 y (ssrnet_age_gender_int8.tflite)" in text
    # the fake report's fastest artifact row: 420 us per face, 21,000 us for model.predict
    assert "fastest artifact: ssrnet_age_gender_fp16.openvino on mnn-cpu-high-nowinograd, 420 us" in text
    assert "50x faster than Keras model.predict" in text
    assert "outputs:" in text and "bench.json" in text and "parity.json" in text
    assert f"--model {tmp_path}/ssrnet_age_gender_int8.tflite --out annotated/" in text


# ------------------------------------------------------------------ the README and its figures
def test_readme_reads_in_two_minutes_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for heading in ("## Two commands", "## Install", "### export", "### parity", "### bench",
                    "### predict", "## Results"):
        assert heading in readme
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link
    for doc in ("GUIDE.md", "RESULTS.md"):
        text = (ROOT / "docs" / doc).read_text()
        for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not link.startswith("http"):
                assert (ROOT / "docs" / link).exists(), f"{doc}: {link}"


def test_every_block_readme_figures_splices_has_its_markers():
    makefile = (ROOT / "Makefile").read_text()
    results = re.search(r"^RESULTS := (\S+)", makefile, re.M).group(1)
    spliced = re.findall(r"splice_readme\.py (\S+) (\w+) ", makefile)
    assert {name for _, name in spliced} >= {"headline", "stamp", "parity", "bench", "int8",
                                              "eval", "predict"}
    for target, name in spliced:
        text = (ROOT / (results if target == "$(RESULTS)" else target)).read_text()
        assert f"<!-- {name}:begin -->" in text and f"<!-- {name}:end -->" in text, (target, name)


def test_headline_table_from_parity_and_bench_json(long_named_report):
    sys.path.insert(0, str(ROOT / "tools"))
    from headline_table import headline

    parity = {"results": [
        {"artifact": "m_int8.tflite", "target": "tflite-int8", "passed": True, "not_run": None,
         "real": {"age": {"max_abs": 1.234}}},
        {"artifact": "m_fp32.onnx", "target": "onnx-fp32", "passed": False, "not_run": None,
         "real": {"age": {"max_abs": 0.5}}},
        {"artifact": "m_fp32.onnx", "target": "onnx-fp32", "passed": True, "not_run": None,
         "real": {"age": {"max_abs": 0.001}}},  # the same file on a second engine: not a row
    ]}
    bench = {"results": [
        {"name": "m_fp32.onnx", "path": "d/m_fp32.onnx", "mode": "run", "graph": "fast",
         "status": "ok", "size": {"file_bytes": 523293},
         "latency": {"1": {"per_face_us": {"median": 1021.4}}},
         "ratios": {"1": {"time_vs_fastest_fp32": 1.0}}},
        {"name": "m_fp32.onnx [original graph]", "path": "o/m_fp32.onnx", "mode": "run",
         "graph": "original", "status": "ok", "size": {"file_bytes": 1},
         "latency": {"1": {"per_face_us": {"median": 1.0}}}, "ratios": {}},
        {"name": "m_int8.tflite", "path": "d/m_int8.tflite", "mode": "run", "graph": "fast",
         "status": "ok", "size": {"file_bytes": 190736},
         "latency": {"1": {"per_face_us": {"median": 1272.0}}},
         "ratios": {"1": {"time_vs_fastest_fp32": 1.2457}}},
    ]}
    lines = headline(parity, bench).splitlines()
    assert len(lines) == 4  # header, rule, one row per artifact in target-table order
    assert lines[2] == ("| `onnx-fp32` | `m_fp32.onnx` | 523,293 | fp32 | 0.5 y (FAIL) "
                        "| 1,021 us (1.00x) |")
    assert lines[3] == ("| `tflite-int8` | `m_int8.tflite` | 190,736 | int8 | 1.2 y (pass) "
                        "| 1,272 us (1.25x) |")


# ------------------------------------------------------------------ error lines are never cut mid-word
def test_clip_cuts_at_a_word_or_not_at_all():
    from ssrconv.errors import clip

    message = ("unpack_from requires a buffer of at least 190500 bytes for unpacking 4 bytes at "
               "offset 190496 (actual buffer size is 190496)")
    assert clip(message) == message
    short = clip(message, 100)
    assert short == "unpack_from requires a buffer of at least 190500 bytes for unpacking 4 bytes at offset 190496..."
    assert clip("first line\nsecond") == "first line"
    assert clip("x" * 300) == "x" * 300  # one word: kept whole rather than cut


def test_truncated_tflite_error_names_the_whole_reason(tmp_path):
    """Every truncation of a .tflite whose reader fails inside the flatbuffer library reports
    that library's whole message (it was cut at 100 characters: '... offset 190496 (actua')."""
    from ssrconv._imports import tensorflow
    from ssrconv.artifacts import open_artifact
    from ssrconv.errors import ModelFileError

    tf = tensorflow("a test model")
    layer = tf.Variable(np.ones((16, 8), np.float32))
    fn = tf.function(lambda x: tf.nn.relu(tf.matmul(x, layer)),
                     input_signature=[tf.TensorSpec([None, 16], tf.float32)])
    data = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn).convert()
    messages = []
    for size in range(8, len(data), max(1, len(data) // 400)):
        path = tmp_path / f"cut{size}.tflite"
        path.write_bytes(data[:size])
        with pytest.raises(ModelFileError) as caught:
            open_artifact(path)
        messages.append(str(caught.value))
    struct_errors = [m for m in messages if "unpack_from requires" in m]
    assert struct_errors, "no truncation reached the flatbuffer reader"
    for message in struct_errors:
        assert re.search(r"\(actual buffer size is \d+\)\); re-export", message), message


# ------------------------------------------------------------------ byte-reproducible exports
@pytest.mark.slow
def test_exports_are_byte_reproducible_whatever_else_the_command_exports(tmp_path, assets_dir,
                                                                        exported, monkeypatch):
    """The same weights, options and tool versions give the same sha256 for a target, whatever
    else the command exports and in what order, however many exports the process ran before.

    Covers the causes found (docs/CONVERTERS.md, "Byte-reproducible exports"): a Keras
    model named from the process-wide counter, whose name the .tflite keeps in its tensor
    names (the data-free int8 TFLite alone vs beside fp32: same size, different sha256), the
    random item identifiers of an .mlpackage's Manifest.json (CoreML: every export differed)
    and its spec's protobuf maps, written in an order that varies between processes; ONNX
    rides along (tf2onnx keeps graph names too). The fp32 files are exported in reverse table
    order by a process of their own and compared with the session's (``exported``: in
    ``make test`` the ``--to all`` export, every target in table order); the data-free int8
    file alone is the session's (``exported``, test_calibration checks it) and the int8 file
    beside fp32 is exported here, after it (in this process or in the other worker), so every
    process-wide counter has moved on between the exports compared; with an empty cache, so
    that it distils and quantizes again (the integer file and its distilled inputs are cached
    by content, and a cache hit would compare the cached bytes with themselves)."""
    import json
    import subprocess
    import sys

    from ssrconv.calibration import DATA_FREE_KIND
    from ssrconv.exporter import export

    def shas(name, **options):
        return {a.target.key: a.sha256 for a in export(out=tmp_path / name, **options)}

    forward = {key: exported(key).sha256 for key in ("onnx-fp32", "tflite-fp32", "coreml-fp32")}
    command = [sys.executable, "-m", "ssrconv.cli", "export", "--to", "coreml", "--to", "tflite",
               "--to", "onnx", "--precision", "fp32", "--out", str(tmp_path / "backward")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    index = json.loads((tmp_path / "backward" / "index.json").read_text())
    backward = {entry["target"]: entry["sha256"] for entry in index["artifacts"]}
    alone = exported("tflite-int8", calibration=None)  # data-free calibration
    monkeypatch.setenv("SSRCONV_CACHE", str(tmp_path / "empty-cache"))
    beside = shas("beside", to=("tflite",), precision=("int8", "fp32"))
    assert (tmp_path / "empty-cache" / "int8-integer").is_dir()  # written afresh, not read
    assert set(backward) == {"onnx-fp32", "tflite-fp32", "coreml-fp32"}
    assert backward == forward
    assert alone.manifest["calibration"]["kind"] == DATA_FREE_KIND
    assert beside == {"tflite-int8": alone.sha256, "tflite-fp32": forward["tflite-fp32"]}


def test_parity_report_names_artifacts_no_installed_runtime_checked():
    from ssrconv.parity import ParityReport, ParityResult

    def row(artifact, engine, not_run=None, missing=None):
        return ParityResult(artifact, "t", engine, {}, 7, 0, {}, {}, not_run=not_run,
                            missing_extra=missing)

    report = ParityReport("faces", [
        row("a.onnx", "onnxruntime"),
        row("a.onnx", "tract", "engine tract is not installed here", "tract"),  # a ran on another
        row("b.mlpackage", "coreml", "engine coreml is not installed here", "coreml"),
        row("c.tflite", "chromium-litert-wasm", "LiteRT.js cannot resize"),  # refused, installed
    ])
    assert report.passed  # budgets: nothing broken
    assert report.unchecked() == {"b.mlpackage": "coreml"}
    assert report.as_dict()["unchecked"] == {"b.mlpackage": "coreml"}

"""tools/int8_report.py judges each int8 target from the commands' JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "int8_report.py"


def _tool():
    spec = importlib.util.spec_from_file_location("int8_report", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench_row(target, median_us):
    return {"target": target, "status": "ok", "latency": {"1": {"per_face_us": {"median": median_us}}}}


def test_latency_ratios_are_judged_against_their_family_targets():
    tool = _tool()
    bench = {"settings": {"threads": 1}, "results": [
        _bench_row("tflite-fp32", 1000.0), _bench_row("tflite-int8", 500.0),
        _bench_row("onnx-fp32", 1000.0), _bench_row("onnx-int8", 590.0)]}
    rows = {r[0].split()[0]: r for r in tool.latency_rows(bench)}
    assert rows["tflite"][2].endswith("= 0.50x") and rows["tflite"][3] == "not met"  # target 0.4x
    assert rows["onnx"][2].endswith("= 0.59x") and rows["onnx"][3] == "met"  # target 0.6x


def test_parity_and_mae_rows(tmp_path, capsys):
    tool = _tool()
    parity = {"results": [
        {"target": "tflite-int8", "passed": True, "violations": [],
         "real": {"age": {"mean_abs": 0.17, "p99_abs": 0.9}, "p_male": {"agreement": 1.0}}},
        {"target": "onnx-int8", "passed": False, "violations": ["p99 age 1.2 > 1.0"],
         "real": {"age": {"mean_abs": 0.2, "p99_abs": 1.2}}},
        {"target": "tflite-fp32", "passed": True, "violations": [], "real": {}}]}
    rows = tool.parity_rows("real-face", parity)
    assert [r[0] for r in rows] == ["tflite-int8 parity, real-face calibration",
                                   "onnx-int8 parity, real-face calibration"]
    assert rows[0][3] == "met" and rows[1][3].startswith("not met: p99")
    evals = [{"summary": {"backend": "keras", "model": "keras reference", "age_mae_adults": 9.18}},
             {"summary": {"backend": "tflite", "model": "out/ssrnet_age_gender_int8.tflite",
                          "age_mae_adults": 9.40}}]
    (mae,) = tool.mae_rows(evals)
    assert mae[0] == "age MAE on adults, out/ssrnet_age_gender_int8.tflite"
    assert mae[2] == "9.400 y (+0.220)" and mae[3] == "not met"
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"settings": {}, "results": []}))
    age = tmp_path / "age.tflite"
    age.write_bytes(b"x" * 1000)
    tool.main(["--bench", str(bench), "--age-int8", str(age)])
    out = capsys.readouterr().out
    assert "| int8 TFLite file, age only | <= 65,536 bytes | 1,000 bytes | met |" in out
    assert "not measured" in out

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


def _bench_row(target, median_us, graph, name=None, gemm=None, best_us=None):
    latency = {"per_face_us": {"median": median_us,
                               "min": median_us if best_us is None else best_us}}
    if gemm is not None:
        latency.update(fraction_of_core_gemm_best=gemm, fraction_of_core_gemm=gemm / 2)
    return {"name": name or f"{target}-{graph}", "target": target, "backend": target.split("-")[0],
            "graph": graph, "status": "ok", "latency": {"1": latency}}


def test_speed_targets_are_judged_against_the_original_graph_fp32_of_the_same_run():
    tool = _tool()
    bench = {"settings": {"threads": 1}, "results": [
        _bench_row("tflite-fp32", 1000.0, "original"), _bench_row("tflite-fp32", 860.0, "fast"),
        _bench_row("tflite-int8", 700.0, "fast"), _bench_row("onnx-fp32", 1000.0, "original"),
        _bench_row("onnx-fp32", 400.0, "fast", gemm=0.65),
        _bench_row("onnx-int8", 300.0, "original")]}  # an original-graph row is never "fastest"
    rows = {r[0].split(" latency")[0].split(",")[0]: r for r in tool.latency_rows(bench)}
    assert rows["tflite-fp32"][2] == ("median 860 us vs 1000 us = 0.860x; "
                                      "best call 860 vs 1000 us = 0.860x")
    assert rows["tflite-fp32"][3] == "met"
    assert "= 0.700x" in rows["tflite-int8"][2] and rows["tflite-int8"][3] == "not met"
    assert "= 0.400x" in rows["onnx-fp32"][2] and rows["onnx-fp32"][3] == "met"
    gemm = next(r for r in tool.latency_rows(bench) if "SGEMM" in r[0])
    assert gemm[2] == "best 65%, median 32%" and gemm[3] == "not met"
    fastest = next(r for r in tool.latency_rows(bench) if r[0].startswith("fastest"))
    assert fastest[2].startswith("onnx-fp32-fast: median 400 us vs 1000 us = 0.400x")
    assert fastest[3] == "met"


def test_a_ratio_only_the_medians_meet_is_not_met():
    """A noisy stretch inflating the original's median (1,416 us median, 935 us best call,
    measured) makes the median ratio meet a goal the best calls do not."""
    bench = {"settings": {"threads": 1}, "results": [
        _bench_row("tflite-fp32", 1416.0, "original", best_us=935.0),
        _bench_row("tflite-fp32", 1053.0, "fast", best_us=816.0)]}
    row = next(r for r in _tool().latency_rows(bench) if r[0].startswith("tflite-fp32"))
    assert row[2] == "median 1053 us vs 1416 us = 0.744x; best call 816 vs 935 us = 0.873x"
    assert row[3] == "not met"


def test_speed_targets_need_both_graphs():
    rows = _tool().latency_rows({"settings": {}, "results": [
        _bench_row("tflite-fp32", 900.0, "fast")]})
    assert all("not measured" in r[2] for r in rows[:3])


def test_parity_and_mae_rows(tmp_path, capsys):
    tool = _tool()
    parity = {"results": [
        {"target": "tflite-int8", "passed": True, "violations": [],
         "real": {"age": {"mean_abs": 0.17, "p99_abs": 0.9}, "p_male": {"agreement": 1.0}}},
        {"target": "onnx-int8", "passed": False, "violations": ["p99 age 1.2 > 1.0"],
         "real": {"age": {"mean_abs": 0.2, "p99_abs": 1.2}}},
        {"target": "tflite-fp32", "passed": True, "violations": [], "real": {}},
        {"target": "tflite-int8", "engine": "chromium-litert-wasm", "passed": True,
         "violations": [], "real": {}, "not_run": "LiteRT.js cannot resize"}]}
    rows = tool.parity_rows("real-face", parity)
    assert [r[0] for r in rows] == ["tflite-int8 on its default engine parity, real-face calibration",
                                   "onnx-int8 on its default engine parity, real-face calibration"]
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


def test_float32_floor_is_the_fast_files_multiply_adds_at_the_best_gemm_rate(tmp_path):
    tool = _tool()
    model = tmp_path / "ssrnet_age_gender_fp32.tflite"
    (tmp_path / (model.name + ".json")).write_text(json.dumps({"macs_per_face": 30_000_000}))
    fast = _bench_row("tflite-fp32", 900.0, "fast")
    fast["path"] = str(model)

    def floor(gemm_gflops):
        bench = {"settings": {"threads": 1}, "gemm": {"best_gflops": gemm_gflops},
                 "model_cost": {"flops_per_mac": 2}, "results": [
            fast, _bench_row("tflite-fp32", 1000.0, "original"),
            _bench_row("onnx-fp32", 1200.0, "original")]}
        return next(r for r in tool.latency_rows(bench) if r[0].startswith("float32 floor"))

    # 2 x 30 M multiply-adds at 100 GFLOP/s: 600 us, over the original-graph best calls
    slow = floor(100.0)
    assert slow[2].endswith("= 600 us = 0.60x the best original-graph tflite fp32 call, "
                            "0.50x the best original-graph onnx fp32 call")
    assert slow[3] == "0.45x out of reach for float32 kernels here"
    assert floor(200.0)[3] == "-"  # 300 us = 0.30x: the bound does not rule the goal out
    fast["path"] = str(tmp_path / "missing.tflite")  # no manifest: no bound, no row
    assert not [r for r in tool.latency_rows({"settings": {}, "gemm": {"best_gflops": 100.0},
                                             "model_cost": {"flops_per_mac": 2},
                                             "results": [fast]}) if r[0].startswith("float32")]

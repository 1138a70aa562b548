"""The renderings of a parity report (ssrconv.parity_report) on a report built by hand: no
export, no runtime."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from ssrconv.parity import HeadStats, ParityReport, ParityResult
from ssrconv.parity_report import render_json, render_junit, render_markdown


def _report() -> ParityReport:
    def row(name, max_age, violations=(), not_run=None, stages=None):
        real = {} if not_run else {"age": HeadStats(max_age, max_age / 4, max_age, 1.0),
                                   "p_male": HeadStats(1e-3, 1e-4, 1e-3, 1.0, 0.99, 1, 100)}
        return ParityResult(name, "t", "onnxruntime", {}, 0 if not_run else 100, 64, real, {},
                            violations=list(violations), not_run=not_run, stages=stages,
                            stages_engine="onnxruntime" if stages else "")

    return ParityReport("faces", [
        row("a.onnx", 4e-5, stages={"age.delta_s1": 1e-6, "age.stage1": 2e-6}),
        row("b_int8.tflite", 2.5, violations=["max age diff 2.5 y > 2 y"]),
        row("c.mlpackage", 0, not_run="engine coreml is not installed here")],
        reference_engine="numpy-float32")


def test_markdown_has_one_row_per_result_and_the_stage_table():
    text = render_markdown(_report())
    assert text.startswith("Parity against the reference (numpy-float32) on 100 real faces (faces)")
    assert "| a.onnx | - (-) | onnxruntime | 4e-05 | 1e-05 | 4e-05 | 0.001 | 99.0% | - | pass |" in text
    assert "| b_int8.tflite | - (-) | onnxruntime | 2.5 |" in text and "**FAIL**: max age diff 2.5 y" in text
    assert "| c.mlpackage | - (-) | onnxruntime | - | - | - | - | - | - | not run: engine coreml" in text
    assert "| a.onnx | onnxruntime | 2e-06 | 1e-06 | 0 | age.stage1 (2e-06) |" in text
    assert "| b_int8.tflite | - | - | - | - | n/a: not run |" in text


def test_junit_counts_failures_and_skips():
    suite = ET.fromstring(render_junit(_report()))
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in suite}
    assert cases["b_int8.tflite on onnxruntime"].find("failure").get("message") == \
        "max age diff 2.5 y > 2 y"
    assert cases["c.mlpackage on onnxruntime"].find("skipped") is not None
    assert len(cases["a.onnx on onnxruntime"]) == 0


def test_json_is_the_report_as_dict():
    data = json.loads(render_json(_report()))
    assert data == json.loads(json.dumps(_report().as_dict()))
    assert data["passed"] is False and [r["passed"] for r in data["results"]] == [True, False, True]

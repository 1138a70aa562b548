"""The int8 targets of issue 6 as a Markdown table, from the JSON the commands wrote.

    python tools/int8_report.py --bench bench.json --parity real=parity.json \
        --parity data-free=parity_datafree.json --eval eval_fp32.json --eval eval_int8.json ... \
        --age-int8 age/ssrnet_age_int8.tflite

Every number is read from those files (``ssrconv bench --json``, ``ssrconv parity --json``,
``ssrconv eval --json``) or measured on the named file; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LATENCY_TARGETS = {"tflite": 0.4, "onnx": 0.6}  # int8 median / fp32 median, batch 1
SIZE_TARGET = 64 * 1024
MAE_MARGIN = 0.15


def _median_us(row: dict) -> float | None:
    stats = row.get("latency", {}).get("1")
    return stats["per_face_us"]["median"] if stats else None


def latency_rows(bench: dict) -> list[list[str]]:
    by_target = {r["target"]: r for r in bench["results"] if r.get("status") == "ok" and r.get("target")}
    rows = []
    for family, target in LATENCY_TARGETS.items():
        fp32, int8 = by_target.get(f"{family}-fp32"), by_target.get(f"{family}-int8")
        if not (fp32 and int8):
            rows.append([f"{family} int8 latency", f"<= {target}x {family} fp32", "not measured", "-"])
            continue
        a, b = _median_us(fp32), _median_us(int8)
        ratio = b / a
        rows.append([f"{family} int8 latency (batch 1, {bench['settings'].get('threads', 1)} thread)",
                     f"<= {target}x {family} fp32", f"{b:.0f} us vs {a:.0f} us = {ratio:.2f}x",
                     "met" if ratio <= target else "not met"])
    return rows


def parity_rows(label: str, parity: dict) -> list[list[str]]:
    rows = []
    for r in parity["results"]:
        if "int8" not in r["target"] or r["target"].endswith("dynamic"):
            continue
        age, gender = r["real"].get("age"), r["real"].get("p_male")
        parts = []
        if age:
            parts.append(f"mean {age['mean_abs']:.2f} y, p99 {age['p99_abs']:.2f} y")
        if gender:
            parts.append(f"gender {gender['agreement']:.1%}")
        rows.append([f"{r['target']} parity, {label} calibration",
                     "mean <= 0.3 y, p99 <= 1.0 y, gender >= 99%", ", ".join(parts),
                     "met" if r["passed"] else "not met: " + "; ".join(r["violations"])])
    return rows


def mae_rows(evals: list[dict]) -> list[list[str]]:
    summaries = [e["summary"] for e in evals]
    reference = [s for s in summaries if s.get("backend") == "keras"]  # the float32 reference
    if not reference:
        return []
    ref = reference[0]
    rows = []
    for s in summaries:
        if s is ref or "int8" not in str(s.get("model", "")):
            continue
        delta = s["age_mae_adults"] - ref["age_mae_adults"]
        model = Path(str(s["model"]))
        rows.append([f"age MAE on adults, {model.parent.name}/{model.name}",
                     f"within {MAE_MARGIN} y of the fp32 reference ({ref['age_mae_adults']:.3f} y)",
                     f"{s['age_mae_adults']:.3f} y ({delta:+.3f})",
                     "met" if abs(delta) <= MAE_MARGIN else "not met"])
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--parity", action="append", default=[], help="LABEL=parity.json")
    parser.add_argument("--eval", action="append", default=[], type=Path)
    parser.add_argument("--age-int8", type=Path, help="the age-only int8 .tflite")
    args = parser.parse_args(argv)
    rows = latency_rows(json.loads(args.bench.read_text()))
    if args.age_int8:
        size = args.age_int8.stat().st_size
        rows.append(["int8 TFLite file, age only", f"<= {SIZE_TARGET:,} bytes", f"{size:,} bytes",
                     "met" if size <= SIZE_TARGET else "not met"])
    for spec in args.parity:
        label, _, path = spec.partition("=")
        rows += parity_rows(label, json.loads(Path(path).read_text()))
    rows += mae_rows([json.loads(p.read_text()) for p in args.eval])
    print("| target | goal | measured | |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

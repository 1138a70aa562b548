"""The speed (issue 13) and int8 (issue 6) targets as a Markdown table, from the JSON the
commands wrote.

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

# Issue 13's speed targets: (row, goal) with times relative to the original-graph fp32 export
# of the same format on the same engine (bench's "vs original fp32"), batch 1.
RATIO_TARGETS = (("tflite-fp32", 0.87), ("onnx-fp32", 0.72), ("tflite-int8", 0.6))
ONNX_GEMM_TARGET = 0.70  # fast fp32 ONNX, fraction of the 1-core SGEMM rate of the same run
FASTEST_TARGET = 0.45  # the fastest artifact vs the original-graph fp32 TFLite
SIZE_TARGET = 64 * 1024
MAE_MARGIN = 0.15


def _us(row: dict, stat: str = "median") -> float | None:
    stats = row.get("latency", {}).get("1")
    return stats["per_face_us"][stat] if stats else None


def _judged(row: dict, base: dict, goal: float, name: str | None = None) -> list[str]:
    """Measured and verdict of ``row`` over ``base``: the median ratio and the best-call ratio
    of the same run, "met" only when both are within ``goal``. On a shared machine a noisy
    stretch can inflate one backend's median by half (seen: 1,416 us median, 935 us best for
    the original fp32 TFLite, whose median was 961 us an hour earlier); the fastest calls are
    the least disturbed, so a ratio that only the medians meet is not a result."""
    row_median, row_best, base_median, base_best = (_us(r, stat) for r in (row, base)
                                                    for stat in ("median", "min"))
    median, best = row_median / base_median, row_best / base_best
    text = (f"{name + ': ' if name else ''}median {row_median:.0f} us vs {base_median:.0f} us = "
            f"{median:.3f}x; best call {row_best:.0f} vs {base_best:.0f} us = {best:.3f}x")
    return [text, "met" if max(median, best) <= goal else "not met"]


def latency_rows(bench: dict) -> list[list[str]]:
    """Issue 13's speed targets, from one ``ssrconv bench --all EXPORT --all ORIGINAL`` run."""
    ok = [r for r in bench["results"] if r.get("status") == "ok" and r.get("target")
          and r.get("mode") != "predict" and r.get("backend") != "keras"]
    fast = {r["target"]: r for r in ok if r.get("graph") == "fast" and " on " not in r["name"]}
    original = {r["target"]: r for r in ok if r.get("graph") == "original"}
    threads = bench["settings"].get("threads", 1)
    rows = []
    for target, goal in RATIO_TARGETS:
        family = target.split("-")[0]
        row, base = fast.get(target), original.get(f"{family}-fp32")
        label = f"{target} latency, fast graph (batch 1, {threads} thread)"
        want = f"<= {goal}x original-graph {family} fp32"
        if not (row and base):
            rows.append([label, want, "not measured (needs both graphs in one bench run)", "-"])
            continue
        rows.append([label, want, *_judged(row, base, goal)])
    onnx = fast.get("onnx-fp32")
    if onnx and onnx["latency"].get("1"):
        lat = onnx["latency"]["1"]
        best, median = lat.get("fraction_of_core_gemm_best"), lat.get("fraction_of_core_gemm")
        rows.append([f"onnx-fp32 fast graph, share of the 1-core SGEMM rate",
                     f">= {ONNX_GEMM_TARGET:.0%} (best call / best GEMM)",
                     f"best {best:.0%}, median {median:.0%}",
                     "met" if best is not None and best >= ONNX_GEMM_TARGET else "not met"])
    base = original.get("tflite-fp32")
    timed = [r for r in ok if r.get("graph") == "fast" and _us(r)]
    if base and timed:
        fastest = min(timed, key=_us)
        rows.append(["fastest artifact of export --to all (batch 1, by median)",
                     f"<= {FASTEST_TARGET}x original-graph tflite fp32",
                     *_judged(fastest, base, FASTEST_TARGET, fastest["name"])])
    rows += floor_rows(bench, fast, original)
    return rows


def floor_rows(bench: dict, fast: dict, original: dict) -> list[list[str]]:
    """The fastest a float32 file of the fast graph could be here: its multiply-adds (counted on
    the fast fp32 TFLite file, its manifest's ``macs_per_face``) at the best 1-core SGEMM rate
    of the same run, over each original-graph fp32 file's best call (best against best: both
    the least disturbed samples): a bound, below which only fewer or cheaper multiplies go
    (int8 with VNNI, bf16, Winograd)."""
    from ssrconv.artifacts import manifest_path_for

    tflite, gemm = fast.get("tflite-fp32"), bench.get("gemm") or {}
    flops_per_mac = (bench.get("model_cost") or {}).get("flops_per_mac")
    if not (tflite and tflite.get("path") and gemm.get("best_gflops") and flops_per_mac):
        return []
    manifest = manifest_path_for(Path(tflite["path"]))
    macs = json.loads(manifest.read_text()).get("macs_per_face") if manifest.is_file() else None
    if not macs:
        return []
    floor_us = flops_per_mac * macs / (gemm["best_gflops"] * 1e3)
    ratios = {family: floor_us / _us(original[f"{family}-fp32"], "min")
              for family in ("tflite", "onnx") if f"{family}-fp32" in original}
    if not ratios:
        return []
    verdict = (f"{FASTEST_TARGET}x out of reach for float32 kernels here"
               if ratios.get("tflite", 0) > FASTEST_TARGET else "-")
    return [["float32 floor: the fast graph's multiply-adds at the best 1-core SGEMM rate",
             "a bound, not a goal",
             f"{macs / 1e6:.2f} M multiply-adds per face at {gemm['best_gflops']:.1f} GFLOP/s = "
             f"{floor_us:.0f} us = " + ", ".join(f"{r:.2f}x the best original-graph {f} fp32 call"
                                                for f, r in ratios.items()), verdict]]


def parity_rows(label: str, parity: dict) -> list[list[str]]:
    rows = []
    for r in parity["results"]:
        if "int8" not in r["target"] or r["target"].endswith("dynamic"):
            continue
        if r.get("not_run"):  # a pair that cannot run here: not a measurement, not "met"
            continue
        age, gender = r["real"].get("age"), r["real"].get("p_male")
        parts = []
        if age:
            parts.append(f"mean {age['mean_abs']:.2f} y, p99 {age['p99_abs']:.2f} y")
        if gender:
            parts.append(f"gender {gender['agreement']:.1%}")
        rows.append([f"{r['target']} on {r.get('engine') or 'its default engine'} parity, "
                     f"{label} calibration",
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

"""The README's headline table: one row per exported target (file, bytes, parity class, the
measured worst age difference on its default engine, speed), from the JSON the commands wrote.

    python tools/headline_table.py --parity parity.json --bench bench.json > headline.md

Every number is read from ``ssrconv parity --json`` (the first row of each artifact: its
format's default engine) and ``ssrconv bench --json`` (the artifact's own row, batch 1). A
column is one entry of COLUMNS: adding one (e.g. another machine's speed) is one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _bench_row(bench: dict, artifact: str) -> dict | None:
    """The bench row timing ``artifact`` itself (the fast graph's when two exports were timed)."""
    rows = [r for r in bench["results"] if r.get("path") and Path(r["path"]).name == artifact
            and r.get("mode") == "run" and r.get("graph") != "original" and " on " not in r["name"]]
    return rows[0] if rows else None


def _latency(row: dict | None) -> dict | None:
    return (row or {}).get("latency", {}).get("1")


def _speed(row: dict | None) -> str:
    lat = _latency(row)
    if lat is None:
        return (row or {}).get("status", "not timed").replace("-", " ") if row else "-"
    ratio = row["ratios"].get("1", {}).get("time_vs_fastest_fp32")
    return f"{lat['per_face_us']['median']:,.0f} us" + (f" ({ratio:.2f}x)" if ratio else "")


def _worst_age(result: dict) -> str:
    age = (result.get("real") or {}).get("age")
    if result.get("not_run"):
        return "not run"
    if age is None:
        return "-"
    verdict = "pass" if result["passed"] else "FAIL"
    return f"{age['max_abs']:.2g} y ({verdict})"


def _budget_class(result: dict) -> str:
    from ssrconv.targets import TARGETS

    target = TARGETS.get(result["target"])
    return target.budget_class if target else "-"


# (header, cell(parity result, bench row))
COLUMNS = (
    ("target", lambda p, b: f"`{p['target']}`"),
    ("file", lambda p, b: f"`{p['artifact']}`"),
    ("bytes", lambda p, b: f"{b['size']['file_bytes']:,}" if b and b.get("size") else "-"),
    ("parity class", lambda p, b: _budget_class(p)),
    ("worst age diff (default engine)", lambda p, b: _worst_age(p)),
    ("median per face, 1 thread (x fastest fp32)", lambda p, b: _speed(b)),
)


def headline(parity: dict, bench: dict) -> str:
    """The Markdown table, rows in the parity report's order, one per artifact."""
    from ssrconv.targets import TARGETS

    order = list(TARGETS)
    seen, rows = set(), []
    results = sorted(parity["results"],
                     key=lambda r: order.index(r["target"]) if r["target"] in order else len(order))
    for result in results:
        if result["artifact"] in seen:  # later rows: the same file on other engines
            continue
        seen.add(result["artifact"])
        row = _bench_row(bench, result["artifact"])
        rows.append([cell(result, row) for _, cell in COLUMNS])
    header = [name for name, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parity", type=Path, required=True)
    parser.add_argument("--bench", type=Path, required=True)
    args = parser.parse_args()
    print(headline(json.loads(args.parity.read_text()), json.loads(args.bench.read_text())), end="")


if __name__ == "__main__":
    main()

"""The last screen of `make demo`: what was written, the parity verdict, the fastest artifact,
where the outputs are and what to try next, read from the files the demo's commands wrote.

    python tools/demo_summary.py OUT_DIR [--started EPOCH_SECONDS]

OUT_DIR holds the export (index.json), parity.json and bench.json; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _per_face_us(row: dict) -> float | None:
    """The median time per face at the smallest batch the row was timed at."""
    if not row.get("latency"):
        return None
    batch = min(row["latency"], key=int)
    return row["latency"][batch]["per_face_us"]["median"]


def summary(out: Path, started: float | None = None) -> str:
    """The summary lines for the demo's output directory ``out``."""
    index = json.loads((out / "index.json").read_text())["artifacts"]
    parity = json.loads((out / "parity.json").read_text())
    bench = json.loads((out / "bench.json").read_text())

    lines = ["", "== ssrconv demo: summary" + (f" ({(time.time() - started) / 60:.1f} min)"
                                              if started else "")]
    total = sum(a["bytes"] or 0 for a in index)
    lines.append(f"artifacts written: {len(index)} in {out}/ ({total / 1e6:.1f} MB; each with a "
                 "manifest <file>.json, listed in index.json)")

    results = parity["results"]
    ran = [r for r in results if not r.get("not_run")]
    passed = [r for r in ran if r["passed"]]
    worst = {}
    for r in passed:
        age = (r.get("real") or {}).get("age")
        if age is not None:
            worst[r["artifact"]] = age["max_abs"]
    verdict = "PASS" if parity["passed"] and len(passed) == len(ran) else "FAIL"
    lines.append(f"parity: {verdict}: {len(passed)} of {len(ran)} checks within budget on "
                 f"{max((r['faces'] for r in ran), default=0)} real faces"
                 + (f", {len(results) - len(ran)} not run" if len(results) > len(ran) else "")
                 + (f"; largest age difference {max(worst.values()):.2g} y ({max(worst, key=worst.get)})"
                    if worst else ""))

    timed = [r for r in bench["results"] if r.get("status") == "ok"
             and r["backend"] not in ("keras", "reference") and _per_face_us(r) is not None]
    reference = [r for r in bench["results"] if r.get("mode") == "predict" and _per_face_us(r)]
    if timed:
        fastest = min(timed, key=_per_face_us)
        us = _per_face_us(fastest)
        versus = (f", {_per_face_us(reference[0]) / us:,.0f}x faster than Keras model.predict"
                  if reference else "")
        lines.append(f"fastest artifact: {fastest['name']} on {fastest['engine']}, {us:,.0f} us "
                     f"per face{versus}")
    outputs = [p.name for p in sorted(out.iterdir())
               if p.name.startswith(("parity.", "bench.")) and p.is_file()]
    lines.append(f"outputs: {out}/ ({', '.join(outputs)})")
    example = next((a["file"] for a in index if a["file"].endswith("_int8.tflite")), index[0]["file"])
    lines += [
        "next:",
        f"  .venv/bin/ssrconv predict YOUR_PHOTO.jpg --model {out}/{example} --out annotated/",
        f"  .venv/bin/ssrconv parity {out} --faces YOUR_FACES_DIR   # your own faces decide",
        "  .venv/bin/ssrconv export --help                           # one target, your weights",
        "  README.md (the four jobs), docs/RESULTS.md (every measured table)",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--started", type=float, default=None,
                        help="when the demo started (seconds since the epoch), for its duration")
    args = parser.parse_args()
    print(summary(args.out, args.started), end="")


if __name__ == "__main__":
    main()

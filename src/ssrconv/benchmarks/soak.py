"""Soak: many inferences per backend in one process, resident memory sampled as it goes.

    python -m ssrconv.benchmarks.soak EXPORT_DIR [--n 100000] [--json OUT]

Each artifact (plus the Keras reference with ``--keras``) runs in its own process (so one
backend's leak or crash is its own); the report gives RSS after warm-up, at the end, and the
growth (target: < 5 MB). A benchmark script, not a unit test: 100,000 calls take minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ssrconv.targets import REFERENCE_BACKEND

WARMUP = 1000
SAMPLES = 20


def current_rss_bytes() -> int:
    """Resident set size now (not the peak), from /proc; 0 where /proc is unavailable."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def settled_rss_bytes() -> int:
    """Resident set size after a garbage collection and glibc's ``malloc_trim(0)``, so freed
    but cached heap (a large decoded image a moment ago) is not read as growth; where there
    is no glibc, plain :func:`current_rss_bytes`."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return current_rss_bytes()


def soak_one(path: str | None, n: int, backend: str | None = None) -> dict:
    """Run ``n`` batch-1 inferences on one runtime in this process; RSS samples along the way."""
    from ssrconv.loading import load_runtime

    runtime = load_runtime(path, backend=backend)
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(0, 255, (1, 64, 64, 3)).astype(np.float32) for _ in range(16)]
    for i in range(min(WARMUP, n)):
        runtime.run(inputs[i % 16])
    after_warmup = current_rss_bytes()
    samples = []
    started = time.perf_counter()
    step = max(1, n // SAMPLES)
    for i in range(n):
        runtime.run(inputs[i % 16])
        if i % step == 0:
            samples.append(current_rss_bytes())
    end = current_rss_bytes()
    return {"artifact": path or "keras", "engine": runtime.engine, "calls": n,
            "seconds": round(time.perf_counter() - started, 2),
            "rss_after_warmup_mb": round(after_warmup / 2**20, 2), "rss_end_mb": round(end / 2**20, 2),
            "growth_mb": round((end - after_warmup) / 2**20, 2),
            "rss_samples_mb": [round(s / 2**20, 2) for s in samples]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", nargs="?", type=Path)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--keras", action="store_true", help="also soak the Keras reference")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # worker mode: one artifact
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.one is not None or args.backend:
        print(json.dumps(soak_one(args.one or None, args.n, args.backend)))
        return 0
    from ssrconv.artifacts import open_all

    artifacts = open_all(args.export_dir)
    # An engine whose speed here says nothing about the deployed runtime (CoreML's numpy MIL
    # interpreter off macOS, ~0.1 s a call) says nothing about its memory either: skipped.
    for artifact in artifacts:
        reason = artifact.format.engine.why_not_timed()
        if reason:
            print(f"soak: skipping {artifact.label} ({reason})", file=sys.stderr)
    jobs = [(["--one", str(a.path)], a.label) for a in artifacts
            if a.format.engine.why_not_timed() is None]
    if args.keras:
        jobs.insert(0, (["--one", "", "--backend", REFERENCE_BACKEND], REFERENCE_BACKEND))
    results = []
    for extra, label in jobs:
        print(f"soak: {label}: {args.n:,} calls ...", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, "-m", "ssrconv.benchmarks.soak", "--n", str(args.n),
                               *extra], capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            results.append({"artifact": label, "failed": f"exit {done.returncode}: {tail}"})
        else:
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"  {label}: " + (r.get("failed") or f"RSS {r['rss_after_warmup_mb']} -> {r['rss_end_mb']} MB "
                                f"(growth {r['growth_mb']} MB) in {r['seconds']} s"), file=sys.stderr)
    print("| artifact | engine | calls | RSS after warm-up (MB) | RSS at end (MB) | growth (MB) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if "failed" in r:
            print(f"| {r['artifact']} | - | - | - | - | FAILED: {r['failed']} |")
        else:
            print(f"| {Path(r['artifact']).name} | {r['engine']} | {r['calls']:,} | "
                  f"{r['rss_after_warmup_mb']} | {r['rss_end_mb']} | {r['growth_mb']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any("failed" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

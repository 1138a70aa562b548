"""Where the suite's CPU goes (measurement, opt-in): with ``SSRCONV_CPUTIME_DIR`` set, every
test phase (setup, call, teardown) appends one JSON line to ``<dir>/<worker>.jsonl``
(``gw0``, ``gw1``... under pytest-xdist, ``serial`` otherwise): the test id, the phase, its wall
start and duration, and the CPU seconds of the worker itself (``self``, all its threads) and of
the child processes it reaped meanwhile (``children``: converters' tools, QEMU workers,
subprocess CLIs). A session fixture's cost lands on the phase of the first test that asked for
it. ``python tests/cputime.py DIR`` sums the lines by test and module and prints each worker's
span. Registered by tests/conftest.py only when the variable is set."""

from __future__ import annotations

import collections
import glob
import json
import os
import resource
import sys
import time

import pytest


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, reaped.ru_utime + reaped.ru_stime


class CpuTimes:
    """The pytest plugin: one JSON line per test phase."""

    def __init__(self, directory: str):
        self.directory = directory
        self.out = None  # opened by the first test: xdist's controller runs none

    def _measure(self, item, phase):
        start, (own, reaped) = time.time(), _cpu()
        yield
        own_now, reaped_now = _cpu()
        if self.out is None:
            os.makedirs(self.directory, exist_ok=True)
            worker = os.environ.get("PYTEST_XDIST_WORKER", "serial")
            self.out = open(os.path.join(self.directory, f"{worker}.jsonl"), "a")
        self.out.write(json.dumps({"id": item.nodeid, "phase": phase, "start": start,
                                   "wall": time.time() - start, "self": own_now - own,
                                   "children": reaped_now - reaped}) + "\n")
        self.out.flush()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item):
        yield from self._measure(item, "setup")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        yield from self._measure(item, "call")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item, nextitem):
        yield from self._measure(item, "teardown")


def report(directory: str, top: int = 30) -> None:
    """Print the totals of ``directory``'s lines: per worker, per test, per module."""
    tests, modules = collections.Counter(), collections.Counter()
    for path in sorted(glob.glob(os.path.join(directory, "*.jsonl"))):
        rows = [json.loads(line) for line in open(path)]
        if not rows:
            continue
        cpu = sum(r["self"] + r["children"] for r in rows)
        first, last = min(r["start"] for r in rows), max(r["start"] + r["wall"] for r in rows)
        calls = sum(r["phase"] == "call" for r in rows)
        print(f"{os.path.basename(path)[:-6]}: {calls} tests, {cpu:.0f} CPU-s, "
              f"span {last - first:.0f} s (from {first:.0f} to {last:.0f})")
        for r in rows:
            tests[r["id"]] += r["self"] + r["children"]
            modules[r["id"].split("::")[0]] += r["self"] + r["children"]
    print(f"total {sum(tests.values()):.0f} CPU-s")
    for name, cpu in tests.most_common(top):
        print(f"  {cpu:7.1f}  {name}")
    print("by module:")
    for name, cpu in modules.most_common():
        print(f"  {cpu:7.1f}  {name}")


if __name__ == "__main__":
    report(sys.argv[1], *map(int, sys.argv[2:3]))

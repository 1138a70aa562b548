"""Running a converter's external tool (pnnx, MNN's converter, tf2onnx's command line, Vela) in
a child process: one timeout, one error line with the tool's last word on failure."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from ssrconv.errors import ConverterError, clip


def run_tool(command: list[str], what: str, timeout_s: float, *, cwd: Path | None = None,
             env: dict[str, str] | None = None, produced: Callable[[], bool] | None = None,
             says: Callable[[str], bool] | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` (text output captured) and return it; ConverterError naming ``what`` when
    it does not finish in ``timeout_s``, exits non-zero, or ``produced()`` is false after it
    (its output files are missing). The message quotes the last line of its output, or the
    last line ``says`` accepts (a tool that prints its error among progress lines)."""
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ConverterError(f"{what} did not finish in {timeout_s:g} s") from None
    if done.returncode != 0 or (produced is not None and not produced()):
        lines = (done.stdout + "\n" + done.stderr).strip().splitlines() if says else \
            (done.stderr or done.stdout).strip().splitlines()
        lines = [line for line in lines if says(line)] if says else lines
        raise ConverterError(f"{what} failed (exit {done.returncode}): "
                             f"{clip((lines or ['no output'])[-1])}")
    return done

"""Worker processes and their IPC: one ``python -m ssrconv.benchmarks.worker`` per row group,
JSON lines on its stdin/stdout, with timeouts, post-mortems and the environment it starts with."""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from ssrconv.benchmarks.kinds import row_kind
from ssrconv.errors import clip

_WORKER_NUMBERS = itertools.count(1)


class WorkerFailed(Exception):
    """A worker answered with an error, died, or did not answer in time."""


class WorkerHandle:
    """One worker process and its JSON-lines channel, with timeouts and post-mortems."""

    def __init__(self, label: str, env: dict[str, str], log_dir: Path):
        self.label = label
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)
        self.stderr_path = log_dir / f"worker-{next(_WORKER_NUMBERS)}-{safe}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "ssrconv.benchmarks.worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=env)
        self._buffer = b""
        self.dead: str | None = None

    def request(self, payload: dict, timeout: float) -> dict:
        """Send one command and wait for its answer; WorkerFailed on error, death or timeout."""
        if self.dead:
            raise WorkerFailed(self.dead)
        try:
            self.proc.stdin.write((json.dumps(payload) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerFailed(self._fail(self._death())) from None
        line = self._readline(timeout)
        try:
            reply = json.loads(line)
        except ValueError:
            raise WorkerFailed(self._fail(f"unreadable answer {clip(line, 80)!r}")) from None
        if not reply.get("ok"):
            raise WorkerFailed(self._fail(reply.get("error") or "unknown error"))
        return reply

    def _readline(self, timeout: float) -> str:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerFailed(self._fail(f"no answer within {timeout:.0f} s (worker killed)"))
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise WorkerFailed(self._fail(self._death()))
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def _fail(self, message: str) -> str:
        self.dead = message
        return message

    def _death(self) -> str:
        """Why the worker went away: its exit signal or code, and its last stderr line."""
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.wait()
        if code < 0:
            try:
                why = f"worker killed by signal {signal.Signals(-code).name}"
            except ValueError:
                why = f"worker killed by signal {-code}"
        else:
            why = f"worker exited with code {code}"
        last = self.last_stderr_line()
        return f"{why} ({last})" if last else why

    def last_stderr_line(self) -> str | None:
        """The last non-empty line the worker wrote to stderr (e.g. "free(): double free")."""
        try:
            self._stderr.flush()
            lines = [ln.strip() for ln in self.stderr_path.read_text(errors="replace").splitlines()]
        except OSError:
            return None
        lines = [ln for ln in lines if ln]
        return clip(lines[-1]) if lines else None

    def close(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit; kill it if it does not."""
        if self.proc.poll() is None and not self.dead:
            try:
                self.request({"cmd": "exit"}, timeout)
            except WorkerFailed:
                pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._cleanup()

    def kill(self) -> None:
        """Kill this worker (only this process: it was started by us, by its pid)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _cleanup(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._stderr.close()


def worker_env(backend: str, threads: int) -> dict[str, str]:
    """The environment of one worker: the parent's, plus thread caps where a library reads them
    from the environment. OPENBLAS_CORETYPE and the like are passed through untouched."""
    import ssrconv

    env = dict(os.environ)
    src = str(Path(ssrconv.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    kind = row_kind(backend)
    if kind is not None and kind.tensorflow:
        # Read by TensorFlow when its runtime starts; the worker also sets tf.config.threading.
        env["TF_NUM_INTRAOP_THREADS"] = str(threads)
        env["TF_NUM_INTEROP_THREADS"] = "1"
    # BLAS threads where BLAS is the backend: the numpy reference's matrix products get the
    # row's threads; the GEMM measuring the machine's single-core rate is pinned to one.
    if kind is not None and kind.blas_threads is not None:
        blas_threads = threads if kind.blas_threads == "row" else 1
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(blas_threads)
    return env

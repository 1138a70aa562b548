"""Artifacts run on another platform's CPU kernels: a worker process in the emulated arm64
root filesystem (:mod:`ssrconv.platforms`), driven from this process.

The host starts ``chroot ROOT /venv/bin/python -m ssrconv.platform_worker`` (QEMU runs it
through binfmt_misc; :func:`ssrconv.platforms.chroot_command` gives it the host's ``/sys``)
with this very ssrconv package copied into a session directory under ``ROOT/tmp`` (the worker
runs the caller's code, not whatever ssrconv the root filesystem was built with; the root
filesystem provides Python and the runtimes' aarch64 wheels). Requests are JSON lines on the
worker's stdin, answers JSON lines on its stdout (the worker moves everything else a library
prints to its log); face batches and outputs travel as ``.npy``/``.npz`` files
in the session directory. :class:`RemoteRuntime` is a :class:`Runtime` like any other, so
parity measures remote rows with the same code and budgets as host rows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ssrconv.atomic import track
from ssrconv.errors import SsrconvError
from ssrconv.platforms import chroot_command
from ssrconv.runtimes.base import Runtime

_START_TIMEOUT_S = 300  # an emulated Python importing numpy takes seconds, not minutes


class RemoteError(SsrconvError):
    """The worker on another platform failed or answered with an error."""


def _die_with_parent() -> None:
    """In the worker's process before exec: SIGKILL when this process ends (a signal ends
    ssrconv with os._exit, which runs no cleanup; the emulated worker must not live on)."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Worker:
    """One worker process on an emulated ``platform`` (see :func:`ssrconv.platforms.resolve`).
    A context manager: closing ends the process and removes the session directory. ``info``
    holds what the worker reported about its machine (``platform.machine()``, CPU features);
    a worker that does not report the platform's machine is refused (an arm64 row must never
    be computed on x86)."""

    def __init__(self, platform):
        if not platform.emulated:
            raise RemoteError(f"{platform.name} runs in this process, not in a worker")
        self.platform = platform
        self.root = Path(platform.root)
        (self.root / "tmp").mkdir(exist_ok=True)
        # tracked: an interrupted command removes it too (ssrconv.atomic.remove_tracked)
        self.session = track(Path(tempfile.mkdtemp(prefix="ssrconv-", dir=self.root / "tmp")))
        self._files = 0
        self.process = None
        try:
            shutil.copytree(Path(__file__).resolve().parents[1], self.session / "src" / "ssrconv",
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            self.log_path = self.session / "worker.log"
            env = {"PATH": "/venv/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
                   "PYTHONPATH": self.inside(self.session / "src"),
                   "PYTHONDONTWRITEBYTECODE": "1",
                   # OpenVINO's ARM plugin (oneDNN) otherwise writes /tmp/perf-<pid>.map, one
                   # per worker, left behind in the root filesystem
                   "ONEDNN_JIT_PROFILE": "0"}
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    [*chroot_command(self.root), "/venv/bin/python", "-m",
                     "ssrconv.platform_worker"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, text=True,
                    preexec_fn=_die_with_parent)
            hello = self.request({"op": "hello"})
        except BaseException:
            self.close()
            raise
        self.info, self.engines, self.versions = hello["info"], hello["engines"], hello["versions"]
        if self.info.get("machine") != platform.machine:
            machine = self.info.get("machine")
            self.close()
            raise RemoteError(f"the {platform.name} worker reports machine {machine!r}, not "
                              f"{platform.machine}: {self.root} does not run under emulation; "
                              "rebuild it with make arm64")

    def inside(self, path: Path) -> str:
        """``path`` (under the root filesystem) as the worker sees it."""
        return "/" + str(Path(path).relative_to(self.root))

    def scratch(self, suffix: str) -> Path:
        """A fresh file name in the session directory."""
        self._files += 1
        return self.session / f"{self._files}{suffix}"

    def _log_tail(self) -> str:
        try:
            lines = [x for x in self.log_path.read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    def request(self, message: dict) -> dict:
        """Send one request, return its answer; RemoteError with the worker's message."""
        process = self.process
        if process is None or process.poll() is not None:
            raise RemoteError(f"the {self.platform.name} worker is not running: {self._log_tail()}")
        try:
            process.stdin.write(json.dumps(message) + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            raise RemoteError(f"the {self.platform.name} worker died during {message['op']}: "
                              f"{self._log_tail() or 'no message'}")
        answer = json.loads(line)
        if "error" in answer:
            raise RemoteError(f"on {self.platform.name}: {answer['error']}")
        return answer

    def runtime(self, path: Path, engine: str | None = None) -> "RemoteRuntime":
        """Load the artifact ``path`` on ``engine`` (None: its format's default) in the worker:
        the artifact and its manifest are copied into the session, and the worker opens and
        verifies them as this process does (ssrconv.artifacts.open_artifact)."""
        path = Path(path)
        copy = self.scratch("") / path.name
        copy.parent.mkdir()
        if path.is_dir():
            shutil.copytree(path, copy)
        else:
            shutil.copy2(path, copy)
        manifest = path.with_name(path.name + ".json")  # artifacts.manifest_path_for
        if manifest.is_file():
            shutil.copy2(manifest, copy.with_name(manifest.name))
        answer = self.request({"op": "load", "path": self.inside(copy), "engine": engine})
        return RemoteRuntime(self, answer, path)

    def close(self) -> None:
        """End the worker and remove the session directory; idempotent."""
        process, self.process = self.process, None
        if process is not None:
            try:
                if process.poll() is None:
                    process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                    process.stdin.flush()
                process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                process.kill()
                process.wait()
        shutil.rmtree(self.session, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RemoteRuntime(Runtime):
    """An artifact loaded in a :class:`Worker`: runs there, answers here."""

    def __init__(self, worker: Worker, loaded: dict, path: Path):
        self.worker = worker
        self.handle = loaded["id"]
        self.path = path
        self.engine = loaded["engine"]
        self.stage_engine = loaded["stage_engine"]
        self.heads = tuple(loaded["heads"])
        self.remote_description = loaded["describe"]
        self.platform = worker.platform

    def _call(self, op: str, batch: np.ndarray, **extra) -> dict[str, np.ndarray]:
        batch = self.check_batch(batch)
        source = self.worker.scratch(".npy")
        np.save(source, batch)
        try:
            answer = self.worker.request({"op": op, "id": self.handle,
                                          "input": self.worker.inside(source), **extra})
            result = self.worker.root / answer["output"].lstrip("/")
            with np.load(result, allow_pickle=False) as data:
                out = {key: data[key] for key in data.files}
            result.unlink()
        finally:
            source.unlink(missing_ok=True)
        return out

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._call("run", batch)

    def stage_outputs(self, batch: np.ndarray, specs) -> dict[str, np.ndarray]:
        from ssrconv.stages import StagesUnavailable

        try:
            return self._call("stages", batch, keys=[s.key for s in specs])
        except RemoteError as err:
            if "StagesUnavailable" in str(err):
                raise StagesUnavailable(str(err).split("StagesUnavailable: ", 1)[-1]) from None
            raise

    def close(self) -> None:
        if self.handle is not None and self.worker.process is not None:
            self.worker.request({"op": "unload", "id": self.handle})
        self.handle = None

    def describe(self) -> dict:
        return {**self.remote_description, "path": str(self.path),
                "platform": self.platform.name, "emulated": self.platform.emulated}

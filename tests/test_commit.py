"""The commit protocol (docs/READ_PATH.md): signals deferred for the whole process, SIGKILL at
every step detected by the verifying readers, packages replaced without a missing moment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ssrconv.artifacts import artifact_digest, discover, read_index
from ssrconv.atomic import exchange, place, write_atomic
from ssrconv.errors import IntegrityError

# A child that commits one fake .onnx artifact (bytes b"new...") over an old one, optionally
# with TensorFlow's thread pools busy, with the CLI's signal handlers installed.
COMMIT_CHILD = r"""
import sys, threading
from pathlib import Path
from ssrconv.artifacts import artifact_digest
from ssrconv.exporter import _commit
import ssrconv.cli as cli
import signal
signal.signal(signal.SIGTERM, cli.end_on_signal)
signal.signal(signal.SIGINT, cli.end_on_signal)
out = Path(sys.argv[1])
if sys.argv[2] == "tf":
    from ssrconv._imports import tensorflow
    tf = tensorflow()
    x = tf.random.uniform((256, 256))
    def spin():
        for _ in range(100000):
            tf.linalg.matmul(x, x)
    threading.Thread(target=spin, daemon=True).start()
tmp = out / ".m.part.onnx"
tmp.write_bytes(Path(sys.argv[3]).read_bytes())
size, sha = artifact_digest(tmp)
# a deferred signal is delivered to end_on_signal as the commit ends: exit 130 from in there
_commit(out, tmp, out / "m.onnx", {"schema": "ssrconv.artifact/1", "target": "onnx-fp32",
        "task": "age", "file": "m.onnx", "bytes": size, "sha256": sha})
print("committed", flush=True)
"""


def _tiny_onnx(value: float) -> bytes:
    """A valid one-node ONNX model (the verifier runs onnx.checker), distinct per ``value``."""
    from onnx import TensorProto, helper

    node = helper.make_node("Constant", [], ["age"], value=helper.make_tensor(
        "v", TensorProto.FLOAT, [1], [value]))
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("age", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


OLD, NEW = _tiny_onnx(1.0), _tiny_onnx(2.0)


def _old_state(out: Path) -> tuple[int, str]:
    """An export directory holding m.onnx (the OLD model) with its manifest and index."""
    from ssrconv.exporter import _commit

    out.mkdir()
    tmp = out / ".seed.onnx"
    tmp.write_bytes(OLD)
    size, sha = artifact_digest(tmp)
    _commit(out, tmp, out / "m.onnx", {"schema": "ssrconv.artifact/1", "target": "onnx-fp32",
                                       "task": "age", "file": "m.onnx", "bytes": size, "sha256": sha})
    return size, sha


def _start(out: Path, mode: str, pause: str) -> subprocess.Popen:
    env = dict(os.environ, SSRCONV_TEST_COMMIT_PAUSE=pause)
    new = out.parent / "new.onnx"
    new.write_bytes(NEW)
    return subprocess.Popen([sys.executable, "-c", COMMIT_CHILD, str(out), mode, str(new)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_pause(proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "test pause at commit step" in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"child ended before pausing: {proc.returncode}")
    raise AssertionError("child never reached the pause")


def _state(out: Path) -> str:
    """'old', 'new', or 'torn:<reason>' as the verifying read path sees the directory."""
    found = discover(out)
    try:
        (artifact,) = [f.open() for f in found]
    except IntegrityError as err:
        return f"torn:{err}"
    return {OLD: "old", NEW: "new"}[artifact.path.read_bytes()]


@pytest.mark.slow
def test_sigterm_inside_the_renames_with_tensorflow_threads_alive(tmp_path):
    """A process-directed SIGTERM while the commit sleeps between its renames (TensorFlow's
    pool threads running, so the kernel may hand the signal to any of them): the commit
    completes (all three renames), then the interrupt is delivered (exit 130). Before the
    handlers were swapped process-wide, the handler could run between the renames."""
    out = tmp_path / "out"
    _old_state(out)
    proc = _start(out, "tf", "model=2")
    _wait_for_pause(proc)
    os.kill(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "ssrconv: error: interrupted" in stderr
    assert "committed" not in stdout
    assert _state(out) == "new"  # model, manifest and index all renamed before the interrupt
    entries = read_index(out)
    assert entries[0]["sha256"] == artifact_digest(out / "m.onnx")[1]


@pytest.mark.parametrize("step,expected", [("model", "torn"), ("manifest", "torn"), ("index", "new")])
def test_sigkill_at_each_step_is_old_new_or_reported(tmp_path, step, expected):
    """SIGKILL (no handler runs) at each step of the commit: the directory holds the old or the
    new artifact bytes, and a torn state (model without its manifest, manifest not in the index)
    is reported by the read path, never trusted."""
    out = tmp_path / "out"
    _old_state(out)
    proc = _start(out, "plain", f"{step}=30")
    _wait_for_pause(proc)
    proc.kill()
    proc.wait(timeout=30)
    assert (out / "m.onnx").read_bytes() in (OLD, NEW)
    state = _state(out)
    assert state.startswith(expected), state
    if expected == "torn":
        assert "interrupted export" in state


def test_package_replacement_never_leaves_the_destination_missing(tmp_path):
    """Replacing a directory package (like an .mlpackage) 40 times while two readers look at it
    continuously: the destination and its files always exist, and hold one version whole."""
    final = tmp_path / "m.mlpackage"
    final.mkdir()
    (final / "Manifest.json").write_text("0")
    (final / "weights.bin").write_text("0")
    if sys.platform.startswith("linux"):  # the atomic exchange is what this test relies on
        other = tmp_path / "other"
        other.mkdir()
        assert exchange(other, final) and (other / "Manifest.json").exists()
        assert exchange(other, final) and not (other / "Manifest.json").exists()
        other.rmdir()
    stop = threading.Event()
    seen: list[str] = []

    def read():
        while not stop.is_set():
            try:
                a = (final / "Manifest.json").read_text()
                b = (final / "weights.bin").read_text()
            except FileNotFoundError as err:
                seen.append(f"missing: {err.filename}")
                continue
            if a != b:  # two files of one package from different versions: not seen with exchange
                seen.append(f"mixed {a} {b}")

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    try:
        for version in range(1, 41):
            tmp = tmp_path / f".m.{version}.part.mlpackage"
            tmp.mkdir()
            (tmp / "Manifest.json").write_text(str(version))
            (tmp / "weights.bin").write_text(str(version))
            place(tmp, final)
            assert not tmp.exists()
    finally:
        stop.set()
        for r in readers:
            r.join()
    assert [s for s in seen if s.startswith("missing")] == []
    assert (final / "Manifest.json").read_text() == "40"


def test_write_atomic_leaves_nothing_half_written_and_uses_the_umask_mode(tmp_path):
    target = tmp_path / "report.json"
    write_atomic(target, json.dumps({"a": 1}))
    assert json.loads(target.read_text()) == {"a": 1}
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_remove_tracked_removes_what_is_unfinished_and_only_that(tmp_path):
    """What the signal handler removes: temporaries still present (a file, a package
    directory, a scratch directory), a created directory only while empty; never a temporary's
    destination after the rename, nor anything untracked."""
    from ssrconv import atomic

    kept = tmp_path / "kept.onnx"
    renamed = atomic.temp_path(kept)
    renamed.write_bytes(b"done")
    atomic.place(renamed, kept)
    unfinished = atomic.temp_path(tmp_path / "m.onnx", ".part.onnx")
    unfinished.write_bytes(b"half")
    package = atomic.temp_path(tmp_path / "m.mlpackage", ".part.mlpackage")
    (package / "Data").mkdir(parents=True)
    created, busy = tmp_path / "created", tmp_path / "busy"
    created.mkdir()
    busy.mkdir()
    (busy / "user.txt").write_text("theirs")
    atomic.track_created_dir(created)
    atomic.track_created_dir(busy)
    with atomic.scratch_dir("ssrconv-test-") as scratch:
        (scratch / "work").write_bytes(b"x")
        atomic.remove_tracked()
        assert not scratch.exists()
    assert not unfinished.exists() and not package.exists() and not created.exists()
    assert kept.read_bytes() == b"done" and (busy / "user.txt").exists()

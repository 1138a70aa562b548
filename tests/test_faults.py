"""Faults during export: signals, a read-only directory, a full disk, a concurrent export.

Each leaves the output directory exactly as it was (or, for two exports at once, holding two
complete exports' worth of consistent artifacts), with one error line and a non-zero exit.
The read-only and full-disk cases run twice: on a real tmpfs where this process may mount one
(root with CAP_SYS_ADMIN), else on the injected variant; and always with the OSError injected
at the exporter's write layer, so the code path is tested on every machine.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def snapshot(directory: Path) -> dict[str, str]:
    """Every entry under ``directory`` (hidden ones too) -> sha256 of its bytes, or '<dir>'."""
    out = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        out[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def export_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ssrconv.cli", "export", "--to", "onnx", "--task", "age",
            "--out", str(out), *extra]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ssrconv: error:")]


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """Mount a tmpfs on ``path``; yields False (nothing mounted) where mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "ssrconv-test", str(path)],
                              capture_output=True, timeout=30)
        mounted = done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        mounted = False
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], capture_output=True, timeout=30)


# -- signals -----------------------------------------------------------------------------

# Where the signal lands: inside the export-time exactness check (Keras predicting), or inside
# tf2onnx's conversion (the line after the check was printed). Both are TensorFlow's Python layer.
PHASES = {"keras-check": ("converting", 0.3), "tf2onnx": ("exact on", 0.05)}


@pytest.mark.parametrize("signum,phase", [(signal.SIGTERM, "keras-check"), (signal.SIGINT, "keras-check"),
                                          (signal.SIGTERM, "tf2onnx")],
                         ids=["SIGTERM-keras", "SIGINT-keras", "SIGTERM-tf2onnx"])
def test_signal_mid_conversion_leaves_directory_as_it_was(signum, phase, tmp_path, assets_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier file")
    before = snapshot(out)
    marker, delay = PHASES[phase]
    with open(tmp_path / "stderr", "w+") as err:
        proc = subprocess.Popen(export_cmd(out), stdout=subprocess.DEVNULL, stderr=err, text=True)
        deadline = time.monotonic() + 300
        while marker not in Path(err.name).read_text():
            assert proc.poll() is None and time.monotonic() < deadline, Path(err.name).read_text()
            time.sleep(0.02)
        time.sleep(delay)
        assert proc.poll() is None, "the export finished before the signal: test proves nothing"
        proc.send_signal(signum)
        code = proc.wait(timeout=120)
        stderr = Path(err.name).read_text()
    assert code == 130, stderr
    assert error_lines(stderr) == ["ssrconv: error: interrupted"], stderr
    assert "Traceback" not in stderr
    assert snapshot(out) == before


# A child whose converter signals the process from inside a library call, holding a half-written
# model and a scratch directory, with a finally block that must not run.
INSIDE_A_LIBRARY = r"""
import os, signal, sys, time
from pathlib import Path
from ssrconv.atomic import scratch_dir
from ssrconv.cli import main
from ssrconv.converters import onnx as onnx_converter

def inside_a_library(model, target, opts, dest, *rest):
    dest.write_bytes(b"half a model")
    with scratch_dir("ssrconv-test-scratch-") as scratch:
        (scratch / "work.onnx").write_bytes(b"scratch")
        Path(sys.argv[2]).write_text(str(scratch))
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)
        finally:
            print("unwound", flush=True)

onnx_converter.convert = inside_a_library
main(["export", "--to", "onnx", "--task", "age", "--out", sys.argv[1]])
"""


@pytest.mark.parametrize("existing", [True, False], ids=["existing-out", "new-out"])
def test_signal_ends_the_command_without_unwinding(existing, tmp_path, assets_dir):
    """The handler removes what the command left unfinished (the .part model, the converter's
    scratch directory, an --out the export created) and exits 130 without unwinding: nothing of
    the library runs after the signal (unwinding through TensorFlow corrupted its heap in CI;
    docs/READ_PATH.md, "Signals")."""
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("an earlier file")
    before = snapshot(out) if existing else None
    record = tmp_path / "scratch-path"
    done = subprocess.run([sys.executable, "-c", INSIDE_A_LIBRARY, str(out), str(record)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert "unwound" not in done.stdout
    assert error_lines(done.stderr) == ["ssrconv: error: interrupted"], done.stderr
    assert "Traceback" not in done.stderr
    scratch = Path(record.read_text())
    assert scratch.name.startswith("ssrconv-test-scratch-") and not scratch.exists()
    if existing:
        assert snapshot(out) == before
    else:
        assert not out.exists()


# -- read-only directory and full disk ---------------------------------------------------

def _run_cli_injected(monkeypatch, cli, out: Path, where: str, code: int) -> tuple[int, str]:
    """Run ``ssrconv export`` in-process with OSError(code) raised at the write layer:
    ``where`` = "check" (the writability probe), "model" (the converter writing the model)
    or "manifest" (the exporter's JSON writes)."""
    from ssrconv import exporter, options
    from ssrconv.converters import onnx as onnx_converter

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(out / ".injected"))

    if where == "check":
        monkeypatch.setattr(options.tempfile, "NamedTemporaryFile", fail)
    elif where == "model":
        def half_then_fail(model, target, opts, dest, *rest):
            dest.write_bytes(b"half a model")
            fail()

        monkeypatch.setattr(onnx_converter, "convert", half_then_fail)
    else:
        monkeypatch.setattr(exporter, "write_temp", fail)
    result = cli("export", "--to", "onnx", "--task", "age", "--out", out)
    return result.returncode, result.stderr


@pytest.mark.parametrize("where", ["check", "model", "manifest"])
@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["EROFS", "ENOSPC"])
def test_injected_write_failure_one_line_nothing_written(where, code, tmp_path, assets_dir,
                                                         monkeypatch, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier file")
    before = snapshot(out)
    exit_code, stderr = _run_cli_injected(monkeypatch, cli, out, where, code)
    assert exit_code not in (0, None)
    lines = error_lines(stderr)
    assert len(lines) == 1 and os.strerror(code) in lines[0], stderr
    assert "unexpected" not in lines[0]  # a handled error, not the CLI's catch-all
    assert "Traceback" not in stderr
    assert snapshot(out) == before


@pytest.mark.parametrize("case", ["read-only", "full"])
def test_real_read_only_and_full_tmpfs(case, tmp_path, assets_dir, monkeypatch, cli):
    """A real tmpfs (read-only, or 150 kB: smaller than the 200 kB model) where mountable;
    elsewhere the same failure injected, so the test never skips."""
    mount = tmp_path / "mnt"
    options = "size=150k,ro" if case == "read-only" else "size=150k"
    code = errno.EROFS if case == "read-only" else errno.ENOSPC
    with tmpfs(mount, options) as mounted:
        before = snapshot(mount)
        if mounted:
            done = cli("export", "--to", "onnx", "--task", "age", "--out", mount)
            exit_code, stderr = done.returncode, done.stderr
        else:
            print(f"tmpfs not mountable here: {case} injected instead")
            exit_code, stderr = _run_cli_injected(monkeypatch, cli, mount,
                                                  "check" if case == "read-only" else "model", code)
        after = snapshot(mount)
    assert exit_code not in (0, None)
    lines = error_lines(stderr)
    assert len(lines) == 1 and os.strerror(code) in lines[0], stderr
    assert "unexpected" not in lines[0]  # a handled error, not the CLI's catch-all
    assert "Traceback" not in stderr
    assert after == before


# -- concurrent exports ------------------------------------------------------------------

def _check_directory_consistent(out: Path) -> list[str]:
    """Every manifest matches its file, the index lists exactly the artifacts on disk, no
    temporary file is left. Returns the artifact names."""
    from ssrconv.artifacts import open_artifact, read_index
    from ssrconv.targets import format_of

    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")], names  # no temporaries left
    artifacts = [n for n in names if format_of(n) is not None]
    for name in artifacts:
        artifact = open_artifact(out / name)  # IntegrityError if the manifest describes another file
        assert artifact.managed and artifact.manifest["file"] == name
    entries = read_index(out)
    assert sorted(e["file"] for e in entries) == artifacts
    for entry in entries:
        manifest = json.loads((out / entry["manifest"]).read_text())
        assert (entry["bytes"], entry["sha256"]) == (manifest["bytes"], manifest["sha256"])
    return artifacts


def test_concurrent_commits_never_interleave(tmp_path):
    """Two processes commit the same artifact name 60 times each, with different bytes, and
    after each commit look at the directory while holding its flock (as a committer does):
    the manifest and index must then always describe the file on disk."""
    out = tmp_path / "out"
    out.mkdir()
    script = r"""
import fcntl, os, sys
from pathlib import Path
from ssrconv.artifacts import artifact_digest, read_index, read_manifest
from ssrconv.exporter import _commit
from onnx import TensorProto, helper
out, tag = Path(sys.argv[1]), sys.argv[2]
def tiny(value):  # a valid one-node ONNX model (the read path verifies what it opens)
    node = helper.make_node("Constant", [], ["age"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [value]))
    graph = helper.make_graph([node], tag, [], [helper.make_tensor_value_info("age", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
for i in range(60):
    tmp = out / f".m.{tag}.{i}.part.onnx"
    tmp.write_bytes(tiny(float(i)))
    size, sha = artifact_digest(tmp)
    _commit(out, tmp, out / "m.onnx", {"target": "onnx-fp32", "task": "age", "file": "m.onnx",
                                       "bytes": size, "sha256": sha})
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    manifest = read_manifest(out / "m.onnx")
    if artifact_digest(out / "m.onnx") != (manifest["bytes"], manifest["sha256"]) or read_index(out)[0]["sha256"] != manifest["sha256"]:
        sys.exit(f"inconsistent after commit {i} of {tag}")
    os.close(fd)
"""
    procs = [subprocess.Popen([sys.executable, "-c", script, str(out), tag], stderr=subprocess.PIPE,
                              text=True) for tag in "ab"]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0, 0], results
    assert _check_directory_consistent(out) == ["m.onnx"]


def test_two_exports_into_one_directory(tmp_path, assets_dir):
    """Two real `ssrconv export` processes at once into one directory (same artifact name, and
    one more each): afterwards every manifest matches its file, the index lists exactly the
    files there, and every artifact loads and runs."""
    import numpy as np

    from ssrconv.loading import load_runtime

    out = tmp_path / "out"
    procs = [subprocess.Popen(export_cmd(out, "--to", "tflite"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=900), p.stderr.read()) for p in procs]
    for code, stderr in results:
        assert code == 0, stderr
    artifacts = _check_directory_consistent(out)
    assert artifacts == ["ssrnet_age_fp32.onnx", "ssrnet_age_fp32.tflite"]
    batch = np.full((2, 64, 64, 3), 120, np.float32)
    for name in artifacts:
        ages = load_runtime(out / name).run(batch)["age"]
        assert ages.shape == (2,) and np.all((ages > 0) & (ages < 101))


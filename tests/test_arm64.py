"""Artifacts on arm64 kernels (issue 26): the platform flag, the emulated worker, the rows.

On an x86 machine linux/arm64 runs under QEMU in the root filesystem ``make arm64`` builds
(tools/arm64_root.sh). Outside CI a missing root filesystem skips the tests that need it, with
the reason; in CI (``CI=true``, where .ci/run runs ``make arm64`` first) it fails them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ssrconv.platforms import (MACHINES, PlatformError, chroot_command, host_machine,
                               host_platform, resolve)

# The other instruction set: what this machine can only emulate (bench must refuse to time it).
OTHER = next(name for name, machine in MACHINES.items() if machine != host_machine())
ARM64_FEATURES = ("fphp", "asimdhp", "asimddp", "i8mm")  # what phones have (ARMv8.2+)
CI_FACES = 48  # the face subset of the CI run (docs/ARM64.md has the 300-face figures)
# Stage tensors (a second pass through every artifact) on fewer faces: the budgets are checked on
# all CI_FACES, and the fp16 files' direct convolutions (Winograd off) are the slowest under QEMU.
CI_STAGE_FACES = 16


def _cli(*args, timeout=1800):
    return subprocess.run([sys.executable, "-m", "ssrconv.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def arm64():
    """linux/arm64 as it runs here (emulated on x86, native on arm64)."""
    try:
        return resolve("linux/arm64")
    except PlatformError as err:
        if os.environ.get("CI"):
            pytest.fail(f"{err}; CI runs make arm64 before the tests", pytrace=False)
        pytest.skip(str(err))


def test_unknown_platform_is_one_line():
    out = _cli("parity", "--model", "x.onnx", "--platform", "linux/s390x")
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown platform 'linux/s390x'" in lines[0], out.stderr


def test_bench_refuses_an_emulated_platform_in_one_line():
    out = _cli("bench", "--backend", "onnx", "--platform", OTHER)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "emulated time is not" in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_host_platform_is_not_refused():
    from ssrconv.platforms import why_not_timed

    assert why_not_timed(host_platform()) is None and why_not_timed("host") is None
    assert why_not_timed(OTHER)


def test_worker_runs_on_aarch64_with_phone_features(arm64):
    """The worker is an aarch64 process (never this x86 one) and QEMU's CPU has the ARMv8.2
    features phones have: fp16 arithmetic, dot product, i8mm."""
    from ssrconv.runtimes.remote import Worker

    if not arm64.emulated:
        pytest.skip("native arm64 machine: no worker, artifacts run in this process")
    with Worker(arm64) as worker:
        assert worker.info["machine"] == "aarch64"
        assert all(worker.info["key_features"][f] for f in ARM64_FEATURES), worker.info
        assert worker.engines["ncnn"] and worker.engines["litert"] and worker.engines["onnxruntime"]
        assert worker.engines["openvino"] and worker.engines["mnn"]
        assert worker.versions["ai-edge-litert"].startswith("1."), worker.versions
        session = worker.session
    assert not session.exists()  # closing removes the session directory


def test_the_root_filesystem_sees_the_hosts_sys_and_nothing_stays_mounted(arm64):
    """OpenVINO's CPU plugin never returns from its first call without /sys (docs/ARM64.md):
    a program run the worker's way reads the CPU topology there, and the read-only bind mount
    ends with it (the root filesystem's own /sys stays an empty directory on the host)."""
    if not arm64.emulated:
        pytest.skip("native arm64 machine: no root filesystem")
    def inside(*command):
        return subprocess.run(chroot_command(arm64.root) + list(command), capture_output=True,
                              text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})

    done = inside("/bin/cat", "/sys/devices/system/cpu/possible")
    assert done.returncode == 0 and done.stdout.strip()[:1].isdigit(), done.stderr
    assert inside("/bin/touch", "/sys/ssrconv-probe").returncode != 0  # read-only
    assert not any((arm64.root / "sys").iterdir())


@pytest.mark.slow
def test_arm64_rows_beside_x86_rows_within_budget(arm64, export_dir, faces, tmp_path):
    """`parity --platform linux/amd64 --platform linux/arm64` on the export: one row per
    (artifact, platform), side by side, every arm64 row computed by an aarch64 process and
    within the same budget as its x86 row; an artifact without an aarch64 runtime is a
    not-run row naming why."""
    from ssrconv.artifacts import discover
    from ssrconv.parity import check
    from ssrconv.parity_report import render_markdown

    places = (host_platform(), "linux/arm64")
    items = discover(export_dir)
    report = check(items, faces.inputs[:CI_FACES], synthetic=0, platforms=places,
                   raise_on_failure=False, stage_faces=CI_STAGE_FACES)
    broken = [f"{r.artifact} {r.platform}: {r.violations or r.error}" for r in report.results
              if not r.passed]
    assert broken == []
    arm = [r for r in report.results if r.platform == "linux/arm64"]
    ran = [r for r in arm if not r.not_run]
    assert all(r.machine == "aarch64" for r in arm), [(r.artifact, r.machine) for r in arm]
    assert all(r.emulated == arm64.emulated for r in arm)
    ran_names = {r.artifact for r in ran}
    for family in ("onnx", "tflite", "ncnn", "mnn", "openvino"):
        assert any(name.endswith(f".{family}") for name in ran_names), (family, ran_names)
    # the two fp16 files that broke on arm64 before their fixes ran there, in fp16 arithmetic
    # (the worker's CPU has fphp/asimdhp: test_worker_runs_on_aarch64_with_phone_features):
    # ncnn's defaults, MNN at precision low; both with Winograd off (docs/ARM64.md)
    # the integer int8 file enters its int16 head through int8 -> int16 QUANTIZEs, which
    # LiteRT 1.4 (the newest aarch64 wheel) lacks: a not-run row naming it (docs/ARM64.md)
    not_run = {r.artifact: r.not_run for r in arm if r.not_run}
    assert "no int8 -> int16 QUANTIZE" in not_run["ssrnet_age_gender_int8.tflite"]
    engines = {r.artifact: r.engine for r in ran}
    assert engines["ssrnet_age_gender_fp16.ncnn"] == "ncnn-cpu-fp16"
    assert engines["ssrnet_age_gender_fp16.mnn"] == "mnn-cpu-low-nowinograd"
    # OpenVINO's ARM CPU plugin ran (it hung before the worker had /sys: docs/ARM64.md), in f32
    # for the fp32 and fp16 IRs
    assert engines["ssrnet_age_gender_fp32.openvino"] == "openvino-cpu-f32"
    assert engines["ssrnet_age_gender_fp16.openvino"] == "openvino-cpu-f32"
    # side by side: each arm64 row right after the host row of the same (artifact, engine)
    rows = report.results
    for i, r in enumerate(rows):
        if r.platform == "linux/arm64":
            assert rows[i - 1].artifact == r.artifact and rows[i - 1].platform == places[0]
    # the report names the emulated CPU's features and says "emulated"
    assert report.platforms["linux/arm64"]["machine"] == "aarch64"
    table = render_markdown(report)
    assert "linux/arm64 (aarch64, emulated)" in table or not arm64.emulated
    assert all(f in table for f in ARM64_FEATURES)
    assert f"stage tensors on the first {CI_STAGE_FACES} faces" in table
    assert all(r.stages for r in ran if r.artifact.endswith((".ncnn", ".mnn")))
    (tmp_path / "parity.md").write_text(table)


@pytest.mark.slow
def test_runtime_only_install_inside_arm64(arm64, export_dir, images_dir, faces_dir, tmp_path):
    """`pip install ssrconv` (no extras, as make arm64 installs it) works on arm64 Linux: the
    installed command predicts on a photo and checks parity of a .tflite on LiteRT's aarch64
    wheel, the numpy reference standing in for Keras."""
    import shutil

    from ssrconv.runtimes.remote import Worker

    if not arm64.emulated:
        pytest.skip("native arm64 machine: the runtime-only check (make test-runtime-only) runs here")
    with Worker(arm64) as worker:  # only for its session directory inside the root filesystem
        work = worker.session / "install"
        work.mkdir()
        shutil.copy2(images_dir / "group_t1.jpg", work)
        model = export_dir / "ssrnet_age_gender_fp32.tflite"
        for path in (model, model.with_name(model.name + ".json")):
            shutil.copy2(path, work)
        chips = work / "faces"
        chips.mkdir()
        for chip in sorted(faces_dir.iterdir())[:16]:
            shutil.copy2(chip, chips)
        inside = worker.inside(work)
        env = {"PATH": "/venv/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
               "SSRCONV_ASSETS": f"{inside}/assets"}
        assets = work / "assets"
        assets.mkdir()
        for name in os.listdir(os.environ["SSRCONV_ASSETS"]):
            shutil.copy2(os.path.join(os.environ["SSRCONV_ASSETS"], name), assets)

        def run(*args):
            return subprocess.run(chroot_command(arm64.root) + ["/venv/bin/ssrconv", *args],
                                  capture_output=True, text=True, timeout=1200, env=env)

        predicted = run("predict", f"{inside}/group_t1.jpg", "--model",
                        f"{inside}/{model.name}", "--format", "csv")
        assert predicted.returncode == 0, predicted.stderr[-2000:]
        assert len(predicted.stdout.strip().splitlines()) - 1 == 6  # the six faces of t1.jpg
        checked = run("parity", "--model", f"{inside}/{model.name}", "--faces", f"{inside}/faces",
                      "--json", f"{inside}/parity.json")
        assert checked.returncode == 0, checked.stderr[-2000:]
        report = json.loads((work / "parity.json").read_text())
        assert report["reference_engine"] == "numpy-float32" and report["passed"]
        assert report["platforms"]["linux/arm64"]["machine"] == "aarch64"

"""The users' CI template (.github/workflows/ssrconv-parity.yml) works as copied: every `run:`
step of every job, as written, in a fresh venv per job (as a fresh runner), in a copy of this
repository standing in for the user's checkout.

The template's `env:` is its configuration: the test keeps it but exports fewer targets
(`TARGETS`: one format the base install runs, one it does not) and times fewer calls
(`BENCH_OPTIONS`) to stay within a few minutes; the steps themselves are not changed. Jobs run
in order on one workspace, so the runtime-only jobs check what the export job wrote, as they
would check the artifacts a user committed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / ".github" / "workflows" / "ssrconv-parity.yml"
# One format the base install runs (.tflite) and one it has no runtime for (.mlpackage).
TARGETS = "--to tflite --to coreml"
# A few timed calls: the bench step's output is checked here, its figures are not.
BENCH_OPTIONS = "--runs 20 --warmup 2 --rounds 2 --pipeline-runs 2"


def _jobs() -> tuple[dict[str, str], dict[str, list[str]]]:
    """(the template's env, job name -> its `run:` commands in order)."""
    import yaml

    workflow = yaml.safe_load(TEMPLATE.read_text())
    runs = {name: [step["run"] for step in job["steps"] if "run" in step]
            for name, job in workflow["jobs"].items()}
    return dict(workflow.get("env", {})), runs


def _workspace(tmp_path: Path) -> Path:
    """A copy of the repository as a checkout has it (no venv, no node_modules, no git)."""
    work = tmp_path / "workspace"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", "ssrconv-out", "__pycache__", "*.egg-info", "build",
        ".pytest_cache"))
    return work


def _run_job(name: str, commands: list[str], work: Path, env: dict[str, str], tmp_path: Path):
    venv = tmp_path / f"venv-{name}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    job_env = {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
               "VIRTUAL_ENV": str(venv)}
    outputs = []
    for command in commands:
        # GitHub's `run:` on Linux and macOS: bash --noprofile --norc -eo pipefail {0}
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", command],
                              cwd=work, env=job_env, capture_output=True, text=True, timeout=900)
        outputs.append(done.stdout + done.stderr)
        assert done.returncode == 0, f"job {name}: `{command}` exited {done.returncode}:\n" \
                                     f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return venv, outputs


@pytest.mark.slow
def test_ci_template_steps_pass_as_written(tmp_path, assets_dir):
    template_env, jobs = _jobs()
    assert set(jobs) == {"export-and-gate", "runtime-only", "macos-coreml"}
    work = _workspace(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for key, value in template_env.items():
        env[key] = str(value).replace("${{ github.workspace }}", str(work))
    env["TARGETS"] = TARGETS
    env["BENCH_OPTIONS"] = BENCH_OPTIONS
    env["SSRCONV_ASSETS"] = str(assets_dir)  # the offline mirror (a runner downloads instead)
    artifacts = work / env["ARTIFACTS"]

    _run_job("export-and-gate", jobs["export-and-gate"], work, env, tmp_path)
    written = sorted(p.name for p in artifacts.iterdir() if not p.name.endswith(".json"))
    assert written == ["ssrnet_age_gender_fp16.mlpackage", "ssrnet_age_gender_fp32.tflite"]
    assert (work / "parity-export.md").read_text().count("| pass |") == 2
    assert (work / "bench.md").is_file()

    # The base install: the .tflite is checked, the .mlpackage reported "not run" with its extra.
    venv, outputs = _run_job("runtime-only", jobs["runtime-only"], work, env, tmp_path)
    junit = (work / "parity-runtime.xml").read_text()
    assert 'tests="2" failures="0" skipped="1"' in junit
    assert "pip install 'ssrconv[coreml]'" in junit
    assert subprocess.run([str(venv / "bin" / "python"), "-c", "import tensorflow"],
                          capture_output=True).returncode != 0
    # Without the flag the same check fails, naming the extra and the flag.
    strict = subprocess.run([str(venv / "bin" / "ssrconv"), "parity", str(artifacts)], cwd=work,
                            env={**env, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"},
                            capture_output=True, text=True, timeout=600)
    assert strict.returncode == 1
    last = strict.stderr.strip().splitlines()[-1]
    assert "ssrnet_age_gender_fp16.mlpackage" in last and "ssrconv[coreml]" in last
    assert "--allow-missing-runtimes" in last

    # ssrconv[coreml] (the macOS job; off macOS the numpy MIL interpreter): both checked.
    _run_job("macos-coreml", jobs["macos-coreml"], work, env, tmp_path)
    assert 'tests="2" failures="0" skipped="0"' in (work / "parity-macos.xml").read_text()

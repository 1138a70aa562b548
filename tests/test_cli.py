"""The CLI skeleton: help without TensorFlow, version, info, bad options."""

from __future__ import annotations

import subprocess
import sys

from ssrconv import __version__


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ssrconv.cli", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_help_does_not_import_tensorflow():
    code = ("import sys; from ssrconv.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'coremltools', 'onnxruntime') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    assert "info" in out.stdout


def test_version():
    out = _run("--version")
    assert out.returncode == 0 and __version__ in out.stdout


def test_bad_option_is_one_line_usage_error():
    out = _run("--bogus")
    assert out.returncode == 2
    assert "No such option" in out.stderr and "Traceback" not in out.stderr


def test_info_reports_counts_and_sources(assets_dir):
    out = _run("info")
    assert out.returncode == 0, out.stderr
    assert "40,915" in out.stdout and "17,078,926" in out.stdout
    assert "age-wiki" in out.stdout and "SSRCONV_ASSETS" in out.stdout
    assert "tensorflow" in out.stdout
    assert out.stderr == ""  # no TensorFlow start-up chatter


def test_info_with_wrong_weights_is_one_clear_line(assets_dir):
    out = _run("info", "--age-weights", "gender-wiki")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssrconv: error:") and "gender" in lines[0]

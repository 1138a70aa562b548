"""The CLI skeleton: help without TensorFlow, version, info, bad options."""

from __future__ import annotations

import subprocess
import sys

from ssrconv import __version__


def test_help_does_not_import_tensorflow():
    code = ("import sys; from ssrconv.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'coremltools', 'onnxruntime') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    assert "info" in out.stdout


def test_version(cli):
    out = cli("--version")
    assert out.returncode == 0 and __version__ in out.stdout


def test_bad_option_is_one_line_usage_error(cli):
    out = cli("--bogus")
    assert out.returncode == 2
    assert "No such option" in out.stderr and "Traceback" not in out.stderr


def test_info_reports_counts_and_sources(assets_dir):
    # a fresh process: TensorFlow's start-up chatter is only seen where it starts
    out = subprocess.run([sys.executable, "-m", "ssrconv.cli", "info"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "40,915" in out.stdout and "17,078,926" in out.stdout
    assert "age-wiki" in out.stdout and "SSRCONV_ASSETS" in out.stdout
    assert "tensorflow" in out.stdout
    assert out.stderr == ""  # no TensorFlow start-up chatter


def test_info_with_wrong_weights_is_one_clear_line(assets_dir, cli):
    out = cli("info", "--age-weights", "gender-wiki")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssrconv: error:") and "gender" in lines[0]

"""The package's import structure: the import-linter contracts of pyproject.toml
([tool.importlinter]: layers, converters and runtimes independent, the format read layer below
both, no sibling cycles) hold, lazy imports inside functions included; and they do fail when an
upward import appears."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package under ``src`` with the project's contracts (no cache: the
    graph is always built from the files as they are)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([sys.executable, "-c",
                           "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())",
                           "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    result = _lint(ROOT / "src", ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout, result.stdout


def test_an_upward_lazy_import_breaks_the_contracts(tmp_path):
    """A converter import inside a format reader's function (the old read-side split) is
    reported: by the layers, the read-layer and the write/run contracts' neighbour checks."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "ssrconv", src / "ssrconv",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "web_app"))
    reader = src / "ssrconv" / "formats" / "mnn.py"
    reader.write_text(reader.read_text() + "\n\ndef _planted():\n"
                      "    from ssrconv.converters.mnn import convert\n\n    return convert\n")
    runtime = src / "ssrconv" / "runtimes" / "onnx_rt.py"
    runtime.write_text(runtime.read_text() + "\n\ndef _planted():\n"
                       "    from ssrconv.converters import onnx\n\n    return onnx\n")
    result = _lint(src, tmp_path)
    assert result.returncode != 0
    assert "Each layer imports only the layers below it BROKEN" in result.stdout, result.stdout
    assert "Converters (write) and runtimes (run) never import each other BROKEN" in result.stdout
    assert ("The format read layer imports no converter, runtime, reference or loader BROKEN"
            in result.stdout)
    assert "ssrconv.formats.mnn -> ssrconv.converters.mnn" in result.stdout

#!/usr/bin/env bash
# The two install sizes the README states, measured: the full venv of `make setup` (every
# converter and runtime) and a runtime-only venv (`pip install .`, no extras), each with the
# command that measures it. Usage: tools/install_sizes.sh [FULL_VENV]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
FULL="${1:-.venv}"
[ -x "$FULL/bin/python" ] || { echo "install-sizes: no venv at $FULL (run make setup first)" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "install-sizes: building a runtime-only venv (pip install ., no extras) in $WORK ..." >&2
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check . >&2

size() { du -sh "$1" | cut -f1; }
echo "full install (make setup: .[all,test] + pnnx --no-deps): $(size "$FULL")   # du -sh $FULL"
echo "runtime-only install (pip install .):                   $(size "$WORK/venv")   # $(basename "$PYTHON") -m venv V && V/bin/pip install . && du -sh V"

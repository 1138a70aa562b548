#!/usr/bin/env bash
# The arm64 root filesystem that `ssrconv parity --platform linux/arm64` runs artifacts in on an
# x86 machine (QEMU user-mode emulation; docs/ARM64.md). Built once, cached outside the tree:
#
#   1. Debian packages qemu-user-static, binfmt-support, debootstrap (apt-get, when missing);
#   2. binfmt_misc mounted and qemu-aarch64 enabled (arm64 ELF files then run through QEMU);
#   3. `debootstrap --arch=arm64 --variant=minbase bookworm` (Python 3.11, ~8 minutes);
#   4. the aarch64 wheels of ssrconv's runtime dependencies and of every runtime with an aarch64
#      Linux cp311 wheel, downloaded on the host (`pip download --platform`);
#   5. /venv inside: ssrconv (a wheel of this tree, no extras) and those runtimes, installed
#      offline (`pip install --no-index --find-links`) by the arm64 pip, which evaluates
#      pyproject's environment markers as arm64 Linux does.
#
# Each step leaves a stamp in $ROOT/.ssrconv/; a step whose stamp matches is skipped (steps 4-5
# are redone when pyproject's dependencies or this script change; ssrconv alone is reinstalled
# when src/ changes). Needs root (debootstrap, chroot).
# Usage: tools/arm64_root.sh   (SSRCONV_ARM64_ROOT: where; default ~/.cache/ssrconv/arm64-bookworm)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="$(pwd)"
ROOT="${SSRCONV_ARM64_ROOT:-$HOME/.cache/ssrconv/arm64-bookworm}"
SUITE=bookworm
MIRROR="${SSRCONV_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBS=python3,python3-venv,libgl1,libglib2.0-0  # libgl1/libglib: OpenCV's and OpenVINO's imports
# Runtimes beyond the base dependencies that publish aarch64 Linux cp311 wheels (checked
# 2026-12-06: tract has none; ai-edge-litert's newest is 1.4.0, chosen by pyproject's marker).
RUNTIMES=("ncnn>=1.0.20261020" "MNN>=3.6.1,<4" "openvino>=2026.4,<2027")
HOST_PYTHON="${HOST_PYTHON:-$(command -v python3.11 || command -v python3)}"
STAMPS="$ROOT/.ssrconv"
# Inside, nothing of this host's environment (its pip configuration, PYTHONPATH...).
inroot() { env -i PATH=/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 "$(command -v chroot)" "$ROOT" "$@"; }
say() { echo "arm64-root: $*" >&2; }
fail() { echo "arm64-root: FAIL: $*" >&2; exit 1; }
t0=$(date +%s)

if [ "$(uname -m)" = aarch64 ]; then
    say "this host is aarch64: --platform linux/arm64 runs natively, no emulated root filesystem"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || fail "building $ROOT needs root (debootstrap, chroot); run it as root"

# 1. Debian packages.
missing=()
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null || missing+=(binfmt-support)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# 2. binfmt_misc (the kernel hands arm64 ELF files to QEMU; the F flag keeps it working in chroots).
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    say "mounting binfmt_misc"
    mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    say "enabling qemu-aarch64 in binfmt_misc"
    update-binfmts --enable qemu-aarch64
fi

# 3. The Debian root filesystem (built beside, moved into place when complete).
if [ ! -f "$STAMPS/debootstrap" ]; then
    say "debootstrap --arch=arm64 --variant=minbase $SUITE into $ROOT (about 8 minutes)"
    mkdir -p "$(dirname "$ROOT")"
    rm -rf "$ROOT.partial"
    debootstrap --arch=arm64 --variant=minbase --include="$DEBS" "$SUITE" "$ROOT.partial" "$MIRROR" \
        > "$ROOT.debootstrap.log" 2>&1 || fail "debootstrap failed (see $ROOT.debootstrap.log)"
    rm -rf "$ROOT" && mv "$ROOT.partial" "$ROOT"
    mkdir -p "$STAMPS" && echo "$SUITE $(date -u +%FT%TZ)" > "$STAMPS/debootstrap"
fi
[ "$(inroot uname -m)" = aarch64 ] || fail "chroot $ROOT does not run as aarch64 (binfmt?)"

# 4.-5. Wheels and the venv, keyed on what decides them; then ssrconv itself, keyed on the tree.
WHEELS="$ROOT/opt/ssrconv-wheels"
build_ssrconv_wheel() {  # sets SSRCONV_WHEEL: the wheel's path as the chroot sees it
    rm -f "$WHEELS"/ssrconv-*.whl
    "$HOST_PYTHON" -m pip wheel --quiet --no-deps --disable-pip-version-check -w "$WHEELS" "$SRC" \
        || fail "pip wheel $SRC failed"
    SSRCONV_WHEEL="/opt/ssrconv-wheels/$(basename "$WHEELS"/ssrconv-*.whl)"
}
tree_key() {  # the package's sources as they are now (committed or not)
    find src pyproject.toml -type f ! -path '*/__pycache__/*' ! -name '*.pyc' | sort \
        | xargs sha256sum | sha256sum | cut -c1-16
}
key="$( ("$HOST_PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"])'; cat "$0") | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMPS/venv" 2>/dev/null)" != "$key" ]; then
    rm -rf "$WHEELS" "$STAMPS/ssrconv" && mkdir -p "$WHEELS"
    say "building the ssrconv wheel of $SRC"
    build_ssrconv_wheel
    # pip download evaluates markers for the host, so the base requirements are filtered here
    # with the arm64 Linux environment (packaging's markers), then resolved for aarch64 wheels.
    mapfile -t reqs < <("$HOST_PYTHON" - <<'PY'
import tomllib
from packaging.requirements import Requirement
env = {"platform_machine": "aarch64", "sys_platform": "linux", "platform_system": "Linux",
       "python_version": "3.11", "python_full_version": "3.11.2", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}
for text in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    req = Requirement(text)
    if req.marker is None or req.marker.evaluate(env):
        req.marker = None
        print(req)
PY
)
    say "pip download (aarch64, cp311): ${reqs[*]} ${RUNTIMES[*]}"
    "$HOST_PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
        --platform manylinux_2_24_aarch64 --platform manylinux_2_28_aarch64 \
        --platform manylinux_2_35_aarch64 --python-version 3.11 --implementation cp \
        -d "$WHEELS" "${reqs[@]}" "${RUNTIMES[@]}" || fail "pip download of the aarch64 wheels failed"
    say "installing /venv inside (offline; emulated pip, a few minutes)"
    rm -rf "$ROOT/venv"
    inroot /usr/bin/python3 -m venv /venv || fail "python3 -m venv /venv failed in $ROOT"
    names=()
    for r in "${RUNTIMES[@]}"; do names+=("${r%%[<>=!~]*}"); done
    inroot /venv/bin/pip install --quiet --disable-pip-version-check --no-index \
        --find-links /opt/ssrconv-wheels "$SSRCONV_WHEEL" "${names[@]}" \
        || fail "the offline install in $ROOT failed"
    echo "$key" > "$STAMPS/venv"
    tree_key > "$STAMPS/ssrconv"
fi
# The installed ssrconv follows the tree (the runtime-only install test runs it); its
# dependencies are the ones above, so only the package is replaced.
tree="$(tree_key)"
if [ "$(cat "$STAMPS/ssrconv" 2>/dev/null)" != "$tree" ]; then
    say "reinstalling ssrconv from $SRC in /venv"
    build_ssrconv_wheel
    inroot /venv/bin/pip install --quiet --disable-pip-version-check --no-index --no-deps \
        --force-reinstall "$SSRCONV_WHEEL" || fail "reinstalling ssrconv failed"
    echo "$tree" > "$STAMPS/ssrconv"
fi
versions="$(inroot /venv/bin/python -c "import importlib.metadata as m; print(', '.join(f'{d} {m.version(d)}' for d in ('ssrconv', 'onnxruntime', 'ai-edge-litert', 'ncnn', 'MNN', 'openvino')))")"
say "ready: $ROOT ($(inroot /venv/bin/python -V), $versions) in $(( $(date +%s) - t0 )) s"

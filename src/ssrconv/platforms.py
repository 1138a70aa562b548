"""Where an artifact runs: this machine, or another instruction set's CPU kernels.

A platform is an (OS, instruction set) pair in Docker's spelling, ``linux/amd64`` or
``linux/arm64``. The host's own platform runs in this process. Another one runs in a worker
process (:mod:`ssrconv.runtimes.remote`): natively when this machine is that platform, else
under QEMU user-mode emulation in an arm64 Debian root filesystem that ``make arm64``
(``tools/arm64_root.sh``) builds once and caches in ``SSRCONV_ARM64_ROOT``. Emulated numerics
are the real arm64 kernels' numerics (NEON, fp16 arithmetic, dot products, as QEMU implements
the instructions); emulated time is not speed, so bench refuses an emulated platform.

This module imports nothing heavy; :func:`machine_info` also runs inside the worker.
"""

from __future__ import annotations

import ctypes
import os
import platform as _platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from ssrconv.errors import SsrconvError

# platform name -> what platform.machine() says there
MACHINES = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
# The features that decide the numerics of arm64 kernels (Linux HWCAP names, as /proc/cpuinfo
# prints them): fp16 arithmetic (ARMv8.2 fphp/asimdhp, ncnn's fp16 path), int8 dot products
# (asimddp), int8 matrix multiply (i8mm), bf16; and x86's for the host rows.
KEY_FEATURES = {"aarch64": ("asimd", "fphp", "asimdhp", "asimddp", "i8mm", "bf16", "sve"),
                "x86_64": ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16",
                           "amx_bf16")}
# Linux arm64 HWCAP / HWCAP2 bits (arch/arm64/include/uapi/asm/hwcap.h), for when
# /proc/cpuinfo cannot be read (a chroot without /proc): the auxiliary vector is what the
# runtimes' own CPU detection reads too.
_HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt "
          "fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs "
          "sb paca pacg").split()
_HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm "
           "svef64mm svebf16 i8mm bf16 dgh rng bti mte").split()
_AT_HWCAP, _AT_HWCAP2 = 16, 26
ROOT_ENV = "SSRCONV_ARM64_ROOT"


class PlatformError(SsrconvError):
    """A platform cannot be run here (unknown, or its root filesystem is not built)."""


@dataclass(frozen=True)
class Platform:
    """One place artifacts run: ``name`` (linux/arm64), the ``machine`` it must report,
    whether it is this process's own (``host``), and ``root``: the emulated root filesystem
    (None when the platform runs natively)."""

    name: str
    machine: str
    host: bool
    root: Path | None = None

    @property
    def emulated(self) -> bool:
        return self.root is not None

def host_machine() -> str:
    """This machine's instruction set, normalised (x86_64, aarch64)."""
    machine = _platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def host_platform() -> str:
    """This machine's platform name (linux/amd64, linux/arm64), or ``linux/<machine>``."""
    machine = host_machine()
    return next((name for name, m in MACHINES.items() if m == machine), f"linux/{machine}")


def root_dir() -> Path:
    """The arm64 root filesystem's directory: ``SSRCONV_ARM64_ROOT``, else
    ``~/.cache/ssrconv/arm64-bookworm`` (tools/arm64_root.sh uses the same default)."""
    value = os.environ.get(ROOT_ENV)
    return Path(value) if value else Path.home() / ".cache" / "ssrconv" / "arm64-bookworm"


def root_problem(root: Path) -> str | None:
    """Why ``root`` cannot run the worker (None: it can)."""
    if not (root / "venv" / "bin" / "python").exists() or not (root / ".ssrconv" / "venv").is_file():
        return f"no arm64 root filesystem at {root}: build it with `make arm64` (as root; " \
               f"~10 minutes once; {ROOT_ENV} sets where)"
    if shutil.which("unshare") is None:
        return "running the arm64 root filesystem needs unshare (util-linux): its mount namespace"
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return "qemu-aarch64 is not registered in binfmt_misc: run `make arm64` (as root)"
    return None


# The CPU QEMU emulates: its `max` model without SVE. The rows then run the NEON kernels every
# arm64 device has (with ARMv8.2 fp16 arithmetic, dot products, i8mm, bf16), not SVE kernels at
# QEMU's default 512-bit vectors, which no phone or board has (ARMv9 phones: 128-bit; a Pi 5 or
# a Jetson Orin: no SVE). QEMU emulates SVE slowly: OpenVINO's ARM plugin took SVE kernels and
# cost 1.4 CPU-s per face with them, 0.25 without; onnxruntime and LiteRT cost the same either
# way (docs/ARM64.md, "The emulated CPU").
EMULATED_CPU = "max,sve=off"


def chroot_command(root: Path) -> list[str]:
    """The command prefix that runs a program inside the root filesystem ``root`` (append the
    program and its arguments): chroot in a private mount namespace (``unshare --mount``; in a
    user namespace too when not root) that bind-mounts the host's ``/sys`` read-only on
    ``root/sys``. OpenVINO's CPU plugin reads the CPU topology there
    (``/sys/devices/system/cpu/possible``, ``online``, ``cpuN/cache``) and, finding neither it
    nor ``/proc/cpuinfo``, never returns from its first ``Core`` call (docs/ARM64.md); a phone
    or a board has ``/sys``. The mount lives and dies with the namespace: nothing stays mounted
    on the host. Absolute paths, so the program's own environment (a minimal PATH) does not
    matter."""
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    mount = shutil.which("mount") or "/usr/bin/mount"
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    # $0 chroot, $1 root; QEMU (binfmt_misc) reads its CPU model from the environment
    script = (f'export QEMU_CPU={EMULATED_CPU}; {mount} -o bind,ro /sys "$1/sys" && '
              'exec "$0" "$@"')
    return [unshare, *user, "--mount", "/bin/sh", "-c", script, chroot, str(root)]


def resolve(name: str) -> Platform:
    """The platform called ``name`` as it runs on this machine; PlatformError when unknown or
    not runnable here (naming the command that makes it runnable)."""
    if name in ("host", host_platform()):
        return Platform(host_platform(), host_machine(), host=True)
    if name not in MACHINES:
        raise PlatformError(f"unknown platform {name!r}: choose from host, {', '.join(MACHINES)}")
    if name != "linux/arm64":
        raise PlatformError(f"{name} cannot run on this {host_machine()} machine (only "
                            f"linux/arm64 is emulated)")
    root = root_dir()
    problem = root_problem(root)
    if problem:
        raise PlatformError(f"--platform {name}: {problem}")
    return Platform(name, MACHINES[name], host=False, root=root)


def why_not_timed(name: str) -> str | None:
    """None when ``name`` is this machine's platform (timing it measures its CPU), else why
    bench refuses it: any other instruction set only runs emulated here."""
    if name in ("host", host_platform()):
        return None
    if name not in MACHINES:
        raise PlatformError(f"unknown platform {name!r}: choose from host, {', '.join(MACHINES)}")
    return (f"{name} runs only under QEMU emulation on this {host_machine()} machine, and "
            f"emulated time is not {name} speed: run ssrconv bench on an {MACHINES[name]} "
            "machine (parity --platform checks its numerics here)")


def _cpuinfo_features() -> list[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("features", "flags"):
            return value.split()
    return None


def _hwcap_features() -> list[str] | None:
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return None
    getauxval.restype = ctypes.c_ulong
    getauxval.argtypes = [ctypes.c_ulong]
    found = []
    for names, key in ((_HWCAP, _AT_HWCAP), (_HWCAP2, _AT_HWCAP2)):
        bits = getauxval(key)
        found += [n for i, n in enumerate(names) if bits >> i & 1]
    return found


def machine_info() -> dict:
    """What this process runs on: machine, CPU features (arm64: the HWCAP auxiliary vector,
    what QEMU or the kernel tells the runtimes; else /proc/cpuinfo), and the key features
    that decide kernel numerics, present or not."""
    machine = host_machine()
    features, source = None, ""
    if machine == "aarch64":
        features, source = _hwcap_features(), "hwcap"
    if features is None:
        features, source = _cpuinfo_features(), "/proc/cpuinfo"
    features = features or []
    key = {f: f in features for f in KEY_FEATURES.get(machine, ())}
    return {"machine": machine, "python": _platform.python_version(), "features": features,
            "features_source": source, "key_features": key}


def describe_features(info: dict) -> str:
    """``fphp asimdhp asimddp i8mm, no sve`` style summary of ``machine_info()``'s key features."""
    key = info.get("key_features", {})
    have = [f for f, on in key.items() if on]
    lacking = [f for f, on in key.items() if not on]
    return " ".join(have) + (f"; not: {' '.join(lacking)}" if lacking else "")

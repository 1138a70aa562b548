"""Which machine and software a benchmark ran on, so numbers are never quoted without it."""

from __future__ import annotations

import os
import platform
import sys

# CPU features that decide which kernels run: AVX2/FMA for fp32, AVX-512 for wide fp32,
# VNNI (and AMX on newer parts) for int8 dot products.
INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                     "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "neon",
                     "asimd", "asimddp")
# Environment variables that change thread counts or kernel choice: reported, never changed.
THREAD_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS",
              "XNNPACK_FORCE_PTHREADPOOL")


def parse_cpuinfo(text: str) -> dict:
    """CPU model, flags of interest and core counts from the text of /proc/cpuinfo."""
    model, flags, physical, processors = None, set(), set(), 0
    cores_per_socket = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            processors += 1
        elif key in ("model name", "Model", "cpu model") and model is None:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical.add(value)
        elif key == "cpu cores" and cores_per_socket is None:
            cores_per_socket = int(value) if value.isdigit() else None
    cores = cores_per_socket * max(len(physical), 1) if cores_per_socket else None
    return {"model": model, "flags": [f for f in INTERESTING_FLAGS if f in flags],
            "logical_cpus": processors or None, "physical_cores": cores}


def cpu_info() -> dict:
    """The CPU as /proc/cpuinfo (Linux) or sysctl (macOS) describes it, plus this process's
    CPU affinity (a container may see fewer CPUs than the machine has)."""
    info = {"model": None, "flags": [], "logical_cpus": os.cpu_count(), "physical_cores": None}
    try:
        with open("/proc/cpuinfo") as fh:
            info.update({k: v for k, v in parse_cpuinfo(fh.read()).items() if v})
    except OSError:
        if platform.system() == "Darwin":
            info.update(_sysctl_cpu())
    if not info["model"]:
        info["model"] = platform.processor() or platform.machine()
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no sched_getaffinity
        info["usable_cpus"] = os.cpu_count()
    return info


def _sysctl_cpu() -> dict:
    import subprocess

    def read(name):
        try:
            return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    cores = read("hw.physicalcpu")
    return {"model": read("machdep.cpu.brand_string"),
            "physical_cores": int(cores) if cores and cores.isdigit() else None}


def numpy_blas() -> str | None:
    """The BLAS numpy was built against (name and version), for the GEMM reference rate."""
    try:
        import numpy as np

        deps = np.show_config(mode="dicts").get("Build Dependencies", {})
        blas = deps.get("blas", {})
        return " ".join(str(blas[k]) for k in ("name", "version") if blas.get(k)) or None
    except Exception:  # show_config's layout is not a stable API
        return None


def fingerprint(threads: int | None = None) -> dict:
    """Machine, OS, Python, library versions and thread settings of this run."""
    from ssrconv import __version__
    from ssrconv.info import library_versions

    return {
        "cpu": cpu_info(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "ssrconv": __version__,
        "libraries": library_versions(),
        "numpy_blas": numpy_blas(),
        "threads": threads,
        "env": {k: os.environ.get(k) for k in THREAD_ENV},
    }


def one_line(fp: dict) -> str:
    """The fingerprint as one line for the terminal and the README."""
    cpu = fp["cpu"]
    cores = cpu.get("physical_cores")
    usable = cpu.get("usable_cpus")
    libs = fp.get("libraries", {})
    lib_text = ", ".join(f"{k} {libs[k]}" for k in ("tensorflow", "keras", "onnxruntime",
                                                   "ai-edge-litert", "coremltools", "numpy")
                         if libs.get(k) and libs[k] != "not installed")
    blas = f" ({fp['numpy_blas']})" if fp.get("numpy_blas") else ""
    coretype = fp.get("env", {}).get("OPENBLAS_CORETYPE")
    return (f"{cpu.get('model')}; {cores or '?'} cores ({usable or '?'} usable); flags: "
            f"{' '.join(cpu.get('flags') or []) or 'none found'}; {fp['os']}; Python "
            f"{fp['python']}; {lib_text}{blas}; threads per backend: {fp.get('threads')}; "
            f"OPENBLAS_CORETYPE={coretype or 'unset'}")

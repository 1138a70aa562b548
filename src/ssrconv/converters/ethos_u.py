"""Arm Ethos-U export (``--to ethos-u``): a directory package ``<stem>.ethos-u/`` holding the
integer-only TFLite file (``<stem>.tflite``, the 16x8 export of :mod:`ssrconv.converters.tflite`)
and, per accelerator configuration, Vela's compiled file (``<stem>_<config>_vela.tflite``: the
NPU part as one ethos-u custom operator, the rest CPU operators), its summary CSV and its
printed report.

Vela (pip ``ethos-u-vela``) is a compiler, not a runtime: the NPU split, SRAM/flash use and
inference time in the manifest are *Vela's estimates* at the configuration's clock, not
measurements. The numbers the package computes are checked on the pre-Vela integer file with
TensorFlow Lite Micro's reference kernels (the ``tflite-micro`` engine), which Ethos-U is
specified to match for the operators it runs.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

from ssrconv.errors import ModelFileError, SsrconvError

SUFFIX = ".ethos-u"
ACCELERATORS = ("ethos-u55-128", "ethos-u65-256")
# Vela's Size strategy: ethos-u55-128 SRAM 259 KiB against 595 KiB for Performance, the same
# estimated time (2.77 ms) on the 16x8 file (docs/INT8.md, "Ethos-U").
OPTIMISE = "Size"
VELA_TIMEOUT_S = 600


def integer_file(path: Path) -> Path:
    """The pre-Vela integer-only .tflite of a package (the one not ending in ``_vela``)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"{path}: an Ethos-U package is a directory; re-export it with "
                             "ssrconv export --to ethos-u")
    found = [p for p in sorted(path.glob("*.tflite")) if not p.stem.endswith("_vela")]
    if len(found) != 1:
        raise ModelFileError(f"{path}: expected one integer .tflite beside Vela's outputs, found "
                             f"{len(found)}; re-export it with ssrconv export --to ethos-u")
    return found[0]


def run_vela(source: Path, accelerator: str, out_dir: Path) -> dict:
    """Compile ``source`` with Vela for ``accelerator`` into ``out_dir`` (the compiled file, its
    summary CSV and Vela's printed report ``<stem>_<accelerator>_vela.txt``); its
    :func:`report`."""
    work = out_dir / f"vela-{accelerator}"
    work.mkdir()
    command = [sys.executable, "-m", "ethosu.vela", str(source), "--accelerator-config",
               accelerator, "--optimise", OPTIMISE, "--output-dir", str(work)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=VELA_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SsrconvError(f"Vela did not finish {source.name} for {accelerator} in "
                           f"{VELA_TIMEOUT_S} s") from None
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SsrconvError(f"Vela failed on {source.name} for {accelerator}: {last[0][:200]}")
    stem = f"{source.stem}_{accelerator}"
    compiled = out_dir / f"{stem}_vela.tflite"
    (work / f"{source.stem}_vela.tflite").rename(compiled)
    summary_csv = next(work.glob("*_summary_*.csv"))
    summary_csv.rename(out_dir / f"{stem}_summary.csv")
    (out_dir / f"{stem}_vela.txt").write_text(done.stdout)
    work.rmdir()
    return report(out_dir, stem)


def report(package: Path, stem: str) -> dict:
    """One accelerator's figures read back from the package: operators on the NPU and the CPU
    (Vela's count), multiply-adds left on CPU operators (counted in the compiled file), SRAM
    and flash/DRAM used and the estimated time (Vela's estimates)."""
    from ssrconv.converters.tflite_flatbuffer import load

    text = (package / f"{stem}_vela.txt").read_text()
    counts = {kind: int(n) for kind, n in re.findall(r"(CPU|NPU) operators = (\d+)", text)}
    with open(package / f"{stem}_summary.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    compiled = (package / f"{stem}_vela.tflite").read_bytes()
    cpu_macs = _cpu_macs(load(compiled))
    total_macs = int(float(row["nn_macs"]))
    ops = counts.get("CPU", 0) + counts.get("NPU", 0)
    return {
        "accelerator": row["accelerator_configuration"], "system": row["system_config"],
        "memory_mode": row["memory_mode"], "clock_mhz": float(row["core_clock"]) / 1e6,
        "npu_operators": counts.get("NPU", 0), "cpu_operators": counts.get("CPU", 0),
        "npu_operator_share": round(counts.get("NPU", 0) / ops, 4) if ops else None,
        "macs": total_macs, "cpu_macs": cpu_macs,
        "npu_mac_share": round(1 - cpu_macs / total_macs, 5) if total_macs else None,
        "sram_kib": float(row["sram_memory_used"]),
        "off_chip_flash_kib": float(row["off_chip_flash_memory_used"]),
        "dram_kib": float(row["dram_memory_used"]),
        "estimated_inference_ms": round(float(row["inference_time"]) * 1e3, 4),
        "estimate": "Vela's estimate at the configuration's clock, not a measurement",
        "compiled_file": f"{stem}_vela.tflite",
        "compiled_bytes": len(compiled),
    }


def _cpu_macs(model) -> int:
    """Multiply-adds of the CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED operators Vela left
    outside its ethos-u custom operator (per face)."""
    from ssrconv.converters.tflite_flatbuffer import schema

    builtin = schema().BuiltinOperator
    names = {getattr(builtin, n): n for n in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")}
    macs = 0
    for graph in model.subgraphs:
        for op in graph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            if name is None:
                continue
            out = [int(d) for d in graph.tensors[op.outputs[0]].shape]
            kernel = [int(d) for d in graph.tensors[op.inputs[1]].shape]
            per_out = (kernel[1] if name == "FULLY_CONNECTED" else
                       kernel[1] * kernel[2] * (kernel[3] if name == "CONV_2D" else 1))
            count = 1
            for d in out[1:]:
                count *= d
            macs += count * per_out
    return macs


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Write the Ethos-U package of ``model`` at ``dest``: the integer-only 16x8 .tflite and
    Vela's compilation of it for every configuration in ACCELERATORS."""
    from ssrconv.converters import tflite

    dest = Path(dest)
    stem = Path(target.filename(options.task)).name[:-len(target.suffix)]
    dest.mkdir(parents=True, exist_ok=False)
    source = dest / f"{stem}.tflite"
    extra = tflite.convert(model, target, options, source, calibration, metadata)
    for accelerator in ACCELERATORS:  # describe() reads the reports back into the manifest
        run_vela(source, accelerator, dest)
    from importlib.metadata import version

    return {**extra, "vela": version("ethos-u-vela"), "vela_optimise": OPTIMISE}


def verify(path: Path) -> None:
    """The package holds one integer .tflite that reads as a TFLite model."""
    from ssrconv.converters.tflite import read_model

    read_model(integer_file(path))


def describe(path: Path) -> dict:
    """The integer file's description (:func:`ssrconv.converters.tflite.describe`) and Vela's
    figures for every compiled configuration in the package."""
    from ssrconv.converters import tflite

    source = integer_file(path)
    stems = sorted(p.name[:-len("_vela.tflite")] for p in Path(path).glob("*_vela.tflite"))
    return {**tflite.describe(source), "integer_file": source.name,
            "ethos_u": {stem[len(source.stem) + 1:]: report(Path(path), stem) for stem in stems}}


def file_precision(path: Path) -> str:
    """The precision of the package's integer file."""
    from ssrconv.converters import tflite

    return tflite.file_precision(integer_file(path))

"""The Arm Ethos-U package (``<stem>.ethos-u/``): its layout and read side. It holds the
integer-only TFLite file (``<stem>.tflite``, the 16x8 export) and, per accelerator
configuration, Vela's compiled file (``<stem>_<config>_vela.tflite``: the NPU part as one
ethos-u custom operator, the rest CPU operators), its summary CSV and its printed report
(written by :mod:`ssrconv.converters.ethos_u`).

Vela is a compiler, not a runtime: the NPU split, SRAM/flash use and inference time read back
here are *Vela's estimates* at the configuration's clock, not measurements. What the package
computes is checked on its integer file with TensorFlow Lite Micro's reference kernels (the
``tflite-micro`` engine), which Ethos-U is specified to match for the operators it runs.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from ssrconv.errors import ModelFileError

ACCELERATORS = ("ethos-u55-128", "ethos-u65-256")


def inner_artifact(path: Path) -> Path:
    """The file of the package a runtime reads: the pre-Vela integer-only .tflite (the one
    not ending in ``_vela``)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"{path}: an Ethos-U package is a directory; re-export it with "
                             "ssrconv export --to ethos-u")
    found = [p for p in sorted(path.glob("*.tflite")) if not p.stem.endswith("_vela")]
    if len(found) != 1:
        raise ModelFileError(f"{path}: expected one integer .tflite beside Vela's outputs, found "
                             f"{len(found)}; re-export it with ssrconv export --to ethos-u")
    return found[0]


def report(package: Path, stem: str) -> dict:
    """One accelerator's figures read back from the package: operators on the NPU and the CPU
    (Vela's count), multiply-adds left on CPU operators (counted in the compiled file), SRAM
    and flash/DRAM used and the estimated time (Vela's estimates)."""
    from ssrconv.formats.tflite_flatbuffer import load

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
    from ssrconv.formats.tflite_flatbuffer import schema

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


def verify(path: Path) -> None:
    """The package holds one integer .tflite that reads as a TFLite model."""
    from ssrconv.formats.tflite import read_model

    read_model(inner_artifact(path))


def describe(path: Path) -> dict:
    """The integer file's description (:func:`ssrconv.formats.tflite.describe`) and Vela's
    figures for every compiled configuration in the package."""
    from ssrconv.formats import tflite

    source = inner_artifact(path)
    stems = sorted(p.name[:-len("_vela.tflite")] for p in Path(path).glob("*_vela.tflite"))
    return {**tflite.describe(source), "integer_file": source.name,
            "ethos_u": {stem[len(source.stem) + 1:]: report(Path(path), stem) for stem in stems}}


def file_precision(path: Path) -> str:
    """The precision of the package's integer file."""
    from ssrconv.formats import tflite

    return tflite.file_precision(inner_artifact(path))

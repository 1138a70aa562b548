"""Arm Ethos-U export (``--to ethos-u``): the integer-only 16x8 TFLite file of
:mod:`ssrconv.converters.tflite` compiled by Vela (pip ``ethos-u-vela``) for every accelerator
configuration of :data:`ssrconv.formats.ethos_u.ACCELERATORS`, into the package
:mod:`ssrconv.formats.ethos_u` describes (Vela's figures are its estimates, not measurements)."""

from __future__ import annotations

import sys
from pathlib import Path

from ssrconv.converters.tool import run_tool
from ssrconv.formats.ethos_u import ACCELERATORS, report

# Vela's Size strategy: ethos-u55-128 SRAM 259 KiB against 595 KiB for Performance, the same
# estimated time (2.77 ms) on the 16x8 file (docs/INT8.md, "Ethos-U").
OPTIMISE = "Size"
VELA_TIMEOUT_S = 600


def run_vela(source: Path, accelerator: str, out_dir: Path) -> dict:
    """Compile ``source`` with Vela for ``accelerator`` into ``out_dir`` (the compiled file, its
    summary CSV and Vela's printed report ``<stem>_<accelerator>_vela.txt``); its
    :func:`report`."""
    work = out_dir / f"vela-{accelerator}"
    work.mkdir()
    command = [sys.executable, "-m", "ethosu.vela", str(source), "--accelerator-config",
               accelerator, "--optimise", OPTIMISE, "--output-dir", str(work)]
    done = run_tool(command, f"Vela on {source.name} for {accelerator}", VELA_TIMEOUT_S)
    stem = f"{source.stem}_{accelerator}"
    compiled = out_dir / f"{stem}_vela.tflite"
    (work / f"{source.stem}_vela.tflite").rename(compiled)
    summary_csv = next(work.glob("*_summary_*.csv"))
    summary_csv.rename(out_dir / f"{stem}_summary.csv")
    (out_dir / f"{stem}_vela.txt").write_text(done.stdout)
    work.rmdir()
    return report(out_dir, stem)


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Write the Ethos-U package of ``model`` at ``dest``: the integer-only 16x8 .tflite with
    int16 I/O and Vela's compilation of it for every configuration in ACCELERATORS."""
    from ssrconv.converters import tflite

    dest = Path(dest)
    stem = Path(target.filename(options.task)).name[:-len(target.suffix)]
    dest.mkdir(parents=True, exist_ok=False)
    source = dest / f"{stem}.tflite"
    extra = tflite.convert(model, target, options, source, calibration, metadata)
    return {**extra, **package(source)}


def package(source: Path) -> dict:
    """The package beside the 16x8 file ``source``: ``source`` rewritten with int16 I/O (the
    float input's QUANTIZE and the outputs' DEQUANTIZEs are CPU operators for Vela: the fused
    graph had 93 of 98 operators on the NPU with them, 93 of 95 without; docs/INT8.md,
    "Ethos-U") and Vela's
    compilation of it for every accelerator; the manifest's fields (its MCU figures and
    Vela's; describe() reads the reports)."""
    from importlib.metadata import version

    from ssrconv.converters import tflite

    data = tflite.integer_io(source.read_bytes())
    source.write_bytes(data)
    for accelerator in ACCELERATORS:
        run_vela(source, accelerator, source.parent)
    return {"mcu": tflite.mcu(data), "vela": version("ethos-u-vela"), "vela_optimise": OPTIMISE}

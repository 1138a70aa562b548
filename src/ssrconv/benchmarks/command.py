"""``ssrconv bench``: size and speed of each backend, measured side by side.

Only click is imported here (the CLI imports this module to register the command); the
harness, numpy and every backend are imported inside the command.
"""

from __future__ import annotations

from pathlib import Path

import click

from ssrconv.errors import SsrconvError

_BACKENDS = ("keras", "onnx", "tflite", "coreml")  # = ssrconv.runtimes.BACKENDS, without importing it
_SUFFIXES = {".onnx": "onnx", ".tflite": "tflite", ".mlpackage": "coreml"}


def _plan(backend: str | None, model: Path | None, all_dir: Path | None, with_keras: bool) -> list:
    """The rows to benchmark, or a one-line error for an impossible request."""
    from ssrconv.benchmarks.harness import artifact_entry, keras_entries

    if all_dir is not None:
        if backend or model:
            raise click.UsageError("--all DIR benchmarks every artifact of DIR: do not combine it "
                                   "with --backend or --model")
        from ssrconv.parity import artifact_paths

        if not all_dir.is_dir():
            raise SsrconvError(f"{all_dir}: not a directory (--all takes an export directory)")
        paths = [p for p in artifact_paths(all_dir) if p.exists()]
        if not paths:
            raise SsrconvError(f"{all_dir}: no artifacts (.onnx, .tflite, .mlpackage) to "
                               "benchmark; run ssrconv export --out DIR first")
        return keras_entries() + [artifact_entry(p) for p in paths]
    if backend is None and model is None:
        raise click.UsageError("give --backend NAME [--model PATH], --model PATH, or --all DIR")
    if model is not None:
        if not model.exists():
            raise SsrconvError(f"{model}: no such file")
        suffix = model.suffix.lower()
        family = _SUFFIXES.get(suffix)
        if family is None:
            raise SsrconvError(f"{model}: unknown artifact type {suffix or '(no suffix)'!r}; "
                               "expected .onnx, .tflite or .mlpackage")
        if backend == "keras":
            raise SsrconvError("--backend keras times the built-in reference (weights from the "
                               f"registry); drop --model {model}")
        if backend is not None and backend != family:
            raise SsrconvError(f"--backend {backend} cannot run {model} (a {family} artifact); "
                               f"use --backend {family} or omit --backend")
        return (keras_entries() if with_keras else []) + [artifact_entry(model)]
    if backend != "keras":
        raise SsrconvError(f"--backend {backend} needs --model PATH (an exported "
                           f"{'.mlpackage' if backend == 'coreml' else '.' + backend} file)")
    return keras_entries()


def _check_output(path: Path | None, option: str, suffixes: tuple[str, ...] = ()) -> None:
    """Fail before measuring anything if a report could not be written."""
    if path is None:
        return
    if suffixes and path.suffix.lower() not in suffixes:
        raise SsrconvError(f"{option} {path}: expected a {' or '.join(suffixes)} file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SsrconvError(f"{option} {path}: directory {parent} does not exist")


@click.command()
@click.option("--backend", type=click.Choice(_BACKENDS), default=None,
              help="Backend to time (keras needs no --model; the others take --model PATH).")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="Exported artifact (.onnx, .tflite, .mlpackage); its backend by default.")
@click.option("--all", "all_dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Benchmark every artifact of an export directory plus the Keras reference, "
                   "interleaved in one run.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Intra-op threads per backend.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Batch size measured besides batch 1.")
@click.option("--runs", type=click.IntRange(min=1), default=200, show_default=True,
              help="Timed calls per backend and batch size.")
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True,
              help="Untimed calls per backend and batch size before timing.")
@click.option("--rounds", type=click.IntRange(min=1), default=10, show_default=True,
              help="Interleaving rounds the timed calls are split into.")
@click.option("--block-seconds", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True,
              help="A backend's block of calls in a round stops after this many seconds "
                   "(at least 2 calls), so slow backends (Keras) get fewer runs.")
@click.option("--faces", "faces_dir", type=click.Path(path_type=Path), default=None,
              envvar="SSRCONV_FACES", show_envvar=True,
              help="Face chips to time on (default: seeded random 0..255 inputs).")
@click.option("--with-keras", is_flag=True,
              help="With --model: also time the Keras reference, for the ratios (--all always does).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--markdown", "md_out", type=click.Path(path_type=Path),
              help="Write the Markdown report (README-ready) here.")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path),
              help="Write a PNG chart (latency and size per backend) here.")
def bench(backend, model, all_dir, threads, batch, runs, warmup, rounds, block_seconds, faces_dir,
          with_keras, json_out, md_out, plot_out) -> int:
    """Size, latency, throughput, efficiency and memory per backend, measured side by side.

    Every backend runs in its own worker process; timed calls are interleaved across backends
    in rounds, so ratios between them are measured under the same machine noise. Progress goes
    to stderr, the table to stdout. Exits 1 if any backend failed (the others are reported).
    """
    from ssrconv.benchmarks.harness import Settings, run_bench
    from ssrconv.benchmarks.report import render_json, render_markdown, render_plot, render_text, write_atomic

    _check_output(json_out, "--json")
    _check_output(md_out, "--markdown")
    _check_output(plot_out, "--plot", (".png",))
    if plot_out:  # before minutes of timing, not after
        from ssrconv._extras import check

        check(("matplotlib",), "plot", "ssrconv bench --plot")
    if faces_dir is not None and not Path(faces_dir).is_dir():
        raise SsrconvError(f"--faces {faces_dir}: not a directory")
    settings = Settings(threads=threads, batch=batch, runs=runs, warmup=warmup, rounds=rounds,
                        block_seconds=block_seconds, faces_dir=str(faces_dir) if faces_dir else None)
    entries = _plan(backend, model, all_dir, with_keras)
    report = run_bench(entries, settings, progress=lambda m: click.echo(f"bench: {m}", err=True))
    click.echo(render_text(report), nl=False)
    if json_out:
        write_atomic(json_out, render_json(report))
    if md_out:
        write_atomic(md_out, render_markdown(report))
    if plot_out:
        write_atomic(plot_out, render_plot(report))
    if report["failed"]:
        click.echo(f"ssrconv: error: {len(report['failed'])} of {len(report['results'])} "
                   f"backends failed: {', '.join(report['failed'])}", err=True)
        return 1
    return 0

"""``ssrconv bench``: size and speed of each backend, measured side by side.

Only click is imported here (the CLI imports this module to register the command); the
harness, numpy and every backend are imported inside the command.
"""

from __future__ import annotations

from pathlib import Path

import click

from ssrconv.errors import SsrconvError
from ssrconv.targets import BACKENDS, ENGINES, REFERENCE_ENGINES

DEFAULT_EXPORT_DIR = Path("ssrconv-out")  # = ExportOptions.out's default


def _label_by_graph(entries: list) -> list:
    """Rows of several --all directories that share a name (the same target exported with
    ``--graph fast`` and ``--graph original``) get their graph in the name."""
    from collections import Counter

    counts = Counter(e.name for e in entries)
    for entry in entries:
        if counts[entry.name] > 1 and entry.graph:
            own_worker = entry.worker_key == entry.name  # each file its own worker process
            entry.name = f"{entry.name} [{entry.graph} graph]"
            if own_worker:
                entry.worker_key = entry.name
    clash = [name for name, n in Counter(e.name for e in entries).items() if n > 1]
    if clash:
        raise SsrconvError(f"--all: {clash[0]} is in more than one directory with the same "
                           "export graph; give directories of different exports")
    return entries


def _plan(backend: str | None, model: Path | None, all_dirs: tuple[Path, ...], with_keras: bool,
          progress, engine: str | None = None, engines=(), reference_engine: str = "auto") -> list:
    """The rows to benchmark, or a one-line error for an impossible request. The reference rows
    are Keras' when TensorFlow is installed, else the numpy engine's (``reference_engine``);
    ``--backend keras`` insists on Keras, as in eval and predict."""
    from ssrconv.artifacts import open_all, open_artifact
    from ssrconv.benchmarks.plan import (add_native_rows, engine_entries, keras_entries,
                                         reference_entries)
    from ssrconv.loading import is_weights_file
    from ssrconv.targets import REFERENCE_BACKEND

    def rows(artifacts):
        # A browser row's in-page time is shown beside native: its native row comes along.
        return add_native_rows([row for a in artifacts for row in engine_entries(a, engine, engines)])

    reference = lambda **kw: reference_entries(reference_engine, **kw)  # noqa: E731
    if all_dirs:
        if backend or model:
            raise click.UsageError("--all DIR benchmarks every artifact of DIR: do not combine it "
                                   "with --backend or --model")
        for all_dir in all_dirs:
            if not all_dir.is_dir():
                raise SsrconvError(f"{all_dir}: not a directory (--all takes an export directory)")
        return reference() + _label_by_graph(rows([a for d in all_dirs for a in open_all(d)]))
    if model is not None:
        if is_weights_file(model):
            if backend not in (None, REFERENCE_BACKEND):
                raise SsrconvError(f"{model} is a weights file: --backend {REFERENCE_BACKEND} "
                                   f"times it, not {backend}")
            if engine or engines:
                raise click.UsageError(f"--engine/--engines run artifacts; {model} is a weights file")
            return reference(weights=model)
        if backend == REFERENCE_BACKEND:
            raise SsrconvError(f"--backend {REFERENCE_BACKEND} times the reference; give it a "
                               f"weights file (.h5) as --model, or drop --model {model}")
        artifact = open_artifact(model)
        if backend is not None and backend != artifact.format.family:
            raise SsrconvError(f"--backend {backend} cannot run {model} (a "
                               f"{artifact.format.family} artifact); use --backend "
                               f"{artifact.format.family} or omit --backend")
        return (reference() if with_keras else []) + rows([artifact])
    if backend is None:
        raise click.UsageError("give --backend NAME, --model PATH, or --all DIR")
    if backend == REFERENCE_BACKEND:
        from ssrconv._extras import check

        check(("tensorflow", "keras"), "export", f"ssrconv bench --backend {REFERENCE_BACKEND}")
        return keras_entries()
    return reference() + rows(_default_artifacts(backend, progress))


def _default_artifacts(family: str, progress) -> list:
    """Every artifact of ``family`` in the default export directory, exporting them there
    first (and saying so) when it holds none: `ssrconv bench --backend tflite` works verbatim."""
    from ssrconv.artifacts import discover

    found = []
    if DEFAULT_EXPORT_DIR.is_dir():
        found = [f.open() for f in discover(DEFAULT_EXPORT_DIR) if f.path.exists()]
    chosen = [a for a in found if a.format.family == family]
    if chosen:
        progress(f"timing the {family} artifacts of {DEFAULT_EXPORT_DIR}/ "
                 f"({', '.join(a.label for a in chosen)})")
        return chosen
    from ssrconv.exporter import export
    from ssrconv.options import ExportOptions
    from ssrconv.targets import precisions_of

    precisions = precisions_of(family, in_all=True)
    progress(f"no {family} artifacts in {DEFAULT_EXPORT_DIR}/: exporting the {family} "
             f"precisions of `--to all` there first ({', '.join(precisions)}; int8 calibrated "
             "data-free unless exported with --calibration)")
    options = ExportOptions(to=(family,), precision=tuple(precisions), out=DEFAULT_EXPORT_DIR)
    return list(export(options, progress=progress))


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
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Backend to time: without --model, every artifact of that backend in "
                   "ssrconv-out/ (exported there first when it has none), beside the reference.")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="One artifact (its backend by default), or a weights file (.h5): the "
                   "reference built from it.")
@click.option("--all", "all_dirs", type=click.Path(path_type=Path), multiple=True, metavar="DIR",
              help="Benchmark every artifact of an export directory plus the reference, "
                   "interleaved in one run; repeat for several (e.g. an export with --graph "
                   "original beside the default one: the 'vs original' columns).")
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
              help="With --model: also time the reference, for the ratios (--all always does).")
@click.option("--reference-engine", type=click.Choice(REFERENCE_ENGINES),
              default="auto", show_default=True,
              help="The reference rows: auto is Keras (model call and model.predict) when "
                   "TensorFlow is installed, else the numpy engine.")
@click.option("--engine", default=None, type=click.Choice(list(ENGINES)),
              help="Run the artifacts on this engine instead of their format's default.")
@click.option("--engines", "engines", default=None, metavar="all|NAME,...",
              help="One row per (artifact, engine) for every engine that reads its format (all) "
                   "or these; browser engines also report their in-page time beside native.")
@click.option("--pipeline-runs", type=click.IntRange(min=0), default=20, show_default=True,
              help="Passes of each sample photo through YuNet + crop + model per row, for the "
                   "end-to-end rows (0: none).")
@click.option("--platform", "platform", default=None, metavar="NAME",
              help="Refuse unless NAME (linux/amd64, linux/arm64) is this machine's platform: "
                   "another instruction set only runs emulated here, and emulated time is not "
                   "speed (parity --platform checks its numerics).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--markdown", "md_out", type=click.Path(path_type=Path),
              help="Write the Markdown report (README-ready) here.")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path),
              help="Write a PNG chart (latency and size per backend) here.")
@click.option("--wide", is_flag=True,
              help="Print every column of the tables (default: the main ones, within 100 "
                   "columns; --markdown and --json always hold all of them).")
def bench(backend, model, all_dirs, threads, batch, runs, warmup, rounds, block_seconds, faces_dir,
          with_keras, reference_engine, engine, engines, pipeline_runs, platform, json_out, md_out,
          plot_out, wide) -> int:
    """Size, latency, throughput, efficiency and memory per backend, measured side by side.

    Every backend runs in its own worker process; timed calls are interleaved across backends
    in rounds, so ratios between them are measured under the same machine noise. Progress goes
    to stderr, the table to stdout. Exits 1 if any backend failed (the others are reported).
    """
    from ssrconv.benchmarks.schedule import run_bench
    from ssrconv.benchmarks.settings import Settings
    from ssrconv.atomic import write_atomic
    from ssrconv.benchmarks.report import render_json, render_markdown, render_plot, render_text

    if platform is not None:
        from ssrconv.platforms import why_not_timed

        refusal = why_not_timed(platform)
        if refusal:
            raise SsrconvError(f"bench --platform {platform}: {refusal}")
    _check_output(json_out, "--json")
    _check_output(md_out, "--markdown")
    _check_output(plot_out, "--plot", (".png",))
    if plot_out:  # before minutes of timing, not after
        from ssrconv._extras import check

        check(("matplotlib",), "plot", "ssrconv bench --plot")
    if faces_dir is not None and not Path(faces_dir).is_dir():
        raise SsrconvError(f"--faces {faces_dir}: not a directory")
    engine_list = [e.strip() for e in engines.split(",") if e.strip()] if engines else []
    unknown = [e for e in engine_list if e != "all" and e not in ENGINES]
    if unknown or (engine_list and engine):
        raise click.UsageError(f"--engines takes all or names from {', '.join(ENGINES)} (got "
                               f"{', '.join(unknown) or engines}), and not together with --engine")
    if reference_engine == "keras":  # before any work: one line, as parity does
        from ssrconv._extras import check

        check(("tensorflow", "keras"), "export", "ssrconv bench --reference-engine keras")
    settings = Settings(threads=threads, batch=batch, runs=runs, warmup=warmup, rounds=rounds,
                        block_seconds=block_seconds, faces_dir=str(faces_dir) if faces_dir else None,
                        pipeline_runs=pipeline_runs)
    say = lambda m: click.echo(f"bench: {m}", err=True)  # noqa: E731
    entries = _plan(backend, model, all_dirs, with_keras, say, engine, engine_list, reference_engine)
    report = run_bench(entries, settings, progress=say)
    click.echo(render_text(report, wide=wide), nl=False)
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

"""The ``ssrconv`` command line: a thin click layer over the library.

Heavy libraries (TensorFlow, coremltools, onnxruntime) are imported inside the commands, so
``ssrconv --help`` is instant. Every expected failure is an :class:`SsrconvError`, printed as one
line with a non-zero exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from ssrconv.atomic import remove_tracked, write_atomic
from ssrconv._version import __version__
from ssrconv.errors import SsrconvError
from ssrconv.reference.family import MEMBERS
from ssrconv.targets import (
    BACKENDS,
    DEFAULT_OPSET,
    ENGINES,
    FAMILIES,
    TF2ONNX_OPSETS,
    INT8_IO_TYPES,
    PRECISIONS,
    REFERENCE_ENGINES,
    artifact_suffixes,
    formats_in_words,
    targets_taking,
)

_TASKS = ("age", "gender", "age-gender")  # = ssrconv.reference.TASKS (kept light: no import)
_SUFFIXES = ", ".join(artifact_suffixes())

_DEBUG = False



def end_on_signal(signum, frame):
    """SIGINT/SIGTERM end the command where it stands: every tracked temporary is removed
    (ssrconv.atomic), one line is printed, exit 130. The stack is not unwound: a
    KeyboardInterrupt raised inside TensorFlow's Python layer and unwound through it corrupted
    its heap ("Fatal glibc error: malloc assertion failure", CI; tensorflow#6968), so nothing of
    a library runs after the signal. Commits defer signals (atomic.deferred_signals), so an
    output directory is never left half-renamed. ``--debug`` unwinds instead, for the traceback.
    """
    if _DEBUG:
        raise KeyboardInterrupt
    remove_tracked()
    try:
        sys.stdout.flush()  # what the command printed so far; may be mid-write: best effort
    except Exception:
        pass
    # os.write, not click.echo: the handler may have interrupted a write to sys.stderr
    prefix = b"\r\033[K" if sys.stderr.isatty() else b""  # over a progress bar's line
    os.write(2, prefix + (_error_line("interrupted") + "\n").encode())
    os._exit(130)


def _error_line(message: str) -> str:
    return f"ssrconv: error: {message}"


def _echo_err(message: str) -> None:
    click.echo(_error_line(message), err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, help=(
    f"Ship SSR-Net (IJCAI 2018 age/gender CNN) to {formats_in_words()}; check each export "
    "against the original on real faces and benchmark them.\n\n"
    "Weights resolve from a path, $SSRCONV_ASSETS (offline mirror), $SSRCONV_CACHE "
    "(default ~/.cache/ssrconv), then a sha256-verified download."))
@click.version_option(__version__, "--version", prog_name="ssrconv")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """The command group (its help text is built from the format table)."""
    global _DEBUG
    _DEBUG = debug


@cli.command()
@click.option("--age-weights", default=None, metavar="NAME|PATH",
              help="Age weights to load (default: age-wiki).")
@click.option("--gender-weights", default=None, metavar="NAME|PATH",
              help="Gender weights to load (default: gender-wiki).")
def info(age_weights: str | None, gender_weights: str | None) -> None:
    """Model size and cost, where each weights file resolves from, library versions."""
    from ssrconv.info import render_info

    click.echo(render_info(age_weights, gender_weights))


_ARCH = click.option(
    "--arch", type=click.Choice(tuple(MEMBERS)), default=None,
    help="The SSR-Net family member every weights file must be (docs/PORTS.md); a file that is "
         "not is refused. Default: each file's member, recognised from its tensor names.")


def _split_weights(values: tuple[str, ...], arch: str | None = None
                   ) -> tuple[str | None, str | None]:
    """Sort ``--weights`` values into (age, gender) by registry kind or by the file's layers;
    with ``arch`` (``--arch``), each file is read as that family member or refused."""
    from ssrconv.assets import ASSETS, resolve
    from ssrconv.reference.weights import read_weights

    chosen: dict[str, str] = {}
    for value in values:
        if value in ASSETS:
            kind = ASSETS[value].kind
            if kind not in ("age", "gender"):
                raise click.BadParameter(f"{value!r} is the {kind} asset, not SSR-Net weights",
                                         param_hint="--weights")
            if arch is not None:
                read_weights(resolve(value).path, arch)
        else:
            kind = read_weights(resolve(value).path, arch).task
        if kind in chosen:
            raise click.BadParameter(f"two {kind} weights given ({chosen[kind]}, {value})",
                                     param_hint="--weights")
        chosen[kind] = value
    return chosen.get("age"), chosen.get("gender")


@cli.command(help=f"Export SSR-Net to {formats_in_words()}, each file with a JSON manifest.")
@click.option("--to", "to", multiple=True, default=("all",), show_default=True,
              type=click.Choice([*FAMILIES, "all"]),
              help="Target family; repeat for several.")
@click.option("--precision", multiple=True, type=click.Choice(PRECISIONS),
              help="Precision; repeat for several. Default: each family's default "
                   "(onnx fp32, tflite fp32, coreml fp16), or every precision with --to all. "
                   "tflite int8 is integer-only (int8-mixed: float first blocks and SSR head); "
                   "onnx int8-integer holds tflite int8's integers as QDQ.")
@click.option("--task", default="age-gender", show_default=True,
              type=click.Choice(_TASKS),
              help="age-gender: one artifact with both heads sharing the input.")
@click.option("--weights", multiple=True, metavar="NAME|PATH",
              help="Weights (registry name, or an .h5, a port's .pth/.pt or MXNet .params path); "
                   "repeat for age and gender. "
                   "Default: age-wiki, gender-wiki.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="Directory of face images (aligned chips or photos) to calibrate int8 on. Without "
                   "it, int8 is calibrated data-free: on inputs distilled from the model's "
                   "BatchNorm statistics (ZeroQ), seeded; adds 1-3 minutes on 2 cores.")
@click.option("--calibration-limit", type=int, default=300, show_default=True,
              help="Use at most this many calibration images.")
@click.option("--faces-kind", "calibration_kind", type=click.Choice(["auto", "chips", "photos"]),
              default="auto", show_default=True,
              help="How --calibration files are read (aligned chips or photos; see parity --help).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("ssrconv-out"),
              show_default=True, help="Output directory.")
@click.option("--opset", type=int, default=None,
              help="ONNX opset of the targets written through ONNX ("
                   + ", ".join(dict.fromkeys(t.format.title for t in targets_taking("opset")))
                   + f"). Default: {DEFAULT_OPSET}, within each target's opsets ("
                   + ", ".join(f"{t.key} {t.opsets_in_words()}" for t in targets_taking("opset")
                               if t.opsets != TF2ONNX_OPSETS)
                   + f"; the others {TF2ONNX_OPSETS[0]}..{TF2ONNX_OPSETS[1]}).")
@click.option("--int8-io", type=click.Choice(INT8_IO_TYPES), default="float32",
              show_default=True, help="Input type of the tflite int8 and int8-mixed files (uint8: camera bytes); "
                   "outputs stay float32.")
@click.option("--image-input", is_flag=True,
              help="CoreML: declare the input as an ImageType (BGR, scale 1) instead of a tensor.")
@click.option("--graph", type=click.Choice(["fast", "original"]), default="fast",
              show_default=True,
              help="fast: the fused, exactness-checked export graph of every target, shaped "
                   "per target (docs/GRAPH.md); original: the reference's layer-for-layer graph.")
@click.option("--batch", type=int, default=None, metavar="N",
              help="Fix the input batch to N in every file (runtimes without an input resize "
                   "call, e.g. LiteRT.js: --batch 1). Default: a variable batch.")
@_ARCH
def export(to, precision, task, weights, calibration, calibration_limit, calibration_kind, out, opset,
           int8_io, image_input, graph, batch, arch) -> None:
    """Export (the help text names every format of the table)."""
    from ssrconv.exporter import export as run_export
    from ssrconv.options import ExportOptions

    options = ExportOptions(to=to, precision=precision, task=task, calibration=calibration,
                            calibration_limit=calibration_limit, calibration_kind=calibration_kind,
                            out=out, opset=opset,
                            int8_io=int8_io, image_input=image_input, graph=graph,
                            batch=batch, arch=arch)
    age, gender = _split_weights(weights, arch)
    if (age and task == "gender") or (gender and task == "age"):
        raise click.BadParameter(f"weights for the other head given with --task {task}",
                                 param_hint="--weights")
    options = ExportOptions(**{**_fields(options), "age_weights": age, "gender_weights": gender})
    artifacts = run_export(options, progress=lambda m: click.echo(m, err=True))
    for artifact in artifacts:
        click.echo(f"{artifact.path}  {artifact.bytes:>9,} bytes  {artifact.target.key}")
    click.echo(f"index: {options.out / 'index.json'}")


_ENGINE_HELP = ("Run on this engine instead of the format's default (" + ", ".join(ENGINES) + ").")


def _load_faces_for(faces_dir: Path | None, kind: str, limit: int | None,
                    crop_rule: str = "margin"):
    """--faces (chips or photos), or the built-in sample photos when none is given, cut by the
    model's ``crop_rule``; says which."""
    from ssrconv.reference.preprocess import load_faces, load_sample_faces

    rule = "" if crop_rule == "margin" else f" (crop rule {crop_rule})"
    if faces_dir is None:
        faces = load_sample_faces(crop_rule=crop_rule)
        click.echo(f"faces: no --faces and no SSRCONV_FACES: using the built-in sample photos "
                   f"(t1.jpg, astronaut.png){rule}: {faces.describe()}", err=True)
        return faces
    faces = load_faces(faces_dir, limit=limit, kind=kind, crop_rule=crop_rule)
    click.echo(f"faces: {faces_dir}{rule}: {faces.describe()}", err=True)
    return faces


def _faces_label(faces_dir: Path | None, faces) -> str:
    """Where the parity faces came from, for the report: directory, faces, files."""
    where = str(faces_dir) if faces_dir is not None else "built-in sample photos t1.jpg, astronaut.png"
    o = faces.origin
    return f"{where}: {len(faces)} faces from {o['files']} files" if o else where


_REFERENCE_ENGINE = click.option(
    "--reference-engine", type=click.Choice(REFERENCE_ENGINES),
    default="auto", show_default=True, envvar="SSRCONV_REFERENCE_ENGINE", show_envvar=True,
    help="What computes the reference: keras (needs ssrconv[export]), numpy (float32; "
         "numpy-float64), or auto (keras when TensorFlow is installed, else numpy).")


@cli.command()
@click.argument("export_dir", required=False, type=click.Path(path_type=Path))
@click.option("--model", "model", type=click.Path(path_type=Path), default=None,
              help="Check one artifact instead of a whole export directory.")
@click.option("--faces", "faces_dir", type=click.Path(path_type=Path), default=None,
              envvar="SSRCONV_FACES", show_envvar=True,
              help="Directory of aligned face chips or of photos to compare on. Without it, "
                   "the 7 faces of the 2 built-in sample photos.")
@click.option("--faces-kind", type=click.Choice(["auto", "chips", "photos"]), default="auto",
              show_default=True, help="How --faces files are read: auto decides per file "
              "(one face filling the image: a chip; else a photo, faces detected with YuNet).")
@click.option("--limit", type=int, default=None,
              help="Use at most this many face files, spread over the directory (not the first N).")
@click.option("--synthetic", type=int, default=64, show_default=True,
              help="Seeded synthetic inputs to add (reported, not budgeted).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--budget", "budget_overrides", multiple=True, metavar="CLASS.STAT=VALUE",
              help="Override a budget, e.g. int8.mean_age=0.2 (classes fp32, fp16, int8; stats "
                   "max_age, mean_age, p99_age, max_p_male, min_gender_agreement).")
@click.option("--weights", multiple=True, type=click.Path(path_type=Path), metavar="PATH",
              help="Weights files the artifacts may have been exported from (found by sha256); "
                   "the reference of unmanaged artifacts. Repeat for age and gender.")
@click.option("--engine", default=None, type=click.Choice(list(ENGINES)), help=_ENGINE_HELP)
@click.option("--engines", "engines", default=None, metavar="all|NAME,...",
              help="Run each artifact on every engine that reads its format (all) or on these; "
                   "one row per (artifact, engine); an engine not installed here is reported "
                   "with the extra that brings it.")
@click.option("--allow-missing-runtimes", is_flag=True,
              help="An artifact whose runtime is not installed here is reported 'not run' "
                   "(naming the extra) and does not fail the check. Default: it fails, as an "
                   "unchecked artifact (a runtime-only CI job checking only what it can run "
                   "passes this).")
@click.option("--platform", "platforms", multiple=True, metavar="NAME",
              help="Run the artifacts on this platform's CPU kernels: linux/amd64, linux/arm64 "
                   "or host (default: this machine's). Repeat for rows side by side. Another "
                   "instruction set runs under QEMU in the root filesystem `make arm64` builds "
                   "(rows marked emulated: numerics, not speed); natively on such a machine.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--markdown", "md_out", type=click.Path(path_type=Path), help="Write a Markdown table here.")
@click.option("--junit", "junit_out", type=click.Path(path_type=Path), help="Write JUnit XML here.")
@_REFERENCE_ENGINE
@_ARCH
def parity(export_dir, model, faces_dir, faces_kind, limit, synthetic, seed, budget_overrides,
           weights, engine, engines, allow_missing_runtimes, platforms, json_out, md_out, junit_out,
           reference_engine, arch) -> int:
    """Compare every artifact with the reference built from its own weights, on real faces;
    exit 1 if any artifact breaks its budget or fails to verify, load or run."""
    from ssrconv.artifacts import discover
    from ssrconv.parity import check, parse_budget_overrides
    from ssrconv.parity_report import render_json, render_junit, render_markdown
    from ssrconv.loading import is_weights_file

    if (export_dir is None) == (model is None):
        raise click.UsageError("give an export directory or --model PATH (one of them)")
    if arch is not None and not weights:
        raise click.UsageError("--arch names the member of --weights files; give --weights "
                               "(exported artifacts name their member in their manifest)")
    if is_weights_file(model or export_dir):
        # One line like any other file parity cannot check (a .pt is a weights suffix now:
        # the PyTorch port's), still exit 2: the command was asked the wrong question.
        from ssrconv.errors import OptionsError

        raise OptionsError(
            f"{model or export_dir} is a weights file: parity compares exported artifacts with "
            "the reference built from their weights; export first (ssrconv export --weights "
            f"{model or export_dir} --out DIR) and run ssrconv parity DIR")
    budgets = parse_budget_overrides(budget_overrides)
    engine_list = [e.strip() for e in engines.split(",") if e.strip()] if engines else []
    unknown = [e for e in engine_list if e != "all" and e not in ENGINES]
    if unknown or (engine_list and engine):
        raise click.UsageError(f"--engines takes all or names from {', '.join(ENGINES)} (got "
                               f"{', '.join(unknown) or engines}), and not together with --engine")
    from ssrconv._extras import check as check_extra
    from ssrconv.reference import reference_engine as resolve_reference

    if resolve_reference(reference_engine) == "keras":  # before any work: one line, not a row each
        check_extra(["tensorflow", "keras"], "export", "ssrconv parity --reference-engine keras")
    from ssrconv.platforms import resolve as resolve_platform

    for name in platforms:  # an unbuilt root filesystem: one line before any work
        resolve_platform(name)
    age_weights, gender_weights = _split_weights(tuple(str(w) for w in weights), arch)
    found = discover(model or export_dir)
    loaded = {}

    def faces_for(crop_rule: str):
        if crop_rule not in loaded:
            loaded[crop_rule] = _load_faces_for(faces_dir, faces_kind, limit, crop_rule)
        return loaded[crop_rule].inputs

    faces = _load_faces_for(faces_dir, faces_kind, limit)
    loaded["margin"] = faces
    report = check(found, faces.inputs, faces_dir=_faces_label(faces_dir, faces),
                   faces_for=faces_for,
                   synthetic=synthetic, seed=seed, budgets=budgets, age_weights=age_weights,
                   gender_weights=gender_weights, weights_candidates=weights, engine=engine,
                   engines=engine_list,
                   progress=lambda m: click.echo(m, err=True), raise_on_failure=False,
                   reference_engine=reference_engine, platforms=platforms)
    markdown = render_markdown(report)
    click.echo(markdown)
    if json_out:
        write_atomic(json_out, render_json(report))
    if md_out:
        write_atomic(md_out, markdown)
    if junit_out:
        write_atomic(junit_out, render_junit(report))
    if not report.passed:
        broken = [r.artifact for r in report.results if not r.passed]
        _echo_err(f"parity failed for {len(broken)} of {len(report.results)} artifacts: "
                  f"{', '.join(broken)}")
        return 1
    unchecked = report.unchecked()
    if unchecked and not allow_missing_runtimes:
        _echo_err(f"{len(unchecked)} of {len(report.results)} artifacts not run, their runtime "
                  "is not installed here: " + ", ".join(
                      f"{name} (pip install 'ssrconv[{extra}]')" if "install" not in extra
                      else f"{name} ({extra})" for name, extra in unchecked.items())
                  + "; install it, or pass --allow-missing-runtimes to check only what this "
                  "install runs")
        return 1
    not_run = sum(bool(r.not_run) for r in report.results)
    click.echo(f"parity ok: {len(report.results) - not_run} checks within budget"
               + (f", {not_run} not run (see the report)" if not_run else ""), err=True)
    return 0


def _model_runtime(model: Path | None, backend: str | None, engine: str | None,
                   age_weights=None, gender_weights=None, reference_engine: str = "auto",
                   arch: str | None = None):
    """The runtime eval and predict use: an artifact on its (or the given) engine, the reference
    built from a weights file given as --model, or the default reference (on
    --reference-engine; --backend keras insists on Keras). ``arch`` (``--arch``): the family
    member the weights files must be."""
    from ssrconv.assets import DEFAULT_AGE_WEIGHTS, DEFAULT_GENDER_WEIGHTS
    from ssrconv.reference import load_reference_runtime
    from ssrconv.loading import is_weights_file, load_runtime
    from ssrconv.targets import REFERENCE_BACKEND

    if arch is not None:
        if model is not None and not is_weights_file(model):
            raise click.UsageError(f"--arch names the member of a weights file; {model} is an "
                                   "exported artifact (its manifest names its member)")
        files = ((str(model),) if model is not None else
                 (age_weights or DEFAULT_AGE_WEIGHTS, gender_weights or DEFAULT_GENDER_WEIGHTS))
        _split_weights(files, arch)

    if backend == REFERENCE_BACKEND:
        reference_engine = "keras"
    if model is None:
        if backend not in (None, REFERENCE_BACKEND):
            raise click.UsageError(f"--backend {backend} needs --model PATH")
        if engine is not None:
            raise click.UsageError("--engine applies to --model artifacts")
        return load_reference_runtime("age-gender", age_weights, gender_weights,
                                      engine=reference_engine)
    if age_weights or gender_weights:
        raise click.UsageError("--age-weights/--gender-weights build the reference: drop --model "
                               "(or give the weights file itself as --model)")
    if is_weights_file(model) and engine is not None:
        raise click.UsageError(f"--engine runs artifacts; {model} is a weights file")
    if is_weights_file(model):
        from ssrconv.loading import reference_from_weights

        return reference_from_weights(model, engine=reference_engine)
    return load_runtime(model, backend=backend, engine=engine)


@cli.command(name="eval")
@click.argument("faces_dir", type=click.Path(path_type=Path))
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help=f"An exported artifact ({_SUFFIXES}), or a weights file (.h5, .pth, .params): the reference "
                   "built from it.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Backend (default: from --model's format, or keras without --model).")
@click.option("--engine", default=None, type=click.Choice(list(ENGINES)), help=_ENGINE_HELP)
@click.option("--age-weights", default=None, metavar="NAME|PATH", help="Keras backend: age weights.")
@click.option("--gender-weights", default=None, metavar="NAME|PATH", help="Keras backend: gender weights.")
@click.option("--faces-kind", type=click.Choice(["auto", "chips", "photos"]), default="auto",
              show_default=True, help="How FACES_DIR files are read (see parity --help).")
@click.option("--json", "json_out", type=click.Path(path_type=Path),
              help="Write per-image predictions and the summary here.")
@_REFERENCE_ENGINE
@_ARCH
def eval_(faces_dir, model, backend, engine, age_weights, gender_weights, faces_kind,
          json_out, reference_engine, arch) -> None:
    """Age MAE (adults 16+ and all) and gender accuracy on labelled faces."""
    import json

    from ssrconv.evaluate import evaluate, render_summary

    runtime = _model_runtime(model, backend, engine, age_weights, gender_weights, reference_engine,
                             arch)
    faces = _load_faces_for(faces_dir, faces_kind, None, _crop_rule_for(model, runtime))
    result = evaluate(runtime, faces)
    click.echo(render_summary(result["summary"]))
    if json_out:
        write_atomic(json_out, json.dumps(result, indent=2) + "\n")


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Backend (default: from --model's format, or keras without --model).")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help=f"An exported artifact ({_SUFFIXES}), or a weights file (.h5, .pth, .params): the reference "
                   "built from it.")
@click.option("--engine", default=None, type=click.Choice(list(ENGINES)), help=_ENGINE_HELP)
@click.option("--detector", type=click.Choice(["yunet", "haar"]), default="yunet", show_default=True,
              help="Face detector (haar: OpenCV's bundled cascade, a weaker fallback).")
@click.option("--min-face", type=int, default=0, show_default=True,
              help="Ignore faces whose box is smaller than this many pixels.")
@click.option("--every", type=int, default=1, show_default=True,
              help="Videos: process every Nth frame.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write annotated images/videos and predictions.{json,csv} here.")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True)
@click.option("--compare", is_flag=True, help="Also run the reference and print the differences.")
@_REFERENCE_ENGINE
@_ARCH
def predict(inputs, backend, model, engine, detector, min_face, every, out, fmt, compare,
            reference_engine, arch) -> int:
    """Ages and genders of the faces in images, directories of images, or videos."""
    from ssrconv.detect import make_detector
    from ssrconv.predict import Predictor, to_csv, to_json
    from ssrconv.reference import load_reference_runtime

    if every < 1:
        raise click.BadParameter("must be at least 1", param_hint="--every")
    if min_face < 0:
        raise click.BadParameter("must be >= 0", param_hint="--min-face")
    runtime = _model_runtime(model, backend, engine, reference_engine=reference_engine,
                             arch=arch)
    crop_rule = _crop_rule_for(model, runtime)
    if crop_rule != "margin" and detector != "yunet":
        raise click.BadParameter(f"this model's faces are cut by {crop_rule}, which needs the "
                                 "5 landmarks only yunet gives", param_hint="--detector")
    found_detector = make_detector(detector)
    if found_detector.is_fallback:
        click.echo(f"note: using the {detector} detector, a fallback that misses more faces than yunet",
                   err=True)
    reference = (load_reference_runtime("age-gender", engine=reference_engine)
                 if compare else None)
    predictor = Predictor(runtime, found_detector, min_face=min_face, reference=reference,
                          crop_rule=crop_rule)
    result = predictor.run(list(inputs), out_dir=out, every=every,
                           progress=lambda m: click.echo(m, err=True))
    text = to_json(result) if fmt == "json" else to_csv(result)
    click.echo(text, nl=False)
    if out is not None:
        write_atomic(out / f"predictions.{fmt}", text)
    if compare and result.records:
        diffs = [abs(r["age_diff"]) for r in result.records if "age_diff" in r]
        if diffs:
            click.echo(f"compare: {runtime.engine} vs {reference.engine} reference: max |age diff| "
                       f"{max(diffs):.4f} y over {len(diffs)} faces", err=True)
    if not result.ok:
        _echo_err(f"{len(result.failures)} of the inputs could not be processed (see 'failures')")
        return 1
    return 0


def _crop_rule_for(model, runtime) -> str:
    """The crop rule of the model a command runs: its manifest's contract for an artifact, its
    weights' family members for a reference (ssrconv.reference.family)."""
    from ssrconv.reference.preprocess import contract_for, crop_rule_of
    from ssrconv.loading import is_weights_file

    members = getattr(runtime, "members", None)
    if members:
        return contract_for(members)["crop_rule"]
    if model is not None and not is_weights_file(model):
        from ssrconv.artifacts import open_artifact

        manifest = open_artifact(model).manifest
        return crop_rule_of(manifest.get("preprocessing") if manifest else None)
    return "margin"


def _fields(options) -> dict:
    import dataclasses

    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.init}


def _register_bench() -> None:
    """`ssrconv bench` lives in ssrconv.benchmarks.command (click only at import time)."""
    from ssrconv.benchmarks.command import bench

    cli.add_command(bench)


_register_bench()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, turn errors into one line and an exit code."""
    signal.signal(signal.SIGTERM, end_on_signal)
    signal.signal(signal.SIGINT, end_on_signal)
    try:
        result = cli.main(args=argv, prog_name="ssrconv", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as err:  # a prompt's Ctrl-C; --debug's
        if _DEBUG and isinstance(err, KeyboardInterrupt):
            raise
        _echo_err("interrupted")
        sys.exit(130)
    except Exception as err:
        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if _DEBUG:
            raise
        if isinstance(err, SsrconvError):
            _echo_err(str(err))
            sys.exit(err.exit_code)
        # an ssrconv bug or an unexpected library failure
        _echo_err(f"unexpected {type(err).__name__}: {err} (rerun with --debug for the traceback)")
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()

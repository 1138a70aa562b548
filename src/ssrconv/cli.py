"""The ``ssrconv`` command line: a thin click layer over the library.

Heavy libraries (TensorFlow, coremltools, onnxruntime) are imported inside the commands, so
``ssrconv --help`` is instant. Every expected failure is an :class:`SsrconvError`, printed as one
line with a non-zero exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from ssrconv._version import __version__
from ssrconv.errors import SsrconvError

_DEBUG = False


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _echo_err(message: str) -> None:
    click.echo(f"ssrconv: error: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ssrconv")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """Ship SSR-Net (IJCAI 2018 age/gender CNN) to ONNX, TFLite and CoreML.

    Weights resolve from a path, $SSRCONV_ASSETS (offline mirror), $SSRCONV_CACHE
    (default ~/.cache/ssrconv), then a sha256-verified download.
    """
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


def _split_weights(values: tuple[str, ...]) -> tuple[str | None, str | None]:
    """Sort ``--weights`` values into (age, gender) by registry kind or by the file's layers."""
    from ssrconv.reference.assets import ASSETS, resolve
    from ssrconv.reference.weights import read_h5_weights

    chosen: dict[str, str] = {}
    for value in values:
        if value in ASSETS:
            kind = ASSETS[value].kind
            if kind not in ("age", "gender"):
                raise click.BadParameter(f"{value!r} is the {kind} asset, not SSR-Net weights",
                                         param_hint="--weights")
        else:
            kind = read_h5_weights(resolve(value).path).task
        if kind in chosen:
            raise click.BadParameter(f"two {kind} weights given ({chosen[kind]}, {value})",
                                     param_hint="--weights")
        chosen[kind] = value
    return chosen.get("age"), chosen.get("gender")


@cli.command()
@click.option("--to", "to", multiple=True, default=("all",), show_default=True,
              type=click.Choice(["onnx", "tflite", "coreml", "all"]),
              help="Target family; repeat for several.")
@click.option("--precision", multiple=True, type=click.Choice(["fp32", "fp16", "dynamic", "int8"]),
              help="Precision; repeat for several. Default: each family's default "
                   "(onnx fp32, tflite fp32, coreml fp16), or every precision with --to all.")
@click.option("--task", default="age-gender", show_default=True,
              type=click.Choice(["age", "gender", "age-gender"]),
              help="age-gender: one artifact with both heads sharing the input.")
@click.option("--weights", multiple=True, metavar="NAME|PATH",
              help="Weights (registry name or .h5 path); repeat for age and gender. "
                   "Default: age-wiki, gender-wiki.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="Directory of face images (aligned chips) to calibrate int8 on.")
@click.option("--calibration-limit", type=int, default=300, show_default=True,
              help="Use at most this many calibration images.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("ssrconv-out"),
              show_default=True, help="Output directory.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset.")
@click.option("--int8-io", type=click.Choice(["float32", "int8", "uint8"]), default="float32",
              show_default=True, help="I/O type of the tflite int8 model (uint8: camera bytes).")
@click.option("--image-input", is_flag=True,
              help="CoreML: declare the input as an ImageType (BGR, scale 1) instead of a tensor.")
def export(to, precision, task, weights, calibration, calibration_limit, out, opset, int8_io,
           image_input) -> None:
    """Export SSR-Net to ONNX, TFLite and/or CoreML, each file with a JSON manifest."""
    from ssrconv.exporter import export as run_export
    from ssrconv.options import ExportOptions

    options = ExportOptions(to=to, precision=precision, task=task, calibration=calibration,
                            calibration_limit=calibration_limit, out=out, opset=opset,
                            int8_io=int8_io, image_input=image_input)
    age, gender = _split_weights(weights)
    if (age and task == "gender") or (gender and task == "age"):
        raise click.BadParameter(f"weights for the other head given with --task {task}",
                                 param_hint="--weights")
    options = ExportOptions(**{**_fields(options), "age_weights": age, "gender_weights": gender})
    artifacts = run_export(options, progress=lambda m: click.echo(m, err=True))
    for artifact in artifacts:
        click.echo(f"{artifact.path}  {artifact.bytes:>9,} bytes  {artifact.target.key}")
    click.echo(f"index: {options.out / 'index.json'}")


def _fields(options) -> dict:
    import dataclasses

    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.init}


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, turn errors into one line and an exit code."""
    # SIGTERM unwinds like Ctrl-C, so exports clean their temporary files up.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        result = cli.main(args=argv, prog_name="ssrconv", standalone_mode=False)
    except click.exceptions.Abort:
        _echo_err("interrupted")
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except SsrconvError as err:
        if _DEBUG:
            raise
        _echo_err(str(err))
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        _echo_err("interrupted")
        sys.exit(130)
    except Exception as err:  # an ssrconv bug or an unexpected library failure
        if _DEBUG:
            raise
        _echo_err(f"unexpected {type(err).__name__}: {err} (rerun with --debug for the traceback)")
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()

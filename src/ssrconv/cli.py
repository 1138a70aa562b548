"""The ``ssrconv`` command line: a thin click layer over the library.

Heavy libraries (TensorFlow, coremltools, onnxruntime) are imported inside the commands, so
``ssrconv --help`` is instant. Every expected failure is an :class:`SsrconvError`, printed as one
line with a non-zero exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys

import click

from ssrconv._version import __version__
from ssrconv.errors import SsrconvError

_DEBUG = False


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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, turn errors into one line and an exit code."""
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

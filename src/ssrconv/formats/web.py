"""The .web folder read side: its ``model.json`` config, verify, describe, file precision and
static batch (of the inner ONNX model), and where the pinned npm browser runtimes live (the
web converter vendors them, the browser runtimes serve them)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ssrconv.errors import ModelFileError, SsrconvError

APP_FILES = ("index.html", "app.mjs", "ssrconv.mjs")
ORT_PACKAGE = "onnxruntime-web"


CONFIG_FILE = "model.json"


WEB_SCHEMA = 1


class BrowserSetupError(SsrconvError):
    """The npm packages (or the browser) the web export and browser engines need are missing."""


def node_modules_dir() -> Path:
    """The ``node_modules`` holding the pinned browser runtimes: ``$SSRCONV_NODE_MODULES``, else
    the one beside the project's ``package.json`` (the source checkout ``make browser`` ran in,
    found from this file or the working directory)."""
    env = os.environ.get("SSRCONV_NODE_MODULES")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [p / "node_modules" for p in (*here.parents, *Path.cwd().resolve().parents,
                                                 Path.cwd().resolve())
                   if (p / "package.json").is_file()]
    for path in candidates:
        if (path / ORT_PACKAGE / "package.json").is_file():
            return path
    raise BrowserSetupError(f"{ORT_PACKAGE} is not installed (no node_modules/{ORT_PACKAGE} beside "
                            "ssrconv's package.json); run `make browser` (npm ci) in the ssrconv "
                            "checkout, or set SSRCONV_NODE_MODULES")


def package_version(name: str, modules: Path | None = None) -> str:
    """The installed version of npm package ``name``."""
    modules = modules or node_modules_dir()
    try:
        return json.loads((modules / name / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        raise BrowserSetupError(f"{modules / name}: not an installed npm package; "
                                "run `make browser`") from None


def read_config(path: Path) -> dict:
    """The folder's ``model.json``; ModelFileError (one line) when absent or malformed."""
    try:
        config = json.loads((Path(path) / CONFIG_FILE).read_text())
    except OSError:
        raise ModelFileError(f"{path}: not an ssrconv web folder (no readable {CONFIG_FILE})") from None
    except ValueError as err:
        raise ModelFileError(f"{path}/{CONFIG_FILE}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise ModelFileError(f"{path}/{CONFIG_FILE}: names no model; re-export with --to web")
    return config


def static_batch(path: Path) -> int | None:
    """The static input batch of the folder's model (``export --batch N``), or None."""
    from ssrconv.formats import onnx as onnx_format

    return onnx_format.static_batch(Path(path) / read_config(path)["model"])


def verify(path: Path) -> None:
    """Cheap structural check of a ``.web`` folder: its config, app and runtime files exist, the
    wasm starts with the wasm magic, and the models parse as ONNX; ModelFileError otherwise."""
    import onnx

    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"{path}: a .web export is a directory; this is not one")
    config = read_config(path)
    files = [*APP_FILES, config["model"], *config.get("runtime_files", [])]
    if config.get("detector"):
        files.append(config["detector"])
    for name in files:
        file = path / name
        if not isinstance(name, str) or ".." in Path(name).parts or not file.is_file():
            raise ModelFileError(f"{path}: {name} is missing; re-export with --to web")
        if name.endswith(".wasm") and file.read_bytes()[:4] != b"\0asm":
            raise ModelFileError(f"{file}: not a WebAssembly module; re-export with --to web")
        if name.endswith(".onnx"):
            try:
                onnx.load_model_from_string(file.read_bytes())
            except Exception as err:  # protobuf raises several unrelated types on garbage
                raise ModelFileError(f"{file}: not a readable ONNX model ({type(err).__name__})") from None


def describe(path: Path) -> dict:
    """The model's inputs/outputs/ops (read back from the ONNX inside), the folder's files
    with sizes, and the vendored runtime's version."""
    from ssrconv.formats import onnx as onnx_format

    path = Path(path)
    config = read_config(path)
    described = onnx_format.describe(path / config["model"])
    described["files"] = {p.relative_to(path).as_posix(): p.stat().st_size
                          for p in sorted(path.rglob("*")) if p.is_file()}
    described["web"] = {"model": config["model"], "detector": config.get("detector"),
                        "runtime": config.get("runtime")}
    return described


def file_precision(path: Path) -> str:
    """The precision of the folder's model, read from the ONNX file inside it."""
    from ssrconv.formats.onnx import file_precision as onnx_precision

    return onnx_precision(Path(path) / read_config(path)["model"])

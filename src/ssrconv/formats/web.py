"""The .web folder: its layout and read side. Its ``model.json`` config, verify, describe, file
precision and static batch (of the inner ONNX model); where the pinned npm browser runtimes
live and how a folder is laid out (the app, the vendored runtime, the model, YuNet): the web
converter writes its export with :func:`build_folder`, the browser runtimes serve a bare
.onnx from a private folder built the same way, so neither imports the other."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ssrconv.errors import ModelFileError, SsrconvError

APP_DIR = Path(__file__).with_name("web_app")  # package data: the app copied into every folder
APP_FILES = ("index.html", "app.mjs", "ssrconv.mjs")
ORT_PACKAGE = "onnxruntime-web"
# The wasm-only build: ort.wasm.min.mjs loads the .mjs/.wasm pair below from env.wasm.wasmPaths.
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
DETECTOR_FILE = "yunet.onnx"
LITERT_PACKAGE = "@litertjs/core"
# LiteRT.js picks its wasm by the browser's features; the threaded and JSPI builds are not used.
LITERT_WASM = ("litert_wasm_internal.js", "litert_wasm_internal.wasm",
               "litert_wasm_compat_internal.js", "litert_wasm_compat_internal.wasm")
# @litertjs/core imports its helper by bare name: pages map it with an import map.
LITERT_IMPORT_MAP = {"imports": {"@litertjs/wasm-utils": "./litert/wasm-utils.mjs"}}
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


def inner_artifact(path: Path) -> Path:
    """The model the folder runs (an .onnx file inside it, named by ``model.json``)."""
    return Path(path) / read_config(path)["model"]


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


def vendor_ort(dest: Path) -> str:
    """Copy the onnxruntime-web wasm runtime into ``dest/ort``; returns its version."""
    modules = node_modules_dir()
    dist = modules / ORT_PACKAGE / "dist"
    (dest / "ort").mkdir(parents=True, exist_ok=True)
    for name in ORT_FILES:
        if not (dist / name).is_file():
            raise BrowserSetupError(f"{dist / name} is missing: the installed {ORT_PACKAGE} "
                                    "does not match package.json; run `make browser` (npm ci)")
        shutil.copyfile(dist / name, dest / "ort" / name)
    return package_version(ORT_PACKAGE, modules)


def vendor_litert(dest: Path) -> str:
    """Copy LiteRT.js (core module, its wasm-utils helper, the wasm builds it chooses from) into
    ``dest/litert``; returns its version."""
    modules = node_modules_dir()
    core, utils = modules / LITERT_PACKAGE, modules / "@litertjs" / "wasm-utils"
    files = {core / "dist" / "index.js": "litert.mjs", utils / "dist" / "index.js": "wasm-utils.mjs",
             **{core / "wasm" / n: f"wasm/{n}" for n in LITERT_WASM}}
    (dest / "litert" / "wasm").mkdir(parents=True, exist_ok=True)
    for source, name in files.items():
        if not source.is_file():
            raise BrowserSetupError(f"{source} is missing: the installed {LITERT_PACKAGE} does not "
                                    "match package.json; run `make browser` (npm ci)")
        shutil.copyfile(source, dest / "litert" / name)
    return package_version(LITERT_PACKAGE, modules)


def yunet_variable_size(source: Path, dest: Path) -> None:
    """YuNet with symbolic height/width: the zoo file declares 1x3x640x640, which
    onnxruntime(-web) enforces, but the graph is size-agnostic (OpenCV reshapes it per image).
    Its shape-inference hints (``value_info``) name 640-derived sizes, so they go too."""
    import onnx

    proto = onnx.load(str(source))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ModelFileError(f"{source}: not a YuNet model (input of rank {len(dims)}, expected 4)")
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in proto.graph.output:
        output.type.tensor_type.shape.dim[1].dim_param = "anchors"
    del proto.graph.value_info[:]
    onnx.save(proto, str(dest))


def build_folder(dest: Path, onnx_path: Path, model_name: str, *, detector: bool = True,
                 extra_config: dict | None = None) -> dict:
    """Lay out a browser folder at ``dest``: the app, the vendored runtime, the model (copied
    from ``onnx_path`` as ``model_name``) and YuNet (unless ``detector`` is False, as for the
    browser engine's private folder of a bare .onnx). Returns the written ``model.json``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in APP_FILES:
        shutil.copyfile(APP_DIR / name, dest / name)
    ort_version = vendor_ort(dest)
    if Path(onnx_path) != dest / model_name:
        shutil.copyfile(onnx_path, dest / model_name)
    config = {"schema": WEB_SCHEMA, "model": model_name, "runtime": {ORT_PACKAGE: ort_version},
              "runtime_files": [f"ort/{n}" for n in ORT_FILES]}
    if detector:
        from ssrconv.assets import resolve

        yunet = resolve("yunet")
        yunet_variable_size(yunet.path, dest / DETECTOR_FILE)
        config["detector"] = DETECTOR_FILE
        config["detector_source"] = {"name": "yunet", "file": yunet.path.name,
                                     "sha256": yunet.sha256}
    config.update(extra_config or {})
    (dest / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config

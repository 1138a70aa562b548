"""``--to web``: a self-contained static folder (a ``.web`` directory package) that runs SSR-Net
in any browser with onnxruntime-web (WebAssembly).

The folder holds the fp32 ONNX (written by :mod:`ssrconv.converters.onnx`, metadata included),
YuNet with a variable input size (from the asset registry), a plain-JS app (``index.html``,
``app.mjs``, ``ssrconv.mjs``: detect, crop by the preprocessing contract, read, draw "34, M")
and the onnxruntime-web runtime files, copied at export time from ``node_modules`` as pinned by
the project's ``package.json`` + ``package-lock.json`` (``make browser`` runs ``npm ci``).
Drop it on any static server; multi-threaded wasm needs the server to send COOP/COEP headers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ssrconv.errors import ModelFileError, SsrconvError
from ssrconv.formats.web import (APP_FILES, CONFIG_FILE, ORT_PACKAGE, WEB_SCHEMA, BrowserSetupError,
                                 node_modules_dir, package_version)

APP_DIR = Path(__file__).with_name("web_app")
# The wasm-only build: ort.wasm.min.mjs loads the .mjs/.wasm pair below from env.wasm.wasmPaths.
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
DETECTOR_FILE = "yunet.onnx"

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


LITERT_PACKAGE = "@litertjs/core"
# LiteRT.js picks its wasm by the browser's features; the threaded and JSPI builds are not used.
LITERT_WASM = ("litert_wasm_internal.js", "litert_wasm_internal.wasm",
               "litert_wasm_compat_internal.js", "litert_wasm_compat_internal.wasm")
# @litertjs/core imports its helper by bare name: pages map it with an import map.
LITERT_IMPORT_MAP = {"imports": {"@litertjs/wasm-utils": "./litert/wasm-utils.mjs"}}


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


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Write the ``.web`` folder for ``model`` at ``dest`` (fp32 ONNX inside, see module doc)."""
    from ssrconv.converters import onnx as onnx_converter

    if target.precision != "fp32":
        raise SsrconvError(f"--to web offers fp32 only, not {target.precision}")
    model_name = Path(target.filename(options.task)).with_suffix(".onnx").name
    dest.mkdir(parents=True)
    extra = onnx_converter.convert(model, target, options, dest / model_name, calibration, metadata)
    config = build_folder(dest, dest / model_name, model_name)
    return {**extra, "web": {"model": model_name, "runtime": config["runtime"],
                             "detector": config["detector_source"]}}




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

from pathlib import Path

from ssrconv.errors import SsrconvError
from ssrconv.formats.web import build_folder


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Write the ``.web`` folder for ``model`` at ``dest`` (fp32 ONNX inside, see module doc)."""
    from ssrconv.converters import onnx as onnx_converter

    if target.precision != "fp32":
        raise SsrconvError(f"--to web offers fp32 only, not {target.precision}")
    from ssrconv.targets import FORMATS

    inner = FORMATS[target.format.inner_family]
    model_name = Path(target.filename(options.task)).with_suffix(inner.suffix).name
    dest.mkdir(parents=True)
    extra = onnx_converter.convert(model, target, options, dest / model_name, calibration, metadata)
    config = build_folder(dest, dest / model_name, model_name)
    return {**extra, "web": {"model": model_name, "runtime": config["runtime"],
                             "detector": config["detector_source"]}}

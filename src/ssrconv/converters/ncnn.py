"""ncnn export: a directory package ``<stem>.ncnn/`` holding ``<stem>.ncnn.param`` (the graph,
text) and ``<stem>.ncnn.bin`` (the weights), converted by ``pnnx`` from the project's ONNX export.

What the files expect (the one input contract, see docs/CONVERTERS.md "ncnn"): one face per
call, the contract's 64 x 64 x 3 BGR 0..255 float array as it is (NHWC without the batch dim).
ncnn reads that array as a Mat with c=64, h=64, w=3; the graph's first layer (``Permute``,
inserted by pnnx for tf2onnx's NHWC->NCHW transpose) turns it into ncnn's 3 x 64 x 64. The
blobs are renamed from pnnx's ``in0``/``out0``/``out1`` to ``face_bgr``/``age``/``p_male``.

Precisions: fp32 writes float32 weights (``fp16=0``: pnnx's default ``fp16=1`` stores every
weight as float16, which alone cost 0.15 years); fp16 keeps pnnx's float16 weights and is run
with ncnn's fp16 storage and arithmetic.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
from pathlib import Path

from ssrconv._extras import INSTALL_COMMANDS
from ssrconv.atomic import scratch_dir
from ssrconv.errors import MissingExtraError, ModelFileError, SsrconvError, clip

PARAM_MAGIC = "7767517"
PARAM_SUFFIX = ".ncnn.param"
BIN_SUFFIX = ".ncnn.bin"
INPUT_NAME = "face_bgr"
# pnnx's names for the graph's input and outputs (outN in the ONNX graph's output order).
_PNNX_INPUT = "in0"
_PNNX_OUTPUT = "out{}"
# pnnx writes these besides the ncnn files; ncnn needs none of them.
_PNNX_EXTRAS = ("pnnxparam", "pnnxbin", "pnnxpy", "pnnxonnx", "ncnnpy")
_TIMEOUT_S = 600


class ConverterError(SsrconvError):
    """pnnx failed to convert the ONNX graph."""


def package_files(path: Path) -> tuple[Path, Path]:
    """(param, bin) of an ncnn package directory; ModelFileError unless exactly one of each."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"{path}: not an ncnn package (expected a directory holding "
                             f"<name>{PARAM_SUFFIX} and <name>{BIN_SUFFIX}); re-export it with "
                             "ssrconv export --to ncnn")
    params = sorted(path.glob("*" + PARAM_SUFFIX))
    bins = sorted(path.glob("*" + BIN_SUFFIX))
    if len(params) != 1 or len(bins) != 1:
        raise ModelFileError(f"{path}: an ncnn package holds one {PARAM_SUFFIX} and one "
                             f"{BIN_SUFFIX}, found {len(params)} and {len(bins)}; re-export it")
    return params[0], bins[0]


def pnnx_executable() -> Path:
    """The pnnx converter binary inside the installed ``pnnx`` wheel, found without importing
    the package: ``import pnnx`` imports torch (for its PyTorch frontend), which the ONNX path
    never uses, and the wheel's ``torch`` requirement is what made a full install pull 5 GB of
    CUDA packages. ``make setup`` installs pnnx with ``--no-deps``."""
    spec = importlib.util.find_spec("pnnx")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        exe = Path(folder) / ("pnnx.exe" if os.name == "nt" else "pnnx")
        if exe.is_file():
            return exe
    raise MissingExtraError(f"ssrconv export --to ncnn needs the pnnx converter binary "
                            f"(pnnx is not installed): {INSTALL_COMMANDS['pnnx']}")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Convert ``model`` (via its ONNX export) to an ncnn package directory at ``dest``."""
    import onnx

    from ssrconv.converters.onnx import to_proto

    pnnx_exe = pnnx_executable()

    stem = Path(target.filename(options.task)).name[: -len(target.suffix)]
    proto = to_proto(model, options.opset, options.batch)
    outputs = [o.name for o in proto.graph.output]
    # The stage tensors become extra graph outputs, so that they keep a findable name in the
    # param (pnnx numbers every other blob); ncnn computes a blob only when it is extracted,
    # so they cost nothing at run time. They keep their ONNX names (see runtimes.stages).
    outputs += _add_stage_outputs(proto, model.output_names)
    fp16 = 1 if target.precision == "fp16" else 0
    with scratch_dir("ssrconv-pnnx-") as tmp:
        work = Path(tmp)
        onnx.save(proto, str(work / "model.onnx"))
        command = [str(pnnx_exe), "model.onnx", "inputshape=[1,64,64,3]", f"fp16={fp16}",
                   f"ncnnparam={stem}{PARAM_SUFFIX}", f"ncnnbin={stem}{BIN_SUFFIX}"]
        command += [f"{key}=scratch.{key}" for key in _PNNX_EXTRAS]
        try:
            done = subprocess.run(command, cwd=work, capture_output=True, text=True,
                                  timeout=_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise ConverterError(f"pnnx did not finish in {_TIMEOUT_S} s") from None
        param_src, bin_src = work / f"{stem}{PARAM_SUFFIX}", work / f"{stem}{BIN_SUFFIX}"
        if done.returncode != 0 or not param_src.is_file() or not bin_src.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ConverterError(f"pnnx failed (exit {done.returncode}): {clip(tail[0])}")
        names = {_PNNX_INPUT: INPUT_NAME}
        names.update({_PNNX_OUTPUT.format(i): name for i, name in enumerate(outputs)})
        text = _rename_blobs(param_src.read_text(encoding="utf-8"), names)
        dest.mkdir()
        (dest / param_src.name).write_text(text, encoding="utf-8")
        os.replace(bin_src, dest / bin_src.name)
    verify(dest)
    import ncnn

    return {"converter": "pnnx", "pnnx_fp16_weights": bool(fp16),
            "converter_versions": {"pnnx": _version("pnnx"),
                                   "ncnn": getattr(ncnn, "__version__", None)},
            "input_layout": "one face per call: 64x64x3 BGR (the contract's NHWC without the "
                            "batch dim), read by ncnn as c=64 h=64 w=3; a Permute layer makes "
                            "it CHW"}


def _add_stage_outputs(proto, heads) -> list[str]:
    """Append the tensors holding the stage tensors of ``heads`` to the graph outputs (the
    stage layers' own, or the fast graph's fused ones: ssrconv.runtimes.stages.locate); their
    names, in order."""
    import onnx

    from ssrconv.runtimes.stages import locate, stage_specs

    heads = tuple(heads)
    produced = {name: name for node in proto.graph.node for name in node.output}
    names = list(dict.fromkeys(locate(spec, heads, lambda units: produced)[0]
                               for spec in stage_specs(heads)))
    for name in names:
        proto.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return names


def _rename_blobs(text: str, names: dict[str, str]) -> str:
    """The param text with whole-token blob names replaced (layer lines only)."""
    lines = text.splitlines()
    out = lines[:2]
    for line in lines[2:]:
        tokens = line.split()
        if len(tokens) < 4:
            out.append(line)
            continue
        n_in, n_out = int(tokens[2]), int(tokens[3])
        blobs = [names.get(t, t) for t in tokens[4:4 + n_in + n_out]]
        out.append(" ".join(tokens[:4] + blobs + tokens[4 + n_in + n_out:]))
    return "\n".join(out) + "\n"


def parse_param(param: Path) -> dict:
    """Layers and blobs of a .ncnn.param, checked: magic, counts, token structure.

    Returns {"layers": [(type, name, inputs, outputs, params)], "layer_count", "blob_count"}.
    """
    try:
        text = Path(param).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{param}: cannot read the ncnn param ({err})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != PARAM_MAGIC:
        raise ModelFileError(f"{param}: not an ncnn param file (first line is not the magic "
                             f"{PARAM_MAGIC}); re-export it")
    header = lines[1].split() if len(lines) > 1 else []
    if len(header) != 2 or not all(h.isdigit() for h in header):
        raise ModelFileError(f"{param}: ncnn param header is not '<layer count> <blob count>'")
    layer_count, blob_count = int(header[0]), int(header[1])
    layers, produced = [], set()
    for number, line in enumerate(lines[2:], start=3):
        tokens = line.split()
        if len(tokens) < 4 or not tokens[2].isdigit() or not tokens[3].isdigit():
            raise ModelFileError(f"{param}: line {number} is not an ncnn layer line")
        n_in, n_out = int(tokens[2]), int(tokens[3])
        if len(tokens) < 4 + n_in + n_out:
            raise ModelFileError(f"{param}: line {number} names fewer blobs than it declares")
        inputs, outputs = tokens[4:4 + n_in], tokens[4 + n_in:4 + n_in + n_out]
        params = tokens[4 + n_in + n_out:]
        if any("=" not in p for p in params):
            raise ModelFileError(f"{param}: line {number} has a parameter that is not key=value")
        layers.append((tokens[0], tokens[1], inputs, outputs, dict(p.split("=", 1) for p in params)))
        produced.update(outputs)
    if len(layers) != layer_count or len(produced) != blob_count:
        raise ModelFileError(f"{param}: header says {layer_count} layers / {blob_count} blobs, "
                             f"the file has {len(layers)} / {len(produced)}; truncated or edited")
    return {"layers": layers, "layer_count": layer_count, "blob_count": blob_count}


def verify(path: Path) -> None:
    """Cheap structural check of an ncnn package before ncnn is handed the bytes: one param and
    one bin, the param's magic and layer/blob counts, an Input layer, and a bin at least as large
    as the convolution and dense weights the param declares."""
    param, weights = package_files(path)
    parsed = parse_param(param)
    if not any(layer[0] == "Input" for layer in parsed["layers"]):
        raise ModelFileError(f"{param}: no Input layer; not a model ncnn can run")
    declared = sum(int(layer[4].get("6", 0)) for layer in parsed["layers"]
                   if layer[0] in ("Convolution", "InnerProduct", "ConvolutionDepthWise"))
    size = weights.stat().st_size
    if size < 2 * declared:  # float16 weights are the smallest ncnn stores here
        raise ModelFileError(f"{weights}: {size} bytes, less than the {declared} weights the param "
                             "declares; truncated, re-export it")


def _blob_io(parsed: dict) -> tuple[list[str], list[str]]:
    """(input blobs, output blobs): Input layers' outputs; the model outputs (``age``,
    ``p_male``), or when a param has other names, every blob no layer consumes."""
    from ssrconv.runtimes.base import HEADS

    consumed = {b for layer in parsed["layers"] for b in layer[2]}
    inputs = [b for layer in parsed["layers"] if layer[0] == "Input" for b in layer[3]]
    produced = [b for layer in parsed["layers"] for b in layer[3] if layer[0] != "Input"]
    heads = [h for h in HEADS if h in produced]
    outputs = heads or [b for b in produced if b not in consumed]
    return inputs, outputs


def blob_names(parsed: dict) -> list[str]:
    """Every blob a layer of the param produces."""
    return [b for layer in parsed["layers"] for b in layer[3]]


def describe(path: Path) -> dict:
    """Layers, input/output blob names read back from the param; the output shapes from one
    ncnn run on a zero face (the param itself does not record shapes)."""
    from collections import Counter

    import numpy as np

    param, weights = package_files(path)
    parsed = parse_param(param)
    inputs, outputs = _blob_io(parsed)
    from ssrconv.runtimes.ncnn_rt import NcnnRuntime

    runtime = NcnnRuntime(path, num_threads=1)
    shapes = runtime.probe_shapes(np.zeros((64, 64, 3), np.float32))
    ops = Counter(layer[0] for layer in parsed["layers"])
    return {"inputs": [{"name": name, "shape": [64, 64, 3], "dtype": "float32",
                        "quantization": None, "layout": "HWC (one face; ncnn Mat c=64 h=64 w=3)"}
                       for name in inputs],
            "outputs": [{"name": name, "shape": shapes.get(name), "dtype": "float32",
                         "quantization": None} for name in outputs],
            "ops": dict(sorted(ops.items())), "float_ops": dict(sorted(ops.items())),
            "integer_only": False, "layer_count": parsed["layer_count"],
            "blob_count": parsed["blob_count"],
            "files": {param.name: param.stat().st_size, weights.name: weights.stat().st_size},
            "weights_dtype": _weights_dtype(weights, parsed)}


def file_precision(path: Path) -> str:
    """The precision an ncnn package computes in, from its bin's first weight tag."""
    param, weights = package_files(path)
    return "fp16" if _weights_dtype(weights, parse_param(param)) == "float16" else "fp32"


def _weights_dtype(weights: Path, parsed: dict) -> str:
    """float16 or float32, from the first Convolution's weight tag in the bin (ncnn writes a
    4-byte tag before each quantizable weight: 0x01306B47 float16, 0 float32)."""
    import struct

    with open(weights, "rb") as fh:
        tag = fh.read(4)
    if len(tag) < 4:
        return "unknown"
    value = struct.unpack("<I", tag)[0]
    return {0x01306B47: "float16", 0: "float32"}.get(value, f"tag 0x{value:08x}")


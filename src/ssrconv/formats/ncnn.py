"""The .ncnn package read side: its param + bin pair, the param parser, verify, describe and
file precision."""

from __future__ import annotations

from pathlib import Path

from ssrconv.errors import ModelFileError


PARAM_MAGIC = "7767517"


PARAM_SUFFIX = ".ncnn.param"


BIN_SUFFIX = ".ncnn.bin"


INPUT_NAME = "face_bgr"


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
    from ssrconv.formats import HEADS

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

    param, weights = package_files(path)
    parsed = parse_param(param)
    inputs, outputs = _blob_io(parsed)
    shapes = _probe_shapes(param, weights, outputs)
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


def _probe_shapes(param: Path, weights: Path, outputs: list[str]) -> dict[str, list[int]]:
    """The shape ncnn gives each output for one zero face (CPU, one thread, Vulkan off)."""
    import ncnn
    import numpy as np

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise ModelFileError(f"{param.parent}: ncnn cannot load {param.name} + {weights.name}; "
                             "re-export it with ssrconv export --to ncnn")
    with net.create_extractor() as extractor:
        extractor.input(INPUT_NAME, ncnn.Mat(np.zeros((64, 64, 3), np.float32)))
        return {name: list(np.array(extractor.extract(name)[1]).shape) for name in outputs}


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

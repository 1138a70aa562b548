"""OpenVINO IR export (``--to openvino``): a directory package ``<stem>.openvino/`` holding
``<stem>.xml`` (the graph) and ``<stem>.bin`` (the weights).

The IR is converted from the project's own ONNX export (``openvino.convert_model`` of the
tf2onnx graph, then ``openvino.save_model``), so it inherits that graph's measured exactness
and, for int8, the project's int8 recipe (docs/INT8.md: BatchNorm folded, CLE, GPTQ rounding,
the relu stream in int8 and the rest float) as QDQ pairs that OpenVINO turns into int8 kernels.
NNCF's default post-training quantization of the fp32 graph measured 10.6 y mean age error.

Precisions:
- fp32: weights stored as f32 (``compress_to_fp16=False``; save_model's default would halve them);
- fp16: weights stored as f16 (decompressed to f32 at compile time, computed in f32);
- bf16: f32 weights, execution in bf16 requested in the IR's rt_info (only CPUs with bf16
  support run it in bf16; the engine reports what ran);
- int8: the ONNX int8 QDQ export, converted.

rt_info carries the ONNX export's metadata_props under the same keys (``ssrconv.version``,
``ssrconv.preprocessing``, ``ssrconv.weights.<head>`` and ``.sha256``, ...), plus
``ssrconv.precision``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ssrconv.atomic import scratch_dir
from ssrconv.errors import ModelFileError

SUFFIX = ".openvino"
# The execution precision an IR asks for, by artifact precision (runtimes/openvino_rt.py sets
# the same hint; OpenVINO's own default on AMX CPUs is bf16 even for an f32 graph).
EXECUTION_HINT = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}
# Sanity bounds for verify(): far above SSR-Net's (the fp32 .bin is ~0.16 MB, the .xml
# ~0.3 MB), far below what a corrupt or foreign package could make OpenVINO map.
MAX_XML_BYTES = 16 * 2**20
MAX_BIN_BYTES = 64 * 2**20




def _source_onnx(model, target, options, dest: Path, calibration, metadata) -> Path:
    """The project's ONNX export of ``model``: fp32, or for an int8 target the int8 QDQ recipe
    of :mod:`ssrconv.converters.onnx_int8` (whose first conv block stays float: OpenVINO's
    u8 x s8 kernels saturate on it without VNNI, see INT8_LAYERS there)."""
    import onnx

    from ssrconv.converters import onnx as onnx_converter
    from ssrconv.converters import onnx_int8

    if target.precision != "int8":
        proto = onnx_converter.to_proto(model, options.opset, options.batch)
    else:
        proto = onnx_int8.convert_int8(model, calibration,
                                       lambda keras_model: onnx_converter.to_proto(keras_model,
                                                                                   options.opset,
                                                                                   options.batch))
    onnx.save(proto, str(dest))
    return dest


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Write the OpenVINO IR package of ``model`` at ``dest`` (a directory) for
    ``target.precision``."""
    import openvino as ov

    dest = Path(dest)
    stem = Path(target.filename(options.task)).name[:-len(target.suffix)]
    with scratch_dir("ssrconv-openvino-") as tmp:
        onnx_path = _source_onnx(model, target, options, Path(tmp) / "source.onnx", calibration,
                                 metadata)
        ov_model = ov.convert_model(str(onnx_path))
        for key, value in metadata.items():
            ov_model.set_rt_info(value, [key])
        ov_model.set_rt_info(target.precision, ["ssrconv.precision"])
        hint = EXECUTION_HINT[target.precision]
        ov_model.set_rt_info(hint, ["ssrconv.execution_precision_hint"])
        # OpenVINO's own place for compile options a model asks for.
        ov_model.set_rt_info(hint, ["runtime_options", "INFERENCE_PRECISION_HINT"])
        dest.mkdir(parents=True, exist_ok=False)
        ov.save_model(ov_model, str(dest / f"{stem}.xml"),
                      compress_to_fp16=target.precision == "fp16")
    extra = {}
    if target.precision == "int8":
        from ssrconv.converters.onnx_int8 import INT8_RECIPE

        extra["int8_recipe"] = (INT8_RECIPE + " In the IR each stream's first conv (conv2d_1) "
                                "stays float: u8 x s8 int16 pair sums overflow on CPUs without "
                                "VNNI (docs/CONVERTERS.md, OpenVINO).")
    return {**extra, "openvino": ov.__version__, "source": "ssrconv ONNX export (tf2onnx"
            + (", int8 QDQ" if target.precision == "int8" else "") + ") -> openvino.convert_model",
            "execution_precision_hint": hint,
            "weights_stored_as": "f16" if target.precision == "fp16" else
                                 ("i8 (relu stream) + f32" if target.precision == "int8" else "f32")}


def verify(path: Path) -> None:
    """Cheap structural check of an IR package: one ``<stem>.xml`` that parses as an OpenVINO
    IR ``<net>``, its ``<stem>.bin`` present, and every weight constant's offset+size inside the
    .bin. ModelFileError (one line) otherwise."""
    import xml.etree.ElementTree as ET

    from ssrconv.runtimes.openvino_rt import ir_files

    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"{path}: an OpenVINO package is a directory holding <stem>.xml and "
                             "<stem>.bin; re-export it with ssrconv export --to openvino")
    xml, bin_ = ir_files(path)
    if not bin_.is_file():
        raise ModelFileError(f"{path}: {bin_.name} is missing beside {xml.name}; re-export it")
    xml_size, bin_size = xml.stat().st_size, bin_.stat().st_size
    if xml_size > MAX_XML_BYTES or bin_size > MAX_BIN_BYTES:
        raise ModelFileError(f"{path}: {xml_size:,} + {bin_size:,} bytes is far larger than an "
                             "SSR-Net IR; not an ssrconv export")
    try:
        root = ET.fromstring(xml.read_bytes())
    except ET.ParseError as err:
        raise ModelFileError(f"{xml}: not valid XML ({err}); re-export it") from None
    if root.tag != "net" or root.find("layers") is None:
        raise ModelFileError(f"{xml}: not an OpenVINO IR (root <{root.tag}>); re-export it")
    for layer in root.iter("layer"):
        if layer.get("type") != "Const":
            continue
        data = layer.find("data")
        try:
            offset, size = int(data.get("offset")), int(data.get("size"))
        except (AttributeError, TypeError, ValueError):
            raise ModelFileError(f"{xml}: constant {layer.get('name')!r} has no valid "
                                 "offset/size; re-export it") from None
        if offset < 0 or size < 0 or offset + size > bin_size:
            raise ModelFileError(f"{xml}: constant {layer.get('name')!r} reads bytes "
                                 f"{offset}..{offset + size} of a {bin_size}-byte {bin_.name} "
                                 "(truncated or mismatched weights); re-export it")


_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i8": "int8", "u8": "uint8",
           "i32": "int32", "i64": "int64"}


def describe(path: Path) -> dict:
    """Inputs/outputs (names, shapes with None for dynamic dims, dtypes), op counts, weight
    storage precision and rt_info metadata, read back from the IR package."""
    import openvino as ov

    from ssrconv.runtimes.openvino_rt import ir_files

    verify(path)
    xml, bin_ = ir_files(Path(path))
    model = ov.Core().read_model(str(xml))

    def io(ports):
        out = []
        for port in ports:
            shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            names = sorted(port.get_names())
            out.append({"name": names[0] if names else port.get_any_name(), "shape": shape,
                        "dtype": _DTYPES.get(port.get_element_type().get_type_name(),
                                             port.get_element_type().get_type_name()),
                        "quantization": None})
        return out

    ops = Counter(op.get_type_name() for op in model.get_ops())
    constants = Counter(op.get_element_type().get_type_name() for op in model.get_ops()
                        if op.get_type_name() == "Constant")
    info = model.get_rt_info()
    metadata = {key: str(info[key].astype(str)) for key in info
                if str(key).startswith("ssrconv.")}
    return {"inputs": io(model.inputs), "outputs": io(model.outputs),
            "ops": dict(sorted(ops.items())), "constants_by_dtype": dict(sorted(constants.items())),
            "files": {"xml": xml.name, "bin": bin_.name, "xml_bytes": xml.stat().st_size,
                      "bin_bytes": bin_.stat().st_size},
            "ir_precision": metadata.get("ssrconv.precision"),
            "metadata": metadata}


def file_precision(path: Path) -> str:
    """The precision an IR package computes in, read from the IR: int8 when it holds
    FakeQuantize nodes or int8/uint8 constants, bf16 when its rt_info asks for bf16 execution,
    fp16 when its weights are float16, else fp32."""
    import xml.etree.ElementTree as ET

    from ssrconv.runtimes.openvino_rt import ir_files

    verify(path)
    xml, _ = ir_files(Path(path))
    root = ET.fromstring(xml.read_bytes())
    layers = list(root.iter("layer"))
    types = {layer.get("type") for layer in layers}
    consts = {(layer.find("data").get("element_type") or "") for layer in layers
              if layer.get("type") == "Const" and layer.find("data") is not None}
    hints = {el.get("value") for el in root.iter() if "PRECISION_HINT" in (el.tag + str(el.get("name", "")))}
    if "FakeQuantize" in types or consts & {"i8", "u8"}:
        return "int8"
    if "bf16" in hints:
        return "bf16"
    if "f16" in consts:
        return "fp16"
    return "fp32"

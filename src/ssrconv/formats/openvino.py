"""The .openvino IR package read side: its .xml/.bin pair, verify, describe and file precision."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ssrconv.errors import ModelFileError


# Sanity bounds for verify(): far above SSR-Net's (the fp32 .bin is ~0.16 MB, the .xml
# ~0.3 MB), far below what a corrupt or foreign package could make OpenVINO map.
MAX_XML_BYTES = 16 * 2**20


MAX_BIN_BYTES = 64 * 2**20


def verify(path: Path) -> None:
    """Cheap structural check of an IR package: one ``<stem>.xml`` that parses as an OpenVINO
    IR ``<net>``, its ``<stem>.bin`` present, and every weight constant's offset+size inside the
    .bin. ModelFileError (one line) otherwise."""
    import xml.etree.ElementTree as ET

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


def ir_files(package: Path) -> tuple[Path, Path]:
    """The ``(<stem>.xml, <stem>.bin)`` of an OpenVINO IR package directory."""
    xmls = sorted(Path(package).glob("*.xml"))
    if len(xmls) != 1:
        raise ModelFileError(f"{package}: an OpenVINO package holds one .xml, found {len(xmls)}; "
                             "re-export it with ssrconv export --to openvino")
    return xmls[0], xmls[0].with_suffix(".bin")


def inner_artifact(path: Path) -> Path:
    """The file of the package a runtime reads: the IR's ``.xml`` (its ``.bin`` beside it)."""
    return ir_files(path)[0]

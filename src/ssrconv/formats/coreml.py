"""The .mlpackage read side: verify, describe and file precision (the MIL program itself is
read by :mod:`ssrconv.formats.mil_numpy`)."""

from __future__ import annotations

from pathlib import Path

from ssrconv._imports import coremltools


_ARRAY_DTYPES = {65568: "float32", 65552: "float16", 65600: "float64", 131104: "int32"}


def describe(path: Path) -> dict:
    """Inputs/outputs from the package's spec, and the MIL op counts, read back."""
    from collections import Counter

    ct = coremltools("CoreML export", extra="export")
    spec = ct.utils.load_spec(str(path))

    def io(features):
        out = []
        for f in features:
            kind = f.type.WhichOneof("Type")
            if kind == "imageType":
                colour = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(
                    f.type.imageType.colorSpace)
                out.append({"name": f.name, "shape": [1, int(f.type.imageType.height),
                                                      int(f.type.imageType.width), 3],
                            "dtype": f"image({colour})", "quantization": None,
                            "description": f.shortDescription})
                continue
            array = f.type.multiArrayType
            shape = list(array.shape)
            ranges = array.shapeRange.sizeRanges
            if ranges:
                shape = [int(r.lowerBound) if r.lowerBound == r.upperBound else None for r in ranges]
            out.append({"name": f.name, "shape": shape or None,
                        "dtype": _ARRAY_DTYPES.get(array.dataType, str(array.dataType)),
                        "quantization": None, "description": f.shortDescription})
        return out

    ops = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            ops.update(op.type for op in block.operations)
    return {"inputs": io(spec.description.input), "outputs": io(spec.description.output),
            "ops": dict(sorted(ops.items())), "float_ops": dict(sorted(ops.items())),
            "integer_only": False,
            "metadata": dict(spec.description.metadata.userDefined),
            "author": spec.description.metadata.author}


def verify(path: Path) -> None:
    """A structural check of an .mlpackage (a directory with its Manifest.json and an ML
    Program spec) before coremltools or the MIL interpreter reads it."""
    from ssrconv.errors import ModelFileError

    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"{path}: not an .mlpackage directory; re-export it with ssrconv export")
    if not (path / "Manifest.json").is_file():
        raise ModelFileError(f"{path}: no Manifest.json in the package; re-export it with ssrconv export")
    if not any(path.glob("Data/com.apple.CoreML/*.mlmodel")):
        raise ModelFileError(f"{path}: no model spec (Data/com.apple.CoreML/*.mlmodel) in the "
                             "package; re-export it with ssrconv export")


def file_precision(path: Path) -> str:
    """fp16 when the ML Program computes in float16 (most of its ops produce fp16), else fp32."""
    from ssrconv.formats.mil_numpy import MilProgram

    verify(path)
    dtypes = MilProgram.from_mlpackage(path).compute_dtypes
    return "fp16" if dtypes.get("fp16", 0) > dtypes.get("fp32", 0) else "fp32"

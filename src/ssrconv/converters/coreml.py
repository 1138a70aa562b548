"""CoreML export: an mlprogram (fp16 or fp32 compute) converted with coremltools on any OS.

Input ``face_bgr`` is a plain float32 tensor with a flexible batch (1..256) by default; with
``--image-input`` it is a CoreML ImageType with **BGR** colour layout, scale 1 and no bias, so
an app can hand camera pixels straight in (SSR-Net was trained on ``cv2.imread`` BGR images;
declaring RGB here, as some SSR-Net CoreML ports do, silently swaps the channels).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ssrconv._imports import coremltools
from ssrconv.reference.preprocess import INPUT_SIZE

MAX_BATCH = 256
OUTPUT_DESCRIPTIONS = {
    "age": "Estimated age in years (SSR-Net soft stagewise regression, 0..101)",
    "p_male": "Probability that the face is male (SSR-Net gender head, IMDB-WIKI convention)",
}


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Convert ``model`` to an .mlpackage directory at ``dest``."""
    ct = coremltools("CoreML export", extra="export")
    if options.image_input:
        inputs = [ct.ImageType(name="face_bgr", shape=(options.batch or 1, INPUT_SIZE, INPUT_SIZE, 3),
                               color_layout=ct.colorlayout.BGR, scale=1.0, bias=[0.0, 0.0, 0.0])]
    else:
        inputs = [ct.TensorType(name="face_bgr",
                                shape=(options.batch or ct.RangeDim(1, MAX_BATCH, 1), INPUT_SIZE,
                                       INPUT_SIZE, 3))]
    precision = ct.precision.FLOAT16 if target.precision == "fp16" else ct.precision.FLOAT32
    # coremltools 9.0's common::fuse_elementwise_to_batchnorm rewrites the folded BatchNorm
    # "x * scale + offset" as batch_norm(variance=1, epsilon=1e-5): every BN scale shrinks by
    # 1/sqrt(1 + 1e-5), which moves fp32 P(male) by up to 2.3e-4 (budget 1e-4). docs/CONVERTERS.md
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(["common::fuse_elementwise_to_batchnorm"])
    with warnings.catch_warnings():
        # coremltools 9.0 warns that TF 2.21 is untested; the conversion is verified by parity.
        warnings.simplefilter("ignore")
        ml = ct.convert(model, source="tensorflow", convert_to="mlprogram", inputs=inputs,
                        compute_precision=precision, minimum_deployment_target=ct.target.iOS15,
                        pass_pipeline=pipeline)
    # The TF graph's output tensors are called Identity, Identity_1, ... in model output order.
    spec = ml.get_spec()
    for feature, name in zip(list(spec.description.output), model.output_names):
        if feature.name != name:
            ct.utils.rename_feature(spec, feature.name, name)
    ml = ct.models.MLModel(spec, weights_dir=ml.weights_dir, skip_model_load=True)
    ml.author = "ssrconv (SSR-Net by T.-Y. Yang et al., IJCAI 2018)"
    ml.license = "Apache-2.0 (SSR-Net weights: shamangary/SSR-Net)"
    ml.short_description = (
        "SSR-Net age/gender estimation. Input: a 64x64 face crop, BGR, 0..255 (detector box grown "
        "by 0.4 of its size on each side, clipped, resized with bilinear interpolation).")
    ml.version = metadata.get("ssrconv.version", "")
    ml.input_description["face_bgr"] = (
        "64x64 face crop, BGR colour order, pixel values 0..255 (no normalisation)")
    for name in model.output_names:
        ml.output_description[name] = OUTPUT_DESCRIPTIONS[name]
    ml.user_defined_metadata.update(metadata)
    ml.save(str(dest))
    stable_package_identifiers(dest)
    return {"format": "mlprogram", "image_input": bool(options.image_input),
            "minimum_deployment_target": "iOS15"}


def stable_package_identifiers(package: Path) -> None:
    """Replace the random UUIDs that name the items of an .mlpackage's Manifest.json by UUIDs
    derived from each item's path, so the same model gives the same package bytes.

    coremltools' ModelPackage names every item (the spec, the weights folder) with a fresh
    uuid4 on each save: two exports of one model differed in Manifest.json alone, so the
    package's sha256 changed every time (docs/CONVERTERS.md, "Byte-reproducible exports").
    The identifiers are opaque keys (rootModelIdentifier points at one): any UUID reads the
    same. The text is edited in place, so the file keeps coremltools' own layout.
    """
    import json
    import uuid

    manifest = package / "Manifest.json"
    text = manifest.read_text()
    for key, item in json.loads(text)["itemInfoEntries"].items():
        stable = str(uuid.uuid5(uuid.NAMESPACE_URL, f"ssrconv:mlpackage/{item['path']}"))
        text = text.replace(key, stable)
    manifest.write_text(text)


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
    from ssrconv.runtimes.mil_numpy import MilProgram

    verify(path)
    dtypes = MilProgram.from_mlpackage(path).compute_dtypes
    return "fp16" if dtypes.get("fp16", 0) > dtypes.get("fp32", 0) else "fp32"

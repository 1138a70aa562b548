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
    deterministic_spec(dest)
    return {"format": "mlprogram", "image_input": bool(options.image_input),
            "minimum_deployment_target": "iOS15"}


def deterministic_spec(package: Path) -> None:
    """Serialize an .mlpackage's spec (``model.mlmodel``, a protobuf ``Model``) with its map
    fields ordered by key, so the same model gives the same bytes in every process.

    Protobuf writes a map in insertion order, and coremltools' insertion order is not the same
    from one process to the next (even with one PYTHONHASHSEED): two processes exporting one
    model wrote the same message (equal as text, the weights file identical) in different
    bytes, while two exports in one process matched (docs/CONVERTERS.md, "Byte-reproducible
    exports")."""
    from coremltools.proto import Model_pb2

    spec_path = package / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


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



"""``ssrconv info``: what the model costs, where its weights come from, what runs it."""

from __future__ import annotations

from importlib import metadata

from ssrconv._version import __version__
from ssrconv.assets import ASSETS, locate, sha256_of

PAPER_MODEL_BYTES = 326_368  # the original ssrnet_3_3_3_64_1.0_1.0.h5: the paper's "0.32 MB"
LIBRARIES = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "coremltools",
             "ai-edge-litert", "numpy", "h5py", "opencv-python-headless", "click")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries ssrconv drives (without importing them)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def asset_status() -> list[tuple[str, str, str, str]]:
    """(name, file, source, status) for each registry asset, without downloading anything."""
    rows = []
    for name, asset in ASSETS.items():
        path, source = locate(name)
        if path is None:
            rows.append((name, asset.filename, "not local (downloads on first use)", "-"))
            continue
        ok = sha256_of(path) == asset.sha256
        rows.append((name, asset.filename, f"{source}: {path}", "sha256 ok" if ok else "SHA256 MISMATCH"))
    return rows


def render_info(age_weights: str | None = None, gender_weights: str | None = None) -> str:
    """The text of ``ssrconv info``: builds the reference and loads the chosen weights."""
    from ssrconv.reference import keras_available, load_reference, weights_provenance

    import math

    from ssrconv.reference.numpy_engine import count_macs, expected_layers

    if keras_available():
        reference = load_reference("age-gender", age_weights, gender_weights)
        engine = "keras"
    else:  # a runtime-only install: the same weights through the numpy reference
        from ssrconv.reference.numpy_engine import NumpyReference

        reference = NumpyReference("age-gender", age_weights, gender_weights)
        engine = reference.engine
    # Per head, from each head's family member (the ports' heads differ from the original's).
    cost = {h: (sum(math.prod(shape) for layer in expected_layers(h, m.arch).values()
                    for shape in layer.values()), count_macs(h, m))
            for h, m in reference.members.items()}
    params, macs = cost["age"]
    lines = [
        f"ssrconv {__version__}",
        "model: SSR-Net, stages (3,3,3), lambda_local = lambda_d = 1; input 64x64x3 BGR float32 0..255",
        "members: " + ", ".join(f"{h} {m.name}" for h, m in reference.members.items()),
        f"parameters per head: {params:,} ({params * 4:,} bytes as float32; paper .h5: "
        f"{PAPER_MODEL_BYTES:,} bytes)",
        f"multiply-adds per face per head: {macs:,} ({2 * macs / 1e6:.1f} MFLOP)",
        *([f"gender head ({reference.members['gender'].name}): {cost['gender'][0]:,} parameters, "
           f"{cost['gender'][1]:,} multiply-adds"] if cost["gender"] != cost["age"] else []),
        f"loaded weights (reference engine {engine}):",
    ]
    for head, prov in weights_provenance(reference).items():
        lines.append(f"  {head:<7} {prov['name']:<18} from {prov['source']}  sha256 {prov['sha256'][:16]}...")
    lines.append("registry:")
    for name, filename, source, status in asset_status():
        lines.append(f"  {name:<18} {filename:<36} {status:<10} {source}")
    lines.append("libraries: " + ", ".join(f"{k} {v}" for k, v in library_versions().items()))
    return "\n".join(lines)

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

    if keras_available():
        from ssrconv.reference.model import count_macs, count_params

        reference = load_reference("age-gender", age_weights, gender_weights)
        params = count_params(reference.model) // 2
        macs = count_macs(reference.model) // 2
        engine = "keras"
    else:  # a runtime-only install: the same weights through the numpy reference
        from ssrconv.reference.numpy_engine import NumpyReference, count_macs

        reference = NumpyReference("age-gender", age_weights, gender_weights)
        params = reference.params["age"]
        macs = count_macs("age")
        engine = reference.engine
    lines = [
        f"ssrconv {__version__}",
        "model: SSR-Net, stages (3,3,3), lambda_local = lambda_d = 1; input 64x64x3 BGR float32 0..255",
        f"parameters per head: {params:,} ({params * 4:,} bytes as float32; paper .h5: "
        f"{PAPER_MODEL_BYTES:,} bytes)",
        f"multiply-adds per face per head: {macs:,} ({2 * macs / 1e6:.1f} MFLOP)",
        f"loaded weights (reference engine {engine}):",
    ]
    for head, prov in weights_provenance(reference).items():
        lines.append(f"  {head:<7} {prov['name']:<18} from {prov['source']}  sha256 {prov['sha256'][:16]}...")
    lines.append("registry:")
    for name, filename, source, status in asset_status():
        lines.append(f"  {name:<18} {filename:<36} {status:<10} {source}")
    lines.append("libraries: " + ", ".join(f"{k} {v}" for k, v in library_versions().items()))
    return "\n".join(lines)

"""The inputs every worker times on: real faces, or seeded noise, saved once as .npy."""

from __future__ import annotations

from pathlib import Path


def prepare_inputs(settings: Settings, directory: Path) -> tuple[Path, str]:
    """Save the inputs every worker times on (identical for all) as .npy; returns the path and
    a sentence saying what they are: real faces when a faces directory is given, else seeded
    uniform noise in 0..255."""
    import numpy as np

    if settings.faces_dir:
        from ssrconv.reference.preprocess import load_faces

        faces = load_faces(settings.faces_dir, limit=settings.input_count)
        inputs = faces.inputs.astype(np.float32)
        description = (f"{len(inputs)} real faces from {settings.faces_dir} (ssrconv "
                       "preprocessing: 64x64 BGR float32 0..255)")
    else:
        rng = np.random.default_rng(settings.seed)
        inputs = rng.uniform(0, 255, (settings.input_count, 64, 64, 3)).astype(np.float32)
        description = (f"{len(inputs)} seeded random inputs (uniform 0..255, seed {settings.seed});"
                       " no faces directory given (SSRCONV_FACES / --faces)")
    path = directory / "inputs.npy"
    np.save(path, inputs)
    return path, description

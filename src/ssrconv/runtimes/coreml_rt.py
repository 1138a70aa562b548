"""CoreML as a Runtime: the real CoreML framework on macOS, a numpy MIL interpreter elsewhere.

coremltools cannot execute a model off macOS (there is no ``libcoremlpython`` on Linux), so on
Linux the exported mlprogram is executed op by op by :mod:`ssrconv.formats.mil_numpy`,
honouring its fp16 casts. ``engine`` says which one ran: ``coreml`` or ``coreml-mil-numpy``.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from ssrconv._imports import coremltools
from ssrconv.errors import MissingExtraError, SsrconvError
from ssrconv.formats import HEADS
from ssrconv.runtimes.base import Runtime


def coreml_available() -> bool:
    """True where coremltools can run predictions (macOS with the native extension)."""
    if platform.system() != "Darwin":
        return False
    try:
        import importlib

        coremltools("running a .mlpackage")
        # Not `import coremltools.libcoremlpython`: that would make `coremltools` a local name
        # here, unbound on the line above (UnboundLocalError on macOS).
        importlib.import_module("coremltools.libcoremlpython")
    except (ImportError, MissingExtraError):
        return False
    return True


def not_timable_reason() -> str | None:
    """None where the real CoreML runtime runs (and can be timed), else why it is not timed."""
    if platform.system() == "Darwin" and coreml_available():
        return None
    return ("latency: not measured (CoreML runtime needs macOS; the numpy MIL interpreter is a "
            "correctness tool, not a speed proxy)")


def load_coreml(path: Path, num_threads: int | None = None, precision: str | None = None,
                kind: str | None = None) -> Runtime:
    """The CoreML runtime for ``path``: ``kind`` "coreml" (the framework, macOS),
    "coreml-mil-numpy" or None (the framework where it exists, else the interpreter).
    (CoreML picks its own threads; the MIL interpreter runs numpy's.)"""
    engine = kind or ("coreml" if coreml_available() else "coreml-mil-numpy")
    if engine == "coreml":
        if not coreml_available():
            raise SsrconvError("the CoreML runtime needs macOS; use engine coreml-mil-numpy here")
        return CoreMLNativeRuntime(path)
    if engine == "coreml-mil-numpy":
        return MilNumpyRuntime(path)
    raise SsrconvError(f"unknown CoreML engine {engine!r}: coreml or coreml-mil-numpy")


class _CoreMLBase(Runtime):
    """What the native and the numpy CoreML runtimes share."""

    def _outputs(self, results: dict, n: int) -> dict[str, np.ndarray]:
        return {h: self.head_values(h, results[h], n) for h in self.heads}


class CoreMLNativeRuntime(_CoreMLBase):
    """The CoreML framework through coremltools (macOS only), on the CPU for reproducibility."""

    engine = "coreml"

    def __init__(self, path: Path):
        ct = coremltools("running a .mlpackage")
        self.path = Path(path)
        self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        spec = self.model.get_spec()
        self.input_name = spec.description.input[0].name
        self.image_input = spec.description.input[0].type.WhichOneof("Type") == "imageType"
        self.heads = tuple(h for h in HEADS if h in [o.name for o in spec.description.output])

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_batch(batch)
        if self.image_input:
            from PIL import Image

            rows = []
            for face in batch:  # an ImageType takes one picture per call; BGR -> PIL's RGB
                rgb = np.clip(np.round(face[..., ::-1]), 0, 255).astype(np.uint8)
                rows.append(self.model.predict({self.input_name: Image.fromarray(rgb)}))
            return {h: np.array([np.asarray(r[h]).ravel()[0] for r in rows], np.float32)
                    for h in self.heads}
        return self._outputs(self.model.predict({self.input_name: batch}), len(batch))


class MilNumpyRuntime(_CoreMLBase):
    """The exported mlprogram executed by the numpy MIL interpreter (any OS)."""

    engine = "coreml-mil-numpy"

    def __init__(self, path: Path):
        from ssrconv.formats.mil_numpy import MilProgram

        self.path = Path(path)
        self.program = MilProgram.from_mlpackage(self.path)
        if len(self.program.input_names) != 1:
            raise SsrconvError(f"{path}: expected one input, found {self.program.input_names}")
        self.input_name = self.program.input_names[0]
        self.heads = tuple(h for h in HEADS if h in self.program.output_names)
        if not self.heads:
            raise SsrconvError(f"{path}: not an SSR-Net export (outputs {self.program.output_names})")

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_batch(batch)
        return self._outputs(self.program.run({self.input_name: batch}), len(batch))

    def stage_outputs(self, batch: np.ndarray, specs) -> dict[str, np.ndarray]:
        from ssrconv.stages import locate

        shapes = self.program.intermediate_names()

        def candidates(units):
            return {n: n for n, shape in shapes.items()
                    if len(shape) == 2 and not isinstance(shape[-1], str) and shape[-1] == units}

        located = [locate(spec, self.heads, candidates) for spec in specs]
        batch = self.check_batch(batch)
        results = self.program.run({self.input_name: batch},
                                   capture=frozenset(n for n, _ in located))

        def value(name, columns):
            v = np.asarray(results[name], np.float32).reshape(len(batch), -1)
            return v if columns is None else v[:, columns]

        return {s.key: value(n, c) for s, (n, c) in zip(specs, located)}

"""ncnn (the pip ``ncnn`` package, CPU, Vulkan off) as a Runtime.

The package's param takes one face per call (see :mod:`ssrconv.formats.ncnn`), so
:meth:`NcnnRuntime.run` loops over the batch, handing ncnn each 64 x 64 x 3 face of the contract
as it is. The options that make fp32 fp32 on x86 (measured on the dev faces, docs/CONVERTERS.md):
ncnn's default ``use_fp16_storage`` keeps weights and activations in float16 on CPUs with F16C
(0.0055 y / P(male) 8.5e-4 off), and its Winograd 3x3 kernels (F(6,3)/F(4,3) transforms) cost
1.3e-4 y / 5.2e-5 in P(male), half the fp32 budget; both are off for an fp32 artifact. An fp16
artifact runs with ncnn's defaults (fp16 storage, packing and arithmetic where the CPU has them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrconv.errors import ModelFileError, SsrconvError
from ssrconv.formats import HEADS
from ssrconv.runtimes.base import Runtime

FP32_OPTIONS = {"use_vulkan_compute": False, "use_fp16_storage": False, "use_fp16_packed": False,
                "use_fp16_arithmetic": False, "use_bf16_storage": False,
                "use_winograd_convolution": False}
FP16_OPTIONS = {"use_vulkan_compute": False, "use_fp16_storage": True, "use_fp16_packed": True,
                "use_fp16_arithmetic": True, "use_bf16_storage": False}


class NcnnRuntime(Runtime):
    """An ``.ncnn`` package (param + bin) on ncnn's CPU path, one thread unless told otherwise."""

    def __init__(self, path: Path, num_threads: int | None = None, precision: str | None = None):
        import ncnn

        from ssrconv.formats.ncnn import (INPUT_NAME, _blob_io, _weights_dtype, blob_names,
                                          package_files, parse_param)

        self.path = Path(path)
        param, weights = package_files(self.path)
        parsed = parse_param(param)
        inputs, outputs = _blob_io(parsed)
        if inputs != [INPUT_NAME] or not outputs or not set(outputs) <= set(HEADS):
            raise SsrconvError(f"{path}: not an SSR-Net export (input blobs {inputs}, outputs "
                               f"{outputs})")
        if precision is None:  # the bin's weight tag says what it holds
            precision = "fp16" if _weights_dtype(weights, parsed) == "float16" else "fp32"
        self.precision = precision
        self.options = dict(FP16_OPTIONS if self.precision == "fp16" else FP32_OPTIONS)
        self.threads = int(num_threads or 1)
        self.options["num_threads"] = self.threads
        self.net = ncnn.Net()
        for key, value in self.options.items():
            setattr(self.net.opt, key, value)
        # ncnn returns nonzero on a bad param/bin after printing its reason to stderr.
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(weights)) != 0:
            raise ModelFileError(f"{path}: ncnn cannot load {param.name} + {weights.name}; "
                                 "re-export it with ssrconv export --to ncnn")
        self._mat = ncnn.Mat
        self.input_name = INPUT_NAME
        self.heads = tuple(h for h in HEADS if h in outputs)
        self._blobs = blob_names(parsed)
        self.engine = f"ncnn-cpu-{'fp16' if self.precision == 'fp16' else 'fp32'}"
        self.executed_precision = "fp16" if self.precision == "fp16" else "fp32"

    def _extract(self, face: np.ndarray, names) -> dict[str, np.ndarray]:
        with self.net.create_extractor() as extractor:
            extractor.input(self.input_name, self._mat(face))
            results = {}
            for name in names:
                status, mat = extractor.extract(name)
                if status != 0:
                    raise SsrconvError(f"{self.path}: ncnn failed to compute {name!r} "
                                       f"(status {status})")
                results[name] = np.array(mat)
            return results

    def probe_shapes(self, face: np.ndarray) -> dict[str, list[int]]:
        """Shapes ncnn gives each head for one face (for describe)."""
        return {k: list(v.shape) for k, v in self._extract(face, self.heads).items()}

    def stage_outputs(self, batch: np.ndarray, specs) -> dict[str, np.ndarray]:
        """The stage blobs the converter kept under their ONNX names (one face at a time; in
        the fast graph, columns of the fused stage blobs)."""
        from ssrconv.stages import locate

        located = [locate(s, self.heads, lambda units: {b: b for b in self._blobs}) for s in specs]
        names = list(dict.fromkeys(n for n, _ in located))
        batch = self.check_batch(batch)
        rows = [self._extract(np.ascontiguousarray(face), names) for face in batch]
        out = {}
        for s, (n, columns) in zip(specs, located):
            values = np.stack([r[n].reshape(-1) for r in rows]).astype(np.float32)
            out[s.key] = values if columns is None else values[:, columns]
        return out

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_batch(batch)
        out = {head: np.empty(len(batch), np.float32) for head in self.heads}
        for i, face in enumerate(batch):
            results = self._extract(np.ascontiguousarray(face), self.heads)
            for head in self.heads:
                out[head][i:i + 1] = self.head_values(head, results[head], 1)
        return out

    def describe(self) -> dict:
        described = super().describe()
        described.update(precision=self.precision, ncnn_options=self.options)
        return described

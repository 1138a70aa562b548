"""MNN (the pip ``MNN`` package, CPU backend) as a Runtime, through ``MNN.nn`` modules loaded
with the named input ``face_bgr`` and outputs ``age``/``p_male``.

What makes fp32 fp32 (measured on the dev faces, docs/CONVERTERS.md "MNN"): not the precision
mode (high, normal and low gave identical results on this x86 CPU, which has no fp16
arithmetic), but MNN's Winograd 3x3 convolutions: they moved the 32-channel conv outputs by
3e-4 relative and the heads by 0.0034 y / P(male) 8.7e-4. An fp32 artifact runs at precision
``high`` with the hint ``WINOGRAD_MEMORY_LEVEL = 0`` (no Winograd): 3.4e-5 y / 4.8e-6. An fp16
artifact runs at precision ``low`` (fp16 arithmetic where the CPU has it) with MNN's defaults.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrconv.errors import ModelFileError, SsrconvError, clip
from ssrconv.formats.mnn import mnn_module, stdout_to_stderr
from ssrconv.formats import HEADS
from ssrconv.runtimes.base import Runtime

INPUT_NAME = "face_bgr"
WINOGRAD_MEMORY_LEVEL = 3  # MNN::Interpreter::HintMode; value 0 = no Winograd



class MnnRuntime(Runtime):
    """An ``.mnn`` file on MNN's CPU backend, one thread unless told otherwise."""

    def __init__(self, path: Path, num_threads: int | None = None, precision: str | None = None):
        from ssrconv.formats.mnn import file_precision

        self.path = Path(path)
        mnn = mnn_module()
        self.precision = precision or file_precision(self.path)
        fp16 = self.precision == "fp16"
        self.threads = int(num_threads or 1)
        self.config = {"backend": "CPU", "precision": "low" if fp16 else "high",
                       "numThread": self.threads}
        self.hints = {} if fp16 else {"WINOGRAD_MEMORY_LEVEL": 0}
        with stdout_to_stderr():
            try:
                manager = mnn.nn.create_runtime_manager((self.config,))
                for _name, value in self.hints.items():
                    manager.set_hint(WINOGRAD_MEMORY_LEVEL, value)
                info = mnn.nn.load_module_from_file(str(self.path), [], []).get_info()
                outputs = [h for h in HEADS if h in info["outputNames"]]
                if info["inputNames"] != [INPUT_NAME] or not outputs:
                    raise SsrconvError(f"{path}: not an SSR-Net export (inputs "
                                       f"{info['inputNames']}, outputs {info['outputNames']})")
                self.module = mnn.nn.load_module_from_file(str(self.path), [INPUT_NAME], outputs,
                                                           runtime_manager=manager)
            except SsrconvError:
                raise
            except Exception as err:  # noqa: BLE001 - MNN raises bare Exception/SystemError
                raise ModelFileError(f"{path}: MNN cannot load it ({clip(str(err))}); re-export "
                                     "it with ssrconv export --to mnn") from None
        self._expr = mnn.expr
        self._mnn, self._manager = mnn, manager
        self.heads = tuple(outputs)
        self.engine = f"mnn-cpu-{'low' if fp16 else 'high-nowinograd'}"
        self.executed_precision = "fp16" if fp16 else "fp32"

    def stage_outputs(self, batch: np.ndarray, specs) -> dict[str, np.ndarray]:
        """A second module on the same file with the stage tensors (which keep their ONNX
        names in an .mnn) as its outputs."""
        from ssrconv.stages import locate

        key = tuple(s.key for s in specs)
        if getattr(self, "_stage_key", None) != key:
            with stdout_to_stderr():
                variables = self._mnn.expr.load_as_dict(str(self.path))
                located = [locate(s, self.heads, lambda units: {n: n for n in variables})
                           for s in specs]
                names = list(dict.fromkeys(n for n, _ in located))  # fused: shared tensors
                self._stage_module = self._mnn.nn.load_module_from_file(
                    str(self.path), [INPUT_NAME], names, runtime_manager=self._manager)
            self._stage_key, self._stage_located, self._stage_names = key, located, names
        batch = self.check_batch(batch)
        F = self._expr
        results = self._stage_module.forward([F.const(batch, list(batch.shape), F.NCHW)])
        if len(results) != len(self._stage_names):
            raise SsrconvError(f"{self.path}: MNN computed {len(results)} of "
                               f"{len(self._stage_names)} stage tensors")
        by_name = {n: np.array(F.convert(r, F.NCHW).read(), np.float32).reshape(len(batch), -1)
                   for n, r in zip(self._stage_names, results)}
        return {s.key: by_name[n] if columns is None else by_name[n][:, columns]
                for s, (n, columns) in zip(specs, self._stage_located)}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_batch(batch)
        F = self._expr
        # NCHW here means "take the dims as given": the graph itself transposes NHWC -> NCHW.
        results = self.module.forward([F.const(batch, list(batch.shape), F.NCHW)])
        if len(results) != len(self.heads):
            raise SsrconvError(f"{self.path}: MNN computed {len(results)} outputs for "
                               f"{len(self.heads)} heads (see its message above)")
        return {head: self.head_values(head, np.array(r.read()), len(batch))
                for head, r in zip(self.heads, results)}

    def describe(self) -> dict:
        described = super().describe()
        described.update(precision=self.precision, mnn_config=self.config, mnn_hints=self.hints)
        return described

"""MNN (the pip ``MNN`` package, CPU backend) as a Runtime, through ``MNN.nn`` modules loaded
with the named input ``face_bgr`` and outputs ``age``/``p_male``.

Every file runs with the options :data:`ssrconv.formats.mnn.RUN_OPTIONS` gives its run key
(the bizCode the converter writes into the file; the manifest states the options): Winograd
off (the hint ``WINOGRAD_MEMORY_LEVEL = 0``), fp32 at precision ``high``, fp16 at precision
``low`` (fp16 arithmetic where the CPU has it: MNN's Arm82 backend on ARMv8.2), or ``normal``
(float32 arithmetic) for an fp16 file whose model needs it. Measured (docs/CONVERTERS.md
"MNN", docs/ARM64.md): Winograd's 3x3 transforms moved fp32 by 0.0034 y on x86 (3.4e-5 y
without), and in fp16 arithmetic on arm64 put the fp16 file outside its budget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssrconv.errors import ModelFileError, SsrconvError, clip
from ssrconv.formats.mnn import HINT_IDS, RUN_OPTIONS, mnn_module, run_key_of, stdout_to_stderr
from ssrconv.formats import HEADS
from ssrconv.runtimes.base import Runtime

INPUT_NAME = "face_bgr"


class MnnRuntime(Runtime):
    """An ``.mnn`` file on MNN's CPU backend, one thread unless told otherwise."""

    def __init__(self, path: Path, num_threads: int | None = None, precision: str | None = None):
        self.path = Path(path)
        mnn = mnn_module()
        self.threads = int(num_threads or 1)
        with stdout_to_stderr():
            try:
                info = mnn.nn.load_module_from_file(str(self.path), [], []).get_info()
                # The file's run key (its bizCode), not ``precision``, chooses the run options.
                options = RUN_OPTIONS[run_key_of(info)]
                self.precision = precision or options["weights"]
                self.config = {"backend": "CPU", "precision": options["precision"],
                               "numThread": self.threads}
                self.hints = dict(options["hints"])
                manager = mnn.nn.create_runtime_manager((self.config,))
                for name, value in self.hints.items():
                    manager.set_hint(HINT_IDS[name], value)
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
        winograd = "-nowinograd" if self.hints.get("WINOGRAD_MEMORY_LEVEL") == 0 else ""
        self.engine = f"mnn-cpu-{options['precision']}{winograd}"
        # what MNN computes in where the CPU has fp16 arithmetic (ARMv8.2); elsewhere fp32
        self.executed_precision = "fp16" if options["precision"] == "low" else "fp32"

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

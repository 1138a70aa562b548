"""THE format table: every fact about a file format, an engine and an export target lives in
one row here, and everything else (CLI choices, ``open_artifact``, ``load_runtime``, bench
planning, parity discovery, soak) derives from it. Adding a format is one :class:`Format` row,
its :class:`Target` rows, one converter module and one runtime module.

- :class:`Format`: a file family: its suffix, whether it is a directory package, its reader
  (``ssrconv.formats.<module>``: ``verify`` its bytes before a runtime sees them, ``describe``,
  ``file_precision``, ``static_batch``) and its converter (``ssrconv.converters.<module>``:
  ``convert``), the engines that read it (the first is the default) and the pip extra holding
  its converter.
- :class:`Engine`: something that executes artifacts: the formats it reads, the factory that
  loads an artifact into a :class:`~ssrconv.runtimes.base.Runtime`, and the pip extra (with
  the import it needs) that brings it.
- :class:`Target`: one exportable (family, precision) with its parity budget class.

This module imports nothing heavy.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "bf16", "dynamic", "int8", "int8-mixed", "int8-integer", "int16x8")
# Precisions whose export calibrates activation ranges (on --calibration faces or data-free).
CALIBRATED_PRECISIONS = ("int8", "int8-mixed", "int8-integer", "int16x8")
INT8_IO_TYPES = ("float32", "int8", "uint8")
# ONNX opsets: those tf2onnx 1.17 writes (first, last: its constants.OPSET_TO_IR_VERSION), the
# one an export uses when --opset is not given (where the row's range allows it), and the first
# with int16 QuantizeLinear/DequantizeLinear (the integer ONNX rows' int16 tensors need it:
# written by tf2onnx at its last, then converted by onnx's version converter).
TF2ONNX_OPSETS = (7, 18)
DEFAULT_OPSET = 17
INT16_QDQ_OPSET = 21
# Weights files (the original .h5, the ports' .pth/.pt/.params): not artifacts, the reference
# is built from them (ssrconv.reference.weights.read_weights reads each).
WEIGHTS_SUFFIXES = (".h5", ".pth", ".pt", ".params")


@dataclass(frozen=True)
class Budget:
    """Parity budget in domain units; None means "not checked" for that statistic."""

    max_age: float | None = None  # years, max |age - reference age| over all inputs
    mean_age: float | None = None  # years
    p99_age: float | None = None  # years
    max_p_male: float | None = None  # max |P(male) - reference P(male)|
    min_gender_agreement: float | None = None  # fraction of faces with the same (p > 0.5) label

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


BUDGETS = {
    "fp32": Budget(max_age=0.01, max_p_male=1e-4),
    "fp16": Budget(max_age=0.25, mean_age=0.05, min_gender_agreement=1.0),
    # max_age bounds the tail: a face 7.8 y off passed mean and p99 alone (issue 23).
    "int8": Budget(max_age=2.5, mean_age=0.3, p99_age=1.0, min_gender_agreement=0.99),
    # bf16 execution (OpenVINO on AMX/avx512_bf16 CPUs): measured mean 0.066 / max 0.44 y on the
    # session-2 graph, inside the int8 limits and outside fp16's: its own class, int8's numbers.
    "bf16": Budget(mean_age=0.3, p99_age=1.0, min_gender_agreement=0.99),
}
# The budget class a precision is judged by (an unmanaged file: the precision read from it).
BUDGET_OF_PRECISION = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "dynamic": "int8",
                       "int8": "int8", "int8-mixed": "int8", "int8-integer": "int8",
                       "int16x8": "int8"}


@dataclass(frozen=True)
class Engine:
    """Something that executes artifacts of the formats it ``reads``."""

    name: str
    reads: tuple[str, ...]  # format families
    factory: str  # "module:callable"; called as factory(path, num_threads=, precision=, **options)
    extra: str | None  # pip extra that brings it; None: the base install
    needs: tuple[str, ...]  # importable modules that must be present
    description: str
    # "module:function" returning why this engine's speed here says nothing about the real
    # runtime's (None: it does), e.g. CoreML's numpy interpreter off macOS.
    untimed: str | None = None
    # "module:function(path)" returning why the engine cannot read this file by design (None:
    # it can), e.g. LiteRT.js and a variable-batch .tflite: such pairs are reported, not run.
    refusal: str | None = None
    in_browser: bool = False  # runs inside a web page (its timings include the page's calls)

    def refuses(self, path, versions: dict | None = None) -> str | None:
        """Why this engine cannot read ``path`` by design, or None; ``versions``: the library
        versions of the platform it would run on ({distribution: version}; None: this
        process's), for a refusal that depends on the runtime's version."""
        if self.refusal is None:
            return None
        module, name = self.refusal.split(":")
        return getattr(importlib.import_module(module), name)(Path(path), versions)

    def why_not_timed(self) -> str | None:
        """None when timing this engine here measures the runtime users deploy, else why not."""
        if self.untimed is None:
            return None
        module, name = self.untimed.split(":")
        return getattr(importlib.import_module(module), name)()

    def installed(self) -> bool:
        """True when every module the engine needs can be imported (found, not imported)."""
        from ssrconv._extras import available

        return all(available(m) for m in self.needs)

    def why_not_run(self, path, refusals: bool = True) -> str | None:
        """Why this engine does not run ``path`` here (None: run it): it is not installed (the
        message names the pip command), or (``refusals``) it cannot read the file by design."""
        if not self.installed():
            return (f"engine {self.name} is not installed here: pip install "
                    f"'ssrconv[{self.extra or 'all'}]'")
        return self.refuses(path) if refusals else None

    def load(self, path: Path, num_threads: int | None = None, precision: str | None = None,
             **options):
        """The engine's Runtime for ``path`` (its libraries are imported only now)."""
        from ssrconv._extras import check

        check(self.needs, self.extra or "all", f"engine {self.name}")
        module, name = self.factory.split(":")
        factory = getattr(importlib.import_module(module), name)
        return factory(Path(path), num_threads=num_threads, precision=precision, **options)


@dataclass(frozen=True)
class Format:
    """A file format ssrconv exports and reads."""

    family: str
    suffix: str
    package: bool  # a directory package (several files, hashed and committed as one)
    module: str  # reader ssrconv.formats.<module>, converter ssrconv.converters.<module>
    engines: tuple[str, ...]  # engine names; the first is the default
    extra: str  # pip extra holding the converter (each includes ``export``: TensorFlow, Keras)
    default_precision: str
    description: str
    in_all: bool = True  # exported by `--to all` (False: only when asked for by name)
    # The family of the model a package wraps and runs (a .web folder: an .onnx), if any.
    inner_family: str | None = None
    converter_needs: tuple[str, ...] = ("tf2onnx", "onnx")  # modules besides TensorFlow/Keras
    title: str = ""  # how prose names the format ("TFLite", "the browser")

    def reader(self):
        """The format's read side (``verify``, ``describe``, ``file_precision``, optionally
        ``static_batch``): needs only the runtime libraries, never TensorFlow."""
        return importlib.import_module(f"ssrconv.formats.{self.module}")

    def converter(self):
        """The format's converter module (``convert``; imported lazily: converting is heavy)."""
        return importlib.import_module(f"ssrconv.converters.{self.module}")

    @property
    def engine(self) -> Engine:
        return ENGINES[self.engines[0]]

    def inner_artifact(self, path) -> Path | None:
        """The file inside a package a runtime reads (a .web folder's .onnx, an IR's .xml), or
        None for a single-file format (the reader module's ``inner_artifact``)."""
        reader = getattr(self.reader(), "inner_artifact", None)
        return reader(Path(path)) if reader is not None else None

    def static_batch(self, path) -> int | None:
        """The fixed input batch stored in the file (``export --batch N``), or None when it is
        variable or the format stores none (the reader module's ``static_batch``)."""
        reader = getattr(self.reader(), "static_batch", None)
        return reader(Path(path)) if reader is not None else None


ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("onnxruntime", ("onnx",), "ssrconv.runtimes.onnx_rt:OnnxRuntime", None,
           ("onnxruntime", "onnx"), "onnxruntime, CPU execution provider"),
    Engine("litert", ("tflite",), "ssrconv.runtimes.tflite_rt:TFLiteRuntime", None,
           ("ai_edge_litert",), "ai-edge-litert (TFLite without TensorFlow), XNNPACK",
           refusal="ssrconv.runtimes.tflite_rt:refuses"),
    Engine("chromium-ort-wasm", ("onnx", "web"), "ssrconv.runtimes.browser_rt:BrowserRuntime",
           "browser", ("playwright", "onnx"),
           "onnxruntime-web (wasm) in headless system Chromium (make browser)", in_browser=True),
    Engine("chromium-litert-wasm", ("tflite",), "ssrconv.runtimes.browser_rt:LiteRtBrowserRuntime",
           "browser", ("playwright", "ai_edge_litert"),
           "LiteRT.js (wasm) in headless system Chromium; static-batch .tflite only",
           refusal="ssrconv.runtimes.browser_rt:litert_refuses", in_browser=True),
    Engine("coreml", ("coreml",), "ssrconv.runtimes.coreml_rt:load_coreml", "coreml",
           ("coremltools",), "CoreML on macOS; a numpy interpreter of the MIL program elsewhere",
           untimed="ssrconv.runtimes.coreml_rt:not_timable_reason"),
    Engine("openvino", ("onnx", "tflite", "openvino"), "ssrconv.runtimes.openvino_rt:OpenVinoRuntime",
           "openvino", ("openvino",),
           "OpenVINO CPU; precision hint from the artifact (f32 unless bf16), executed precision "
           "read back"),
    Engine("tract", ("onnx",), "ssrconv.runtimes.tract_rt:TractRuntime", "tract", ("tract",),
           "tract (pure-Rust ONNX runtime), one thread; no int16 QDQ",
           refusal="ssrconv.runtimes.tract_rt:refuses"),
    Engine("tflite-micro", ("tflite", "ethos-u"), "ssrconv.runtimes.tflm_rt:TflmRuntime", "mcu",
           ("tflite_micro",),
           "TensorFlow Lite Micro (pip tflite-micro), reference kernels, smallest arena; "
           "integer-only .tflite only",
           untimed="ssrconv.runtimes.tflm_rt:not_timed_reason",
           refusal="ssrconv.runtimes.tflm_rt:refuses"),
    Engine("ncnn", ("ncnn",), "ssrconv.runtimes.ncnn_rt:NcnnRuntime", "ncnn", ("ncnn",),
           "pip ncnn, CPU, Vulkan off; fp32 with fp16 storage and Winograd off"),
    Engine("mnn", ("mnn",), "ssrconv.runtimes.mnn_rt:MnnRuntime", "mnn", ("MNN",),
           "pip MNN, CPU backend; fp32 at precision high with Winograd off"),
)}

FORMATS: dict[str, Format] = {f.family: f for f in (
    Format("onnx", ".onnx", False, "onnx", ("onnxruntime",), "export", "fp32", "ONNX", title="ONNX"),
    Format("tflite", ".tflite", False, "tflite", ("litert",), "export", "fp32", "TFLite flatbuffer",
           converter_needs=(), title="TFLite"),
    Format("coreml", ".mlpackage", True, "coreml", ("coreml",), "export", "fp16",
           "CoreML ML Program package", converter_needs=("coremltools",), title="CoreML"),
    # Opt-in: it vendors the npm packages of package.json (`make browser`).
    Format("web", ".web", True, "web", ("chromium-ort-wasm",), "export", "fp32",
           "static web folder (ONNX + YuNet + app + onnxruntime-web)", in_all=False,
           inner_family="onnx", title="the browser"),
    Format("openvino", ".openvino", True, "openvino", ("openvino",), "openvino", "fp32",
           "OpenVINO IR package: <stem>.xml + <stem>.bin",
           converter_needs=("tf2onnx", "onnx", "openvino"), title="OpenVINO"),
    Format("ncnn", ".ncnn", True, "ncnn", ("ncnn",), "ncnn", "fp32",
           "ncnn package: <stem>.ncnn.param + <stem>.ncnn.bin (pnnx)",
           converter_needs=("tf2onnx", "onnx", "pnnx"), title="ncnn"),
    Format("mnn", ".mnn", False, "mnn", ("mnn",), "mnn", "fp32", "MNN flatbuffer",
           converter_needs=("tf2onnx", "onnx", "MNN"), title="MNN"),
    # Vela's compiled file needs an Ethos-U; its numerics are the integer file's on TFLite Micro.
    Format("ethos-u", ".ethos-u", True, "ethos_u", ("tflite-micro",), "mcu", "int16x8",
           "Arm Ethos-U package: integer-only .tflite + Vela-compiled .tflite and report per "
           "accelerator", converter_needs=("ethosu",), in_all=False, inner_family="tflite",
           title="Arm Ethos-U"),
)}
FAMILIES = tuple(FORMATS)
OPT_IN_FAMILIES = tuple(f.family for f in FORMATS.values() if not f.in_all)
REFERENCE_BACKEND = "keras"  # the reference itself, built from weights (not a format)
# The reference on the engine --reference-engine chooses (load_runtime(backend=...); the
# backend of the numpy reference's runtime and of bench's numpy reference rows).
REFERENCE_ON_ENGINE = "reference"
# What computes the reference (ssrconv.reference.reference_engine): "auto" is Keras when
# TensorFlow is installed, else numpy; "numpy" is "numpy-float32".
REFERENCE_ENGINES = ("auto", "keras", "numpy", "numpy-float32", "numpy-float64")
BACKENDS = (REFERENCE_BACKEND, *FAMILIES)
# The one suffix map of the project.
_BY_SUFFIX = {f.suffix: f for f in FORMATS.values()}


def format_of(path: str | Path) -> Format | None:
    """The format of a path, from its suffix (None: not an artifact ssrconv knows)."""
    return _BY_SUFFIX.get(Path(path).suffix.lower())


def formats_in_words() -> str:
    """Every format of the table as prose: "ONNX, TFLite, ..., ncnn and MNN" (taglines)."""
    titles = [f.title for f in FORMATS.values()]
    return ", ".join(titles[:-1]) + " and " + titles[-1]


def artifact_suffixes() -> tuple[str, ...]:
    """Every artifact suffix, for messages and directory scans."""
    return tuple(_BY_SUFFIX)


def engines_reading(family: str) -> list[Engine]:
    """Every engine that reads ``family``, the format's default first."""
    default = FORMATS[family].engines
    others = [e for e in ENGINES.values() if family in e.reads and e.name not in default]
    return [ENGINES[n] for n in default] + others


def engines_for(family: str, engine: str | None, engines) -> list[str | None]:
    """The engines a file of ``family`` is run on: ``engines`` ("all": every engine that reads
    the format, the default first; or names, those that read it), else ``engine`` (None: the
    format's default), as ``parity``/``bench`` ``--engine``/``--engines`` pair them."""
    if not engines:
        return [engine]
    readers = [e.name for e in engines_reading(family)]
    return readers if "all" in engines else [e for e in engines if e in readers]


def get_engine(name: str) -> Engine:
    """The engine called ``name``; a one-line error listing the engines otherwise."""
    from ssrconv.errors import OptionsError

    try:
        return ENGINES[name]
    except KeyError:
        raise OptionsError(f"unknown engine {name!r}: known engines are {', '.join(ENGINES)}") from None


# The calibrated rows' distill_output_weight. The int16 tensors (the 16x8 files, the integer
# int8 file's head) need inputs that span the outputs (without: the MXNet pair's 16x8 file p99
# 1.34 y, its integer int8 file 1.38); int8 maps want ranges no wider than the faces' (at
# weight 1 the original's integer int8 file measured p99 1.09 y on XNNPACK, its onnx-int8
# 1.07; at 0.5: 0.73 and 0.74). At 0.5 every member's data-free 16x8 file (builtin kernels and
# TFLite Micro) and onnx-int8 / openvino-int8 are within the int8 budget as well, so one
# distillation serves `--to all` (docs/INT8.md, "Which int8 TFLite file").
DISTILL_OUTPUT_WEIGHT = 0.5


@dataclass(frozen=True)
class Target:
    """One exportable artifact kind: a format at a precision."""

    family: str
    precision: str
    budget_class: str  # key into BUDGETS
    description: str
    # The shape of the fast export graph (ssrconv.graph, checked exact at export; `--graph
    # original` converts the reference's instead) for this target's converter and runtime: a
    # name in ssrconv.graph.VARIANTS (None: the one named like the family: "tflite", "onnx").
    graph_variant: str | None = None
    # Export options (ExportOptions fields) beyond the common ones that only some targets take:
    # "opset" for every target written through an ONNX graph (ONNX_OPTIONS).
    options: tuple[str, ...] = ()
    # The ONNX opsets (first, last) a target taking "opset" can be written at; --opset must be
    # one of them (ExportOptions checks), and without it the target is written at
    # DEFAULT_OPSET, or at the first of its range when that is above the default.
    opsets: tuple[int, int] = TF2ONNX_OPSETS
    # Exported by `--to all` (False: only when its precision or family is asked for by name).
    in_all: bool = True
    # Data-free calibration (no --calibration): the weight of the distilled inputs' output
    # targets (ssrconv.calibration.distill_inputs; 0: BatchNorm statistics alone): one
    # DISTILL_OUTPUT_WEIGHT for every calibrated row but the mixed TFLite file, so one
    # distillation serves an export (docs/INT8.md, "Which int8 TFLite file"); rows that are
    # not calibrated never read it.
    distill_output_weight: float = DISTILL_OUTPUT_WEIGHT

    @property
    def key(self) -> str:
        return f"{self.family}-{self.precision}"

    def opset(self, asked: int | None) -> int | None:
        """The ONNX opset this target is written at: ``asked`` (``--opset``, checked against
        ``opsets`` by ExportOptions), else DEFAULT_OPSET brought into ``opsets``; None for a
        target that takes no opset."""
        if "opset" not in self.options:
            return None
        first, last = self.opsets
        return int(asked) if asked is not None else min(max(DEFAULT_OPSET, first), last)

    def opsets_in_words(self) -> str:
        """``opsets`` as a user reads it: "21", "7..18"."""
        first, last = self.opsets
        return str(first) if first == last else f"{first}..{last}"

    @property
    def variant(self) -> str:
        """The fast-graph variant this target converts (``graph_variant``, else the family's)."""
        return self.graph_variant or self.family

    @property
    def format(self) -> Format:
        return FORMATS[self.family]

    @property
    def suffix(self) -> str:
        return self.format.suffix

    @property
    def budget(self) -> Budget:
        return BUDGETS[self.budget_class]

    def filename(self, task: str) -> str:
        return f"ssrnet_{task.replace('-', '_')}_{self.precision}{self.suffix}"


# The options of every target written through a tf2onnx graph (ONNX itself, and the formats
# converted from it).
ONNX_OPTIONS = ("opset",)
# The integer ONNX rows: int16 QDQ tensors, opset INT16_QDQ_OPSET and no other.
INTEGER_ONNX_OPSETS = (INT16_QDQ_OPSET, INT16_QDQ_OPSET)


TARGETS: dict[str, Target] = {
    t.key: t
    for t in (
        Target("onnx", "fp32", "fp32", "ONNX (tf2onnx), float32", options=ONNX_OPTIONS),
        Target("onnx", "int8", "int8",
               "ONNX int8: static QDQ (onnxruntime.quantization, int8 activations, int8 "
               "per-channel weights) on the relu stream's convolutions and pools, the rest "
               "float; calibrated", graph_variant="per-head", options=ONNX_OPTIONS),
        Target("onnx", "int8-integer", "int8",
               "ONNX integer: the tflite-int8 file (int8 convolutions, int16 SSR head, "
               "fine-tuned) as QDQ, every compute node between DequantizeLinear and "
               "QuantizeLinear (opset 21: int16 QDQ); for ONNX-fed NPUs; calibrated",
               graph_variant="per-head-int8-integer", options=ONNX_OPTIONS,
               opsets=INTEGER_ONNX_OPSETS,
               # Not in `--to all`: an NPU compiler's input, on onnxruntime's CPU provider
               # slower than onnx-int8 (the original's on onnxruntime, faces, recipe version 8:
               # 0.19 / 0.90 / 1.1 y; data-free, recipe version 9: 0.19 / 0.73 / 0.90;
               # docs/INT8.md, "Integer ONNX").
               in_all=False),
        Target("onnx", "int16x8", "int8",
               "ONNX A16W8: the tflite-int16x8 file (int16 activations, int8 per-channel "
               "weights) as QDQ, every compute node between DequantizeLinear and QuantizeLinear "
               "(opset 21: int16 QDQ); the form Qualcomm QNN and other ONNX-fed NPUs take; "
               "calibrated", graph_variant="per-head-integer", options=ONNX_OPTIONS,
               opsets=INTEGER_ONNX_OPSETS,
               # Not in `--to all`, as the TFLite file it converts: an NPU compiler's input.
               # Every member's file is within the int8 budget on onnxruntime, OpenVINO and
               # onnxruntime-web, calibrated on faces and data-free (OpenVINO, faces: original
               # 0.069 / 0.28 / 0.42 y, PyTorch port 0.16 / 0.52 / 0.71, MXNet pair 0.070 /
               # 0.33 / 0.49; docs/INT8.md, "A16W8").
               in_all=False),
        Target("tflite", "fp32", "fp32", "TFLite, float32"),
        Target("tflite", "fp16", "fp16", "TFLite, float16 weights (dequantized to float32 at load)"),
        Target("tflite", "dynamic", "int8", "TFLite dynamic range: int8 weights, float activations",
               graph_variant="per-head"),
        Target("tflite", "int8", "int8",
               "TFLite int8, integer-only: int8 activations and per-channel weights in the "
               "convolutions (a member whose stage-1 maps are wider than the original's, the "
               "PyTorch port: only the manifest's int8_maps, the others on int16, about 100x "
               "slower on XNNPACK; --precision int8-mixed for a desktop CPU), the SSR head on "
               "int16 activations (int8 weights, int64 biases), "
               "every operator integer (float32 or --int8-io input at the boundary); each head "
               "its own tensors, the first convolutions in row bands; calibrated on faces: "
               "quantization-aware fine-tuning by distillation from the float graph; "
               "data-free: CLE and GPTQ, no fine-tuning; for XNNPACK, TFLite Micro and NPUs",
               graph_variant="per-head-int8-integer", options=("int8_io",),
               # In `--to all`: every member's file is within the int8 budget calibrated on
               # faces and data-free, on XNNPACK and TFLite Micro (recipe version 9, data-free,
               # XNNPACK: original 0.19 / 0.73 / 0.87 y, MXNet pair 0.23 / 0.95 / 1.7, mean /
               # p99 / max; the PyTorch port's with every map but relu_conv2 on int16,
               # Variant.wide_stage1_int8_maps: 0.23 / 0.79 / 1.2, faces 0.15 / 0.49 / 0.72;
               # all its maps int8 it was 0.50 / 2.5 / 7.7); its export costs ~40-55 CPU-s
               # data-free, 2.5-3.5 CPU-minutes on faces (fine-tuning) (docs/INT8.md, "Every
               # member's data-free int8-integer file", "The PyTorch port's int8-integer file:
               # int16 maps").
               ),
        Target("tflite", "int8-mixed", "int8",
               "TFLite int8, mixed: convolutions and pools in int8 (weights and activations) "
               "except each stream's first block; SSR head in float (float32 arithmetic, "
               "float16-stored weights); calibrated", options=("int8_io",),
               distill_output_weight=0.0,
               # Opt-in: tflite-int8 (integer-only) is smaller (159,280 against 190,888
               # bytes), faster on XNNPACK (0.48x against 0.77x of the original-graph fp32
               # file) and runs on TFLite Micro, which refuses this file's float16 weights.
               # Kept for what the integer file does not give: the lowest error on faces of
               # the int8 TFLite files (the original's 0.14 / 0.68 / 1.2 y against
               # 0.19 / 0.91 / 1.1), an int8 file of the original graph (--graph original),
               # and for the PyTorch port an int8 file whose maps are all int8 (its integer
               # file runs them on int16: ~110x slower on XNNPACK) (docs/INT8.md, "Which int8
               # TFLite file"). Data-free from BatchNorm-only inputs (distill_output_weight 0),
               # on which its clips were tuned.
               in_all=False),
        Target("tflite", "int16x8", "int8",
               "TFLite 16x8, integer-only: int16 activations, int8 per-channel weights, every "
               "operator integer (SSR head included; float32 I/O at the boundary), each head "
               "its own convs (the smallest TFLite Micro arena); for TFLite Micro and Ethos-U; "
               "calibrated", graph_variant="per-head-integer",
               # Every member's file is within the int8 budget calibrated on faces and
               # data-free (data-free mean / p99 / max y, builtin kernels: original
               # 0.11 / 0.47 / 0.53, PyTorch port 0.17 / 0.54 / 0.79, MXNet pair
               # 0.095 / 0.45 / 0.60, since the distilled inputs get target outputs). Not in
               # `--to all`: `--to ethos-u` writes this file's integer graph as
               # `ethos-u-int16x8` (the same conversion with int16 I/O, run on TFLite Micro by
               # parity), and on a desktop
               # CPU the 16x8 file runs on LiteRT's builtin int16 kernels at ~100x the fp32
               # file's time (docs/INT8.md, "Speed on this CPU").
               in_all=False),
        Target("ethos-u", "int16x8", "int8",
               "Arm Ethos-U: the tflite-int16x8 file with int16 I/O, compiled by Vela for "
               "ethos-u55-128 and ethos-u65-256 (NPU/CPU split, SRAM, flash and time: Vela's "
               "estimates); numerics on TFLite Micro", graph_variant="per-head-integer"),
        Target("coreml", "fp16", "fp16", "CoreML mlprogram, float16 compute",
               graph_variant="coreml", options=("image_input",)),
        Target("coreml", "fp32", "fp32", "CoreML mlprogram, float32 compute",
               graph_variant="coreml-perstage", options=("image_input",)),
        Target("web", "fp32", "fp32",
               "Static web folder: fp32 ONNX + YuNet + a plain-JS app on onnxruntime-web (wasm)",
               graph_variant="onnx", options=ONNX_OPTIONS),
        Target("ncnn", "fp32", "fp32",
               "ncnn (pnnx from the ONNX export) param + bin, float32 weights; run with fp16 "
               "storage and Winograd off", graph_variant="onnx-unpadded", options=ONNX_OPTIONS),
        Target("ncnn", "fp16", "fp16", "ncnn param + bin, float16 weights, fp16 storage and "
               "arithmetic; Winograd off per convolution in the param (31=64)",
               graph_variant="onnx-unpadded-fp16", options=ONNX_OPTIONS),
        Target("mnn", "fp32", "fp32",
               "MNN (mnnconvert from the ONNX export), float32; run at precision high, Winograd off",
               graph_variant="onnx-unpadded", options=ONNX_OPTIONS),
        Target("mnn", "fp16", "fp16", "MNN, float16 weights (mnnconvert --fp16); run at precision "
               "low, Winograd off (a runtime hint the manifest's mnn_runtime states)",
               graph_variant="onnx-unpadded", options=ONNX_OPTIONS),
        Target("openvino", "fp32", "fp32",
               "OpenVINO IR (.xml + .bin) of the fp32 ONNX export, f32 weights, f32 execution",
               graph_variant="onnx", options=ONNX_OPTIONS),
        Target("openvino", "fp16", "fp16", "OpenVINO IR, float16-stored weights (f32 execution)",
               graph_variant="onnx", options=ONNX_OPTIONS),
        Target("openvino", "bf16", "bf16",
               "OpenVINO IR, f32 weights, bf16 execution requested (CPUs with bf16 support)",
               graph_variant="onnx", options=ONNX_OPTIONS),
        Target("openvino", "int8", "int8",
               "OpenVINO IR of the int8 QDQ ONNX export (the project's int8 recipe)",
               graph_variant="per-head", options=ONNX_OPTIONS),
    )
}

# The targets `--to all` exports (every row but the opt-in families').
EXPORTED_BY_ALL = tuple(k for k, t in TARGETS.items()
                        if t.family not in OPT_IN_FAMILIES and t.in_all)

DEFAULT_PRECISION = {f.family: f.default_precision for f in FORMATS.values()}


def targets_taking(option: str) -> list[Target]:
    """The rows that take the export option ``option`` (an ExportOptions field: their
    ``options``)."""
    return [t for t in TARGETS.values() if option in t.options]


def precisions_of(family: str, in_all: bool = False) -> list[str]:
    """Precisions the table offers for ``family`` (``in_all``: only those `--to all` exports)."""
    return [t.precision for t in TARGETS.values()
            if t.family == family and (t.in_all or not in_all)]


def get_target(key: str) -> Target:
    """The row ``family-precision``; a one-line error listing the table otherwise."""
    from ssrconv.errors import OptionsError

    try:
        return TARGETS[key]
    except KeyError:
        raise OptionsError(f"unknown target {key!r}: known targets are {', '.join(TARGETS)}") from None

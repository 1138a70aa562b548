"""ncnn export: a directory package ``<stem>.ncnn/`` holding ``<stem>.ncnn.param`` (the graph,
text) and ``<stem>.ncnn.bin`` (the weights), converted by ``pnnx`` from the project's ONNX export.

What the files expect (the one input contract, see docs/CONVERTERS.md "ncnn"): one face per
call, the contract's 64 x 64 x 3 BGR 0..255 float array as it is (NHWC without the batch dim).
ncnn reads that array as a Mat with c=64, h=64, w=3; the graph's first layer (``Permute``,
inserted by pnnx for tf2onnx's NHWC->NCHW transpose) turns it into ncnn's 3 x 64 x 64. The
blobs are renamed from pnnx's ``in0``/``out0``/``out1`` to ``face_bgr``/``age``/``p_male``.

Precisions: fp32 writes float32 weights (``fp16=0``: pnnx's default ``fp16=1`` stores every
weight as float16, which alone cost 0.15 years); fp16 keeps pnnx's float16 weights and is run
with ncnn's fp16 storage and arithmetic.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

from ssrconv._extras import INSTALL_COMMANDS
from ssrconv.atomic import scratch_dir
from ssrconv.converters.tool import run_tool
from ssrconv.errors import MissingExtraError
from ssrconv.formats.ncnn import BIN_SUFFIX, INPUT_NAME, PARAM_SUFFIX, verify

# pnnx's names for the graph's input and outputs (outN in the ONNX graph's output order).
_PNNX_INPUT = "in0"
_PNNX_OUTPUT = "out{}"
# pnnx writes these besides the ncnn files; ncnn needs none of them.
_PNNX_EXTRAS = ("pnnxparam", "pnnxbin", "pnnxpy", "pnnxonnx", "ncnnpy")
_TIMEOUT_S = 600
# ncnn's per-layer feature mask: param key 31, read by Net::load_param into layer->featmask and
# applied to the Option each layer is created and run with (net.cpp get_masked_option): bit 0
# no fp16 arithmetic, bit 1 no fp16 storage/packing, bit 6 no Winograd. It travels in the file,
# so it holds under the options a phone app runs (ncnn's defaults).
FEATMASK_KEY = "31"
NO_WINOGRAD = 1 << 6
# The fp16 file on ARMv8.2 CPUs (fp16 arithmetic): Winograd's F(6,3)/F(4,3) transforms computed
# in float16 put it at max 1.41 y / mean 0.146 y on the 300 dev faces (budget 0.25 / 0.05);
# direct/im2col convolution in float16 stays inside (docs/ARM64.md). x86 has no fp16
# arithmetic, so there the mask changes nothing measurable.
FP16_FEATMASKS = {"Convolution": NO_WINOGRAD, "ConvolutionDepthWise": NO_WINOGRAD}



def pnnx_executable() -> Path:
    """The pnnx converter binary inside the installed ``pnnx`` wheel, found without importing
    the package: ``import pnnx`` imports torch (for its PyTorch frontend), which the ONNX path
    never uses, and the wheel's ``torch`` requirement is what made a full install pull 5 GB of
    CUDA packages. ``make setup`` installs pnnx with ``--no-deps``."""
    spec = importlib.util.find_spec("pnnx")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        exe = Path(folder) / ("pnnx.exe" if os.name == "nt" else "pnnx")
        if exe.is_file():
            return exe
    raise MissingExtraError(f"ssrconv export --to ncnn needs the pnnx converter binary "
                            f"(pnnx is not installed): {INSTALL_COMMANDS['pnnx']}")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Convert ``model`` (via its ONNX export) to an ncnn package directory at ``dest``."""
    import onnx

    from ssrconv.converters.onnx import to_proto

    pnnx_exe = pnnx_executable()

    stem = Path(target.filename(options.task)).name[: -len(target.suffix)]
    proto = to_proto(model, target.opset(options.opset), options.batch)
    outputs = [o.name for o in proto.graph.output]
    # The stage tensors become extra graph outputs, so that they keep a findable name in the
    # param (pnnx numbers every other blob); ncnn computes a blob only when it is extracted,
    # so they cost nothing at run time. They keep their ONNX names (see ssrconv.stages).
    outputs += _add_stage_outputs(proto, model.output_names)
    fp16 = 1 if target.precision == "fp16" else 0
    with scratch_dir("ssrconv-pnnx-") as tmp:
        work = Path(tmp)
        onnx.save(proto, str(work / "model.onnx"))
        command = [str(pnnx_exe), "model.onnx", "inputshape=[1,64,64,3]", f"fp16={fp16}",
                   f"ncnnparam={stem}{PARAM_SUFFIX}", f"ncnnbin={stem}{BIN_SUFFIX}"]
        command += [f"{key}=scratch.{key}" for key in _PNNX_EXTRAS]
        param_src, bin_src = work / f"{stem}{PARAM_SUFFIX}", work / f"{stem}{BIN_SUFFIX}"
        run_tool(command, "pnnx", _TIMEOUT_S, cwd=work,
                 produced=lambda: param_src.is_file() and bin_src.is_file())
        names = {_PNNX_INPUT: INPUT_NAME}
        names.update({_PNNX_OUTPUT.format(i): name for i, name in enumerate(outputs)})
        text = _rename_blobs(param_src.read_text(encoding="utf-8"), names)
        if fp16:
            text = set_featmasks(text, FP16_FEATMASKS)
        dest.mkdir()
        (dest / param_src.name).write_text(text, encoding="utf-8")
        os.replace(bin_src, dest / bin_src.name)
    verify(dest)
    import ncnn

    return {"converter": "pnnx", "pnnx_fp16_weights": bool(fp16),
            "ncnn_featmasks": FP16_FEATMASKS if fp16 else {},
            "converter_versions": {"pnnx": _version("pnnx"),
                                   "ncnn": getattr(ncnn, "__version__", None)},
            "input_layout": "one face per call: 64x64x3 BGR (the contract's NHWC without the "
                            "batch dim), read by ncnn as c=64 h=64 w=3; a Permute layer makes "
                            "it CHW"}


def _add_stage_outputs(proto, heads) -> list[str]:
    """Append the tensors holding the stage tensors of ``heads`` to the graph outputs (the
    stage layers' own, or the fast graph's fused ones: ssrconv.stages.locate); their
    names, in order."""
    import onnx

    from ssrconv.stages import locate, stage_specs

    heads = tuple(heads)
    produced = {name: name for node in proto.graph.node for name in node.output}
    names = list(dict.fromkeys(locate(spec, heads, lambda units: produced)[0]
                               for spec in stage_specs(heads)))
    for name in names:
        proto.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return names


def set_featmasks(text: str, masks: dict[str, int]) -> str:
    """The param text with ncnn's per-layer feature mask (key 31) set on every layer whose type
    ``masks`` names (ORed into a mask the line already has)."""
    lines = text.splitlines()
    out = lines[:2]
    for line in lines[2:]:
        tokens = line.split()
        mask = masks.get(tokens[0]) if tokens else None
        if mask:
            n_in, n_out = int(tokens[2]), int(tokens[3])
            head, params = tokens[:4 + n_in + n_out], tokens[4 + n_in + n_out:]
            old = [int(p.split("=", 1)[1]) for p in params if p.startswith(FEATMASK_KEY + "=")]
            params = [p for p in params if not p.startswith(FEATMASK_KEY + "=")]
            line = " ".join(head + params + [f"{FEATMASK_KEY}={mask | (old[0] if old else 0)}"])
        out.append(line)
    return "\n".join(out) + "\n"


def _rename_blobs(text: str, names: dict[str, str]) -> str:
    """The param text with whole-token blob names replaced (layer lines only)."""
    lines = text.splitlines()
    out = lines[:2]
    for line in lines[2:]:
        tokens = line.split()
        if len(tokens) < 4:
            out.append(line)
            continue
        n_in, n_out = int(tokens[2]), int(tokens[3])
        blobs = [names.get(t, t) for t in tokens[4:4 + n_in + n_out]]
        out.append(" ".join(tokens[:4] + blobs + tokens[4 + n_in + n_out:]))
    return "\n".join(out) + "\n"




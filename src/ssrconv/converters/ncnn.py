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
import subprocess
from pathlib import Path

from ssrconv._extras import INSTALL_COMMANDS
from ssrconv.atomic import scratch_dir
from ssrconv.errors import MissingExtraError, SsrconvError, clip
from ssrconv.formats.ncnn import BIN_SUFFIX, INPUT_NAME, PARAM_SUFFIX, verify

# pnnx's names for the graph's input and outputs (outN in the ONNX graph's output order).
_PNNX_INPUT = "in0"
_PNNX_OUTPUT = "out{}"
# pnnx writes these besides the ncnn files; ncnn needs none of them.
_PNNX_EXTRAS = ("pnnxparam", "pnnxbin", "pnnxpy", "pnnxonnx", "ncnnpy")
_TIMEOUT_S = 600


class ConverterError(SsrconvError):
    """pnnx failed to convert the ONNX graph."""



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
    proto = to_proto(model, options.opset, options.batch)
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
        try:
            done = subprocess.run(command, cwd=work, capture_output=True, text=True,
                                  timeout=_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise ConverterError(f"pnnx did not finish in {_TIMEOUT_S} s") from None
        param_src, bin_src = work / f"{stem}{PARAM_SUFFIX}", work / f"{stem}{BIN_SUFFIX}"
        if done.returncode != 0 or not param_src.is_file() or not bin_src.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ConverterError(f"pnnx failed (exit {done.returncode}): {clip(tail[0])}")
        names = {_PNNX_INPUT: INPUT_NAME}
        names.update({_PNNX_OUTPUT.format(i): name for i, name in enumerate(outputs)})
        text = _rename_blobs(param_src.read_text(encoding="utf-8"), names)
        dest.mkdir()
        (dest / param_src.name).write_text(text, encoding="utf-8")
        os.replace(bin_src, dest / bin_src.name)
    verify(dest)
    import ncnn

    return {"converter": "pnnx", "pnnx_fp16_weights": bool(fp16),
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




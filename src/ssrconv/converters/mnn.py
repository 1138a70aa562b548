"""MNN export: one ``.mnn`` file converted by MNN's converter from the project's ONNX export.

What the file expects (docs/CONVERTERS.md "MNN"): input ``face_bgr``, the contract's
N x 64 x 64 x 3 BGR 0..255 float batch as it is. MNN declares an ONNX model's input in NCHW
terms, but tf2onnx's graph takes NHWC data and transposes inside; so the runtime hands the batch
to MNN tagged ``NCHW`` ("the dims are as given, convert nothing"). Tagged ``NHWC`` MNN would
transpose it to N x 3 x 64 x 64 and the first convolution fails its shape check (the forward
returns nothing: that, not the names, is why the ONNX-converted module seemed not to load by
the output names ``age``/``p_male``). The outputs keep the ONNX names.

fp16 stores the weights as float16 (``--fp16``); computation precision is the runtime's. MNN's
converter makes float16 by truncation (toward zero: 1 + 3 * 2^-12 becomes 1, not 1 + 2^-10), so
every weight shrinks a little in the same direction and the errors add up layer after layer
instead of averaging out; the ONNX model's float initializers are therefore rounded to the
nearest float16 first (:func:`round_to_fp16`), which MNN's conversion then keeps exactly
(docs/PORTS.md: the PyTorch port's mnn-fp16 mean error 0.051 -> 0.013 y).
The options the file must run with (precision, Winograd off: ``formats.mnn.RUN_OPTIONS``)
cannot travel in an .mnn: the file's bizCode names their key (:func:`run_key_for`) and the
manifest states them (``mnn_runtime``).
The converter is called through MNN's C++ binding ``_tools.mnnconvert`` in a child process: the
package's ``mnnconvert`` console script also posts a usage log to a remote endpoint.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ssrconv.atomic import scratch_dir
from ssrconv.converters.tool import run_tool
from ssrconv.errors import ConverterError
from ssrconv.formats.mnn import BIZ_CODE, RUN_OPTIONS, verify

_TIMEOUT_S = 600
_CONVERT = "import sys, MNN, _tools; _tools.mnnconvert(sys.argv)"


_UUID4 = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def stable_uuid(path: Path) -> None:
    """Replace the random ``mnn_uuid`` MNN's converter writes (AddUUID.cpp: a uuid4 from
    std::random_device on every conversion) by a UUID derived from the rest of the file, so the
    same model gives the same bytes (docs/CONVERTERS.md, "Byte-reproducible exports"). Same
    length, same place in the flatbuffer: nothing else moves."""
    import hashlib
    import uuid

    data = path.read_bytes()
    found = list(_UUID4.finditer(data))
    if len(found) != 1:
        raise ConverterError(f"{path}: expected one mnn_uuid in MNN's output, found {len(found)} "
                             "(the converter's layout changed?)")
    start, end = found[0].span()
    rest = hashlib.sha256(data[:start] + data[end:]).hexdigest()
    stable = str(uuid.uuid5(uuid.NAMESPACE_URL, f"ssrconv:mnn/{rest}")).encode()
    path.write_bytes(data[:start] + stable + data[end:])


def round_to_fp16(proto) -> int:
    """Round every float32 initializer of ``proto`` to the nearest float16 value (kept as
    float32), in place; returns how many changed. MNN's ``--fp16`` truncates toward zero
    (measured: module docstring); values already on the float16 grid convert exactly."""
    import numpy as np
    from onnx import numpy_helper

    changed = 0
    for initializer in proto.graph.initializer:
        array = numpy_helper.to_array(initializer)
        if array.dtype != np.float32:
            continue
        rounded = array.astype(np.float16).astype(np.float32)
        if not np.array_equal(rounded, array):
            initializer.CopyFrom(numpy_helper.from_array(rounded, initializer.name))
            changed += 1
    return changed


def run_key_for(model, precision: str) -> str:
    """The RUN_OPTIONS key the file of ``model`` at ``precision`` must run with: fp16 files in
    fp16 arithmetic, except a model with stage-1 maps wider than the original's (the PyTorch
    port: 8 x 8, so 640-product stage-1 Dense layers), whose fp16 arithmetic on arm64 broke the
    fp16 budget (mean 0.063 y; float32 arithmetic 0.012, docs/ARM64.md)."""
    from ssrconv.graph import stage1_products
    from ssrconv.reference.family import wide_stage1

    if precision == "fp16" and wide_stage1(stage1_products(model)):
        return "fp16-fp32-arithmetic"
    return precision


def convert(model, target, options, dest: Path, calibration, metadata: dict[str, str]) -> dict:
    """Convert ``model`` (via its ONNX export) to an .mnn file at ``dest``."""
    import onnx

    from ssrconv.converters.onnx import to_proto

    key = run_key_for(model, target.precision)
    proto = to_proto(model, target.opset(options.opset), options.batch)
    if target.precision == "fp16":
        round_to_fp16(proto)
    with scratch_dir("ssrconv-mnn-") as tmp:
        source = Path(tmp) / "model.onnx"
        onnx.save(proto, str(source))
        command = [sys.executable, "-c", _CONVERT, "-f", "ONNX", "--modelFile", str(source),
                   "--MNNModel", str(dest), "--bizCode",
                   BIZ_CODE.format(run_key=key)]
        if target.precision == "fp16":
            command.append("--fp16")
        # MNN prints its error among progress lines: quote the last line naming an error
        run_tool(command, "MNN's converter", _TIMEOUT_S,
                 produced=lambda: dest.is_file() and dest.stat().st_size > 0,
                 says=lambda line: "rror" in line)
    stable_uuid(dest)
    verify(dest)
    from ssrconv.formats.mnn import mnn_module

    run = RUN_OPTIONS[key]
    return {"converter": "mnnconvert (ONNX)", "mnn_fp16_weights": target.precision == "fp16",
            "mnn_runtime": {"backend": "CPU", "precision": run["precision"], "hints": run["hints"],
                            "run_key": key,
                            "why": "set on the RuntimeManager or session (not in the file): "
                                   "Winograd's 3x3 transforms cost 0.0034 y in fp32 and, in fp16 "
                                   "arithmetic at precision low on ARMv8.2 CPUs, put the fp16 "
                                   "file outside its budget (docs/ARM64.md)" + run["why"]},
            "fp16_rounding": ("nearest (initializers rounded before mnnconvert --fp16, which "
                              "truncates)" if target.precision == "fp16" else None),
            "converter_versions": {"MNN": mnn_module().version()},
            "input_layout": "N x 64 x 64 x 3 BGR as given (MNN data format tag NCHW: no "
                            "conversion; the graph transposes to NCHW itself)"}




"""Row bands: an integer .tflite whose largest feature maps are computed a band of rows at a
time, for TensorFlow Lite Micro's arena (the "MCU RAM" of ``ssrconv.mcu``).

SSR-Net's first convolutions write the largest tensors of the graph (per head 60x60x32 int8 in
the relu stream, 60x60x16 in the tanh stream) and each is read by one 2x2 stride-2 pool only.
:func:`band_rows` replaces such a conv + pool pair by, per band of the pool's output rows, a
STRIDED_SLICE of the conv's input rows the band needs, the same conv (the same weight and bias
tensors) and the same pool, and one CONCATENATION of the bands along the rows. Every band
tensor keeps the scale and zero point of the tensor it is a part of, so each output value is
computed from the same integers by the same kernel: the file's outputs are bit-identical (the
test checks it on TFLite Micro and LiteRT), and only one band of the conv's output is alive at
a time. What it costs: each band's three operators and tensors, and its conv's and pool's
per-channel requantization data, in the arena's persistent part and in flash (the age+gender
int8-integer file, 8 bands more than convs: arena tail +9,776 bytes, file +6,536; the weights
are not copied; docs/INT8.md, "TFLite Micro arena: row bands").

A SAME-padded stride-1 conv (the PyTorch port's, padding=1) is first made VALID on its input
padded explicitly (one PAD per input, shared by its convs, with the zero point SAME pads with:
the same integers again); its int16 maps then go in bands as well (the port's int8-integer
file: arena 374,112 -> 226,224 bytes; docs/INT8.md, "The PyTorch port's int8-integer file").
"""

from __future__ import annotations

import copy

import numpy as np

from ssrconv.formats.tflite_flatbuffer import operators, opcode_index, pack, schema

# A conv output larger than this (bytes at batch 1: int16 maps count twice) is computed in
# ceil(output / BAND_BYTES) bands of its pool's rows, each about this size: SSR-Net's relu
# stream's first conv (60x60x32) in 4 bands (16, 16, 14, 14 conv rows: 30,720 bytes the
# largest), the tanh stream's (60x60x16) in 2, about the next largest map's (28x28x32, 25,088). The age+gender int8-integer file's arena by this bound (docs/INT8.md, "TFLite Micro
# arena"): 20,000: 131,280 bytes; 30,000: 125,376; 40,000: 132,720; 60,000: 144,400; each band
# costs flash and the arena's persistent part (module docstring).
BAND_BYTES = 30_000
_SAME, _VALID = 0, 1  # tflite Padding
_POOLS = ("MAX_POOL_2D", "AVERAGE_POOL_2D", "DEPTHWISE_CONV_2D")
# STRIDED_SLICE masks: the batch, column and channel axes are taken whole
_WHOLE_AXES = 0b1101


def _window(name: str, op, sg, same: bool = False) -> tuple[int, int] | None:
    """(kernel rows, stride rows) of a VALID, undilated row-local operator, None otherwise;
    with ``same``, also of a SAME-padded stride-1 CONV_2D with an odd square kernel (which
    :func:`_pad_explicitly` makes VALID)."""
    options = op.builtinOptions
    if name == "CONV_2D" or name == "DEPTHWISE_CONV_2D":
        if options.dilationHFactor != 1 or options.dilationWFactor != 1:
            return None
        if options.padding != _VALID and not (
                same and name == "CONV_2D" and options.padding == _SAME
                and options.strideH == options.strideW == 1 and _odd_square(op, sg)):
            return None
        if name == "DEPTHWISE_CONV_2D" and options.depthMultiplier != 1:
            return None
        return int(sg.tensors[op.inputs[1]].shape[1]), int(options.strideH)
    if name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        if options.padding != _VALID:
            return None
        return int(options.filterHeight), int(options.strideH)
    return None


def _bytes(tensor) -> int:
    """Bytes of activation ``tensor`` at batch 1 (int8 1 per element, int16 2)."""
    return int(np.prod(tensor.shape)) * (2 if tensor.type == schema().TensorType.INT16 else 1)


def _odd_square(op, sg) -> bool:
    """True when the CONV_2D ``op``'s kernel is k x k with k odd (SAME pads (k - 1) / 2 on
    every side)."""
    _, rows, cols, _ = (int(d) for d in sg.tensors[op.inputs[1]].shape)
    return rows == cols and rows % 2 == 1


def _pad_explicitly(model, sg, conv, padded: dict[int, int]) -> "object | None":
    """Make the SAME-padded CONV_2D ``conv`` VALID on an explicitly padded input: a PAD of its
    input by (k - 1) / 2 rows and columns on each side, with the input's zero point, which is
    the value 0 SAME pads with (so the conv's outputs are the same integers), shared by the
    convs of one input (``padded``: input -> padded tensor). Returns the new PAD operator, or
    None when ``conv`` is VALID or its input's PAD exists already."""
    fb = schema()
    options = conv.builtinOptions
    if options.padding == _VALID:
        return None
    options.padding = _VALID
    x = int(conv.inputs[0])
    pad = (int(sg.tensors[conv.inputs[1]].shape[1]) - 1) // 2
    if x in padded:
        conv.inputs = np.asarray([padded[x], *conv.inputs[1:]], np.int32)
        return None
    wide = copy.deepcopy(sg.tensors[x])
    wide.shape = np.asarray(wide.shape, np.int32).copy()
    wide.shape[1:3] += 2 * pad
    if wide.shapeSignature is not None and len(wide.shapeSignature):
        wide.shapeSignature = np.asarray(wide.shapeSignature, np.int32).copy()
        wide.shapeSignature[1:3] += 2 * pad
    wide.name = (wide.name or b"") + b"/padded"
    wide.buffer = 0
    sg.tensors.append(wide)
    padded[x] = len(sg.tensors) - 1
    buffer = fb.BufferT()
    buffer.data = np.frombuffer(np.asarray([[0, 0], [pad, pad], [pad, pad], [0, 0]],
                                           np.int32).tobytes(), np.uint8)
    model.buffers.append(buffer)
    paddings = fb.TensorT()
    paddings.shape = np.asarray([4, 2], np.int32)
    paddings.type = fb.TensorType.INT32
    paddings.buffer = len(model.buffers) - 1
    paddings.name = f"pad_{pad}".encode()
    sg.tensors.append(paddings)
    op = fb.OperatorT()
    op.opcodeIndex = opcode_index(model, fb.BuiltinOperator.PAD, 1)
    op.inputs = np.asarray([x, len(sg.tensors) - 1], np.int32)
    op.outputs = np.asarray([padded[x]], np.int32)
    op.builtinOptionsType = fb.BuiltinOptions.PadOptions
    op.builtinOptions = fb.PadOptionsT()
    conv.inputs = np.asarray([padded[x], *conv.inputs[1:]], np.int32)
    return op


def _bandable(ops, sg, readers, outputs, band_bytes) -> list[tuple[int, int]]:
    """(conv index, pool index) pairs: a stride-1 CONV_2D writing more than ``band_bytes`` read
    only by one pooling operator (a pool, or a depthwise conv standing for one)."""
    pairs = []
    for k, (name, op) in enumerate(ops):
        window = _window(name, op, sg, same=True) if name == "CONV_2D" else None
        if window is None or window[1] != 1:  # (kernel rows, stride rows)
            continue
        y = int(op.outputs[0])
        if y in outputs or _bytes(sg.tensors[y]) <= band_bytes:
            continue
        if len(readers.get(y, [])) != 1:
            continue
        p = readers[y][0]
        pool_name, pool = ops[p]
        if pool_name not in _POOLS or _window(pool_name, pool, sg) is None:
            continue
        if int(pool.inputs[0]) != y:
            continue
        pairs.append((k, p))
    return pairs


def _tensor_like(sg, index: int, rows: int, band: int, in_place: bool = False) -> int:
    """A new activation tensor like ``sg.tensors[index]`` with ``rows`` rows, named after it
    and ``band``; its index. With
    ``in_place``, ``sg.tensors[index]`` itself gets the rows (its writer is replaced: TFLite
    Micro spends an evaluation record on every tensor of the list, read or not)."""
    tensor = sg.tensors[index] if in_place else copy.deepcopy(sg.tensors[index])
    tensor.shape = np.asarray(tensor.shape, np.int32).copy()
    tensor.shape[1] = rows
    if tensor.shapeSignature is not None and len(tensor.shapeSignature):
        tensor.shapeSignature = np.asarray(tensor.shapeSignature, np.int32).copy()
        tensor.shapeSignature[1] = rows
    tensor.name = (tensor.name or b"") + f"/band{band}".encode()
    if in_place:
        return index
    tensor.buffer = 0  # the schema's empty buffer: an activation
    sg.tensors.append(tensor)
    return len(sg.tensors) - 1


def _int32_constants(model, sg):
    """A function giving the index of an int32 vector constant of given values: one already in
    ``sg`` (the crop's begin, the other bands'), or a new one. Constants are read-only: one
    tensor serves every reader, and each new one costs flash (a tensor record and a buffer)."""
    fb = schema()
    known: dict[bytes, int] = {}
    for index, tensor in enumerate(sg.tensors):
        data = model.buffers[tensor.buffer].data
        if tensor.type == fb.TensorType.INT32 and data is not None and len(tensor.shape) == 1:
            known.setdefault(np.asarray(data, np.uint8).tobytes(), index)

    def constant(values) -> int:
        raw = np.asarray(values, np.int32).tobytes()
        if raw not in known:
            buffer = fb.BufferT()
            buffer.data = np.frombuffer(raw, np.uint8)
            model.buffers.append(buffer)
            tensor = fb.TensorT()
            tensor.shape = np.asarray([len(values)], np.int32)
            tensor.type = fb.TensorType.INT32
            tensor.buffer = len(model.buffers) - 1
            tensor.name = ("band_" + "_".join(str(v) for v in values)).encode()
            sg.tensors.append(tensor)
            known[raw] = len(sg.tensors) - 1
        return known[raw]
    return constant


def _split(rows: int, bands: int) -> list[tuple[int, int]]:
    """``rows`` output rows as ``bands`` consecutive (start, stop) ranges, the larger first."""
    edges = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(rows), bands)])
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def band_rows(tfl: bytes, band_bytes: int = BAND_BYTES) -> bytes:
    """``tfl`` with each conv + pool pair whose conv writes more than ``band_bytes`` elements
    computed in ceil(conv output / ``band_bytes``) bands of the pool's rows, each band's conv
    output about ``band_bytes`` (module docstring); ``tfl`` itself when there is none. The same function, bit for bit, on
    any batch size."""
    fb = schema()
    model, sg, ops = operators(tfl)
    readers: dict[int, list[int]] = {}
    for k, (_, op) in enumerate(ops):
        for i in {int(i) for i in op.inputs if i >= 0}:
            readers.setdefault(i, []).append(k)
    pairs = _bandable(ops, sg, readers, {int(o) for o in sg.outputs}, band_bytes)
    if not pairs:
        return tfl
    slice_code = opcode_index(model, fb.BuiltinOperator.STRIDED_SLICE, 1)
    concat_code = opcode_index(model, fb.BuiltinOperator.CONCATENATION, 2)
    constant = _int32_constants(model, sg)
    replaced: dict[int, list] = {}
    dropped = set()
    padded: dict[int, int] = {}
    for k, p in pairs:
        conv, pool = ops[k][1], ops[p][1]
        pad = _pad_explicitly(model, sg, conv, padded)
        conv_rows, _ = _window("CONV_2D", conv, sg)
        pool_rows, pool_stride = _window(ops[p][0], pool, sg)
        x, y, z = int(conv.inputs[0]), int(conv.outputs[0]), int(pool.outputs[0])
        new_ops, parts = [], []
        count = -(-_bytes(sg.tensors[y]) // band_bytes)  # ceil
        splits = _split(int(sg.tensors[z].shape[1]), count)
        for n, (a, b) in enumerate(splits):
            y0, y1 = a * pool_stride, (b - 1) * pool_stride + pool_rows
            x0, x1 = y0, y1 - 1 + conv_rows
            xb = _tensor_like(sg, x, x1 - x0, n)
            yb = _tensor_like(sg, y, y1 - y0, n, in_place=n == len(splits) - 1)
            zb = _tensor_like(sg, z, b - a, n)
            cut = fb.OperatorT()
            cut.opcodeIndex = slice_code
            cut.inputs = np.asarray([x, constant([0, x0, 0, 0]), constant([0, x1, 0, 0]),
                                     constant([1, 1, 1, 1])], np.int32)
            cut.outputs = np.asarray([xb], np.int32)
            cut.builtinOptionsType = fb.BuiltinOptions.StridedSliceOptions
            cut.builtinOptions = fb.StridedSliceOptionsT()
            cut.builtinOptions.beginMask = cut.builtinOptions.endMask = _WHOLE_AXES
            band_conv, band_pool = copy.deepcopy(conv), copy.deepcopy(pool)
            band_conv.inputs = np.asarray([xb] + [int(i) for i in conv.inputs[1:]], np.int32)
            band_conv.outputs = np.asarray([yb], np.int32)
            band_pool.inputs = np.asarray([yb] + [int(i) for i in pool.inputs[1:]], np.int32)
            band_pool.outputs = np.asarray([zb], np.int32)
            new_ops += [cut, band_conv, band_pool]
            parts.append(zb)
        join = fb.OperatorT()
        join.opcodeIndex = concat_code
        join.inputs = np.asarray(parts, np.int32)
        join.outputs = np.asarray([z], np.int32)
        join.builtinOptionsType = fb.BuiltinOptions.ConcatenationOptions
        join.builtinOptions = fb.ConcatenationOptionsT()
        join.builtinOptions.axis = 1
        replaced[k] = ([] if pad is None else [pad]) + new_ops + [join]
        dropped.add(p)
    operators_out = []
    for k, (_, op) in enumerate(ops):
        if k in dropped:
            continue
        operators_out += replaced.get(k, [op])
    sg.operators = operators_out
    return pack(model)

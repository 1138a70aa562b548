"""Quantization-aware fine-tuning by distillation of an integer-only int8 .tflite.

The quantized file itself is the model: its operators are read back (weights, biases, every
tensor's scale and zero point) and executed in TensorFlow with the integer arithmetic simulated
("fake quantization": each operator's output rounded onto its int8 grid, weights onto their
per-channel grid, straight-through gradients). The kernels and biases of the convolutions and
fully-connected layers are then trained so that the simulated file reproduces the float
reference's outputs (age in years, P(male)) on unlabeled inputs, and written back into the
file. Activation scales stay those of the calibration (ops that TFLite ties to one scale,
concatenations, pools and reshapes, stay tied), so the trained file is the same graph with new
integers. The function approximated is the reference, never labels.
"""

from __future__ import annotations

import time

import numpy as np

from ssrconv.errors import Int8RecipeError
from ssrconv.formats import tflite_flatbuffer as tfb
from ssrconv.formats.tflite_flatbuffer import operators, pack, set_constant

TRAINED = ("CONV_2D", "FULLY_CONNECTED")  # whose kernel and bias are fine-tuned
SUPPORTED = TRAINED + ("DEPTHWISE_CONV_2D", "MAX_POOL_2D", "TANH", "RESHAPE",
                       "CONCATENATION", "MUL", "ADD", "STRIDED_SLICE", "RSQRT", "QUANTIZE",
                       "DEQUANTIZE")
# activation types simulated, with their integer range (int16: the widened head, tflite_int16_head)
_GRID = {9: (-128, 127), 7: (-32768, 32767)}
# An int16 tensor of the widened head has its int8 range (times the head's headroom) on a grid
# 256 times finer (tflite_int16_head): the bias unit of the fine-tuning stays about an int8 step
# (256 int16 steps), not one int16 step.
_INT16, _INT16_STEPS_PER_INT8 = 7, 256


class IntegerGraph:
    """The operators of an int8 .tflite as data: per operator its name, options, input and
    output tensor indices; constants dequantized; activations' (scale, zero point)."""

    def __init__(self, tfl: bytes):
        self.model, self.sg, ops = operators(tfl)
        self.ops = []
        for name, op in ops:
            if name not in SUPPORTED:
                raise Int8RecipeError(f"int8 fine-tuning: operator {name} is not simulated; "
                                      "export this model with --precision int8-mixed instead")
            self.ops.append((name, op))
        self.inputs = [int(i) for i in self.sg.inputs]
        self.outputs = [int(o) for o in self.sg.outputs]
        self.output_names = {}
        for signature in self.model.signatureDefs or []:
            for tensor_map in signature.outputs or []:
                self.output_names[int(tensor_map.tensorIndex)] = tensor_map.name.decode()

    def tensor(self, index):
        return self.sg.tensors[index]

    def constant(self, index):
        """A constant tensor as float (dequantized when quantized), or None for activations."""
        t = self.tensor(index)
        data = tfb.constant(self.model, t)
        if data is None:
            return None
        q = tfb.quantization(t)
        if q is None or t.type == 0:
            return data.astype(np.float64)
        scale, zero = q
        axis = t.quantization.quantizedDimension if len(scale) > 1 else None
        shape = [1] * data.ndim
        if axis is not None:
            shape[axis] = -1
        return (data.astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape)

    def trainable(self):
        """{op index: (kernel tensor, bias tensor or None)} of the fine-tuned operators."""
        found = {}
        for k, (name, op) in enumerate(self.ops):
            if name in TRAINED:
                bias = int(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
                found[k] = (int(op.inputs[1]), bias)
        return found


# ------------------------------------------------------------------------------ the simulation
def _fake_quant(tf, x, scale, zero, grid=(-128, 127)):
    """``x`` rounded onto the integer grid (int8 unless ``grid`` says) of (scale, zero point),
    clipped to it; the gradient passes straight through inside the grid's range and is 0
    outside."""
    s, z = float(scale), float(zero)
    clipped = tf.clip_by_value(x, (grid[0] - z) * s, (grid[1] - z) * s)
    return clipped + tf.stop_gradient(tf.round(clipped / s) * s - clipped)


def _channel_grid(tf, w, axis, fallback):
    """Per-channel symmetric int8 rounding of ``w`` along ``axis`` (scale max|w| / 127, as the
    TFLite quantizer stores weights; ``fallback``, the file's scale, for an all-zero channel),
    straight-through."""
    reduce = [a for a in range(len(w.shape)) if a != axis]
    top = tf.reduce_max(tf.abs(w), axis=reduce, keepdims=True)
    scale = tf.where(top > 0, top / 127.0, fallback)
    return w + tf.stop_gradient(tf.round(w / scale) * scale - w), scale


_ACT = {0: None, 1: "relu", 3: "relu6"}


class Simulation:
    """The int8 file ``graph`` executed in float TensorFlow with every rounding of the integer
    kernels simulated; ``variables`` are the fine-tuned kernels and biases, in units of their
    initial quantization step (so one learning rate suits every layer)."""

    def __init__(self, graph: IntegerGraph):
        from ssrconv._imports import tensorflow

        tf = self.tf = tensorflow("int8 fine-tuning")
        self.graph = graph
        self.variables, self.units, self.fixed = {}, {}, {}
        for k, (kernel, bias) in graph.trainable().items():
            w = graph.constant(kernel)
            axis = graph.tensor(kernel).quantization.quantizedDimension
            scale = tfb.quantization(graph.tensor(kernel))[0]
            shape = [1] * w.ndim
            shape[axis] = -1
            unit_w = scale.reshape(shape) if len(scale) > 1 else scale.reshape([1] * w.ndim)
            unit_w = np.maximum(unit_w, 1e-12)
            self.units[k] = [unit_w.astype(np.float32)]
            init = [w / unit_w]
            if bias is not None:
                b = graph.constant(bias)
                # in units of the output's int8 step (an int16 output's step x 256): the
                # integer bias step is far finer
                out = graph.tensor(int(graph.ops[k][1].outputs[0]))
                out_scale = tfb.quantization(out)[0][0] * (_INT16_STEPS_PER_INT8 if out.type == _INT16 else 1)
                unit_b = np.full(b.shape, out_scale)
                self.units[k].append(unit_b.astype(np.float32))
                init.append(b / unit_b)
            self.variables[k] = [tf.Variable(v.astype(np.float32), name=f"op{k}_{i}")
                                 for i, v in enumerate(init)]

    def trainable_variables(self):
        return [v for k in sorted(self.variables) for v in self.variables[k]]

    def weights(self, k):
        """The float kernel (and bias) of trained op ``k`` now."""
        return [v * u for v, u in zip(self.variables[k], self.units[k])]

    def _const(self, index):
        if index not in self.fixed:
            c = self.graph.constant(index)
            integer = self.graph.tensor(index).type in (2, 4) and tfb.quantization(self.graph.tensor(index)) is None
            self.fixed[index] = None if c is None else c.astype(np.int32 if integer else np.float32)
        c = self.fixed[index]
        return None if c is None else self.tf.constant(c)

    def _q(self, x, index):
        params = tfb.quantization(self.graph.tensor(index))
        grid = _GRID.get(self.graph.tensor(index).type)
        if params is None or grid is None:
            return x
        return _fake_quant(self.tf, x, params[0][0], params[1][0], grid)

    def __call__(self, x, quantized: bool = True):
        """{output name: (N,) tensor} for the input batch ``x`` (N, 64, 64, 3)."""
        tf = self.tf
        values = {self.graph.inputs[0]: x}
        q = self._q if quantized else (lambda v, i: v)
        for k, (name, op) in enumerate(self.graph.ops):
            opt = op.builtinOptions
            ins = [values[i] if i in values else self._const(i) if i >= 0 else None
                   for i in (int(j) for j in op.inputs)]
            out = int(op.outputs[0])
            act = _ACT.get(getattr(opt, "fusedActivationFunction", 0) or 0)
            if name in ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D"):
                if k in self.variables:
                    w, *b = self.weights(k)
                else:
                    w, b = ins[1], ([ins[2]] if len(ins) > 2 and ins[2] is not None else [])
                axis = 3 if name == "DEPTHWISE_CONV_2D" else 0
                if quantized:
                    w, w_scale = _channel_grid(tf, w, axis, self._file_scale(op, w))
                    if b:
                        in_scale = float(tfb.quantization(self.graph.tensor(int(op.inputs[0])))[0][0])
                        unit = tf.reshape(w_scale, [-1]) * in_scale
                        b = [b[0] + tf.stop_gradient(tf.round(b[0] / unit) * unit - b[0])]
                y = self._linear(name, opt, ins[0], w)
                if b:
                    y = y + b[0]
            elif name == "MAX_POOL_2D":
                y = tf.nn.max_pool2d(ins[0], (opt.filterHeight, opt.filterWidth),
                                     (opt.strideH, opt.strideW), _padding(opt))
            elif name == "TANH":
                y = tf.tanh(ins[0])
            elif name == "RSQRT":
                y = tf.math.rsqrt(tf.maximum(ins[0], 1e-3))
            elif name == "RESHAPE":
                y = tf.reshape(ins[0], [-1, *[int(d) for d in self.graph.tensor(out).shape[1:]]])
            elif name == "CONCATENATION":
                y = tf.concat(ins, axis=opt.axis)
            elif name == "MUL":
                y = ins[0] * ins[1]
            elif name == "ADD":
                y = ins[0] + ins[1]
            elif name == "STRIDED_SLICE":
                y = tf.strided_slice(ins[0], ins[1], ins[2], ins[3], begin_mask=opt.beginMask,
                                     end_mask=opt.endMask, shrink_axis_mask=opt.shrinkAxisMask)
            else:  # QUANTIZE, DEQUANTIZE
                y = ins[0]
            if act == "relu":
                y = tf.nn.relu(y)
            elif act == "relu6":
                y = tf.nn.relu6(y)
            y = tf.ensure_shape(y, [None, *[int(d) for d in self.graph.tensor(out).shape[1:]]])
            values[out] = y if name == "DEQUANTIZE" else q(y, out)
        return {self.graph.output_names.get(o, str(o)): tf.reshape(values[o], [-1])
                for o in self.graph.outputs}

    def _file_scale(self, op, w):
        """The kernel's per-channel scales in the file, shaped to broadcast against ``w``."""
        kernel = self.graph.tensor(int(op.inputs[1]))
        scale = tfb.quantization(kernel)[0].astype(np.float32)
        shape = [1] * len(w.shape)
        shape[kernel.quantization.quantizedDimension] = -1
        return np.broadcast_to(scale.reshape(shape) if len(scale) > 1 else scale.reshape([1] * len(w.shape)),
                               [1 if a != kernel.quantization.quantizedDimension else int(w.shape[a])
                                for a in range(len(w.shape))]).astype(np.float32)

    def _linear(self, name, opt, x, w):
        tf = self.tf
        if name == "FULLY_CONNECTED":  # TFLite kernel (out, in)
            return tf.matmul(tf.reshape(x, [-1, w.shape[1]]), w, transpose_b=True)
        if name == "DEPTHWISE_CONV_2D":  # (1, kh, kw, C * multiplier)
            channels = int(x.shape[-1])
            filt = tf.reshape(w, [w.shape[1], w.shape[2], channels, -1])
            return tf.nn.depthwise_conv2d(x, filt, [1, opt.strideH, opt.strideW, 1], _padding(opt))
        filt = tf.transpose(w, [1, 2, 3, 0])  # (out, kh, kw, in/groups) -> (kh, kw, in/g, out)
        groups = int(x.shape[-1]) // int(w.shape[3])
        strides = [1, opt.strideH, opt.strideW, 1]
        if groups == 1:
            return tf.nn.conv2d(x, filt, strides, _padding(opt))
        xs = tf.split(x, groups, axis=-1)
        fs = tf.split(filt, groups, axis=-1)
        return tf.concat([tf.nn.conv2d(a, f, strides, _padding(opt)) for a, f in zip(xs, fs)], -1)


def _padding(opt):
    return "SAME" if opt.padding == 0 else "VALID"


# ------------------------------------------------------------------------------ the training
def augment(inputs: np.ndarray, copies: int, seed: int) -> np.ndarray:
    """``inputs`` and ``copies`` seeded variations of each: mirrored (a mirrored face is a face),
    shifted by up to 2 pixels (edge rows repeated), contrast x0.85-1.15 and brightness +/-12
    grey levels, clipped to 0..255. Unlabeled: the reference labels them."""
    rng = np.random.default_rng(seed)
    out = [inputs]
    n, h, w, _ = inputs.shape
    for _ in range(copies):
        batch = inputs.copy()
        flip = rng.random(n) < 0.5
        batch[flip] = batch[flip, :, ::-1]
        shifts = rng.integers(-2, 3, size=(n, 2))
        padded = np.pad(batch, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
        batch = np.stack([padded[i, 2 + dy:2 + dy + h, 2 + dx:2 + dx + w]
                          for i, (dy, dx) in enumerate(shifts)])
        gain = rng.uniform(0.85, 1.15, size=(n, 1, 1, 1))
        offset = rng.uniform(-12, 12, size=(n, 1, 1, 1))
        mean = batch.mean(axis=(1, 2, 3), keepdims=True)
        out.append(np.clip((batch - mean) * gain + mean + offset, 0, 255))
    return np.concatenate(out).astype(np.float32)


GENDER_WEIGHT = 100.0  # P(male) difference 0.1 costs as much as 1 year of age


def fine_tune(tfl: bytes, inputs: np.ndarray, targets: dict[str, np.ndarray], steps: int = 300,
              batch_size: int = 32, lr: float = 0.02, seed: int = 0,
              progress=None) -> tuple[bytes, dict]:
    """Fine-tune the kernels and biases of the int8 file ``tfl`` so its simulated outputs match
    ``targets`` (the reference's outputs on ``inputs``: ``age`` in years, ``p_male``); Adam,
    ``lr`` in units of each weight's quantization step, seeded batches. Returns the file with
    the new integers and what was done (loss before and after, seconds)."""
    graph = IntegerGraph(tfl)
    sim = Simulation(graph)
    tf = sim.tf
    say = progress or (lambda message: None)
    names = [graph.output_names[o] for o in graph.outputs]
    want = {n: tf.constant(np.asarray(targets[n], np.float32)) for n in names}
    x_all = tf.constant(np.asarray(inputs, np.float32))
    weights = {n: (GENDER_WEIGHT if n == "p_male" else 1.0) for n in names}
    variables = sim.trainable_variables()
    import keras

    # cosine decay to 0: late steps refine instead of jumping around the rounding grid
    opt = keras.optimizers.Adam(learning_rate=keras.optimizers.schedules.CosineDecay(lr, steps))
    opt.build(variables)

    def loss_of(out, idx):
        return tf.add_n([weights[n] * tf.reduce_mean(tf.square(out[n] - tf.gather(want[n], idx)))
                         for n in names])

    @tf.function(reduce_retracing=True)
    def step(idx):
        with tf.GradientTape() as tape:
            loss = loss_of(sim(tf.gather(x_all, idx)), idx)
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss

    @tf.function(reduce_retracing=True)
    def evaluate(idx):
        return loss_of(sim(tf.gather(x_all, idx)), idx)

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = len(inputs)
    probe = np.arange(0, n, max(1, n // 256))[:256]
    before = float(evaluate(probe))
    order = np.concatenate([rng.permutation(n) for _ in range(-(-steps * batch_size // n))])
    for s in range(steps):
        loss = float(step(order[s * batch_size:(s + 1) * batch_size]))
        if s % 50 == 0:
            say(f"      fine-tuning step {s}/{steps}: loss {loss:.4f} "
                f"({time.perf_counter() - started:.0f} s)")
    after = float(evaluate(probe))
    data = write_back(graph, sim)
    return data, {"steps": steps, "batch_size": batch_size, "learning_rate": lr, "seed": seed,
                  "inputs": n, "loss_before": round(before, 5), "loss_after": round(after, 5),
                  "seconds": round(time.perf_counter() - started, 1)}


def write_back(graph: IntegerGraph, sim: Simulation) -> bytes:
    """The file with each fine-tuned kernel requantized (per-channel symmetric, scale
    max|w| / 127) and its bias requantized to int32 (int64 where the file has int64: an int16
    input) at input scale x weight scale, each in a buffer of its own."""
    from ssrconv.formats.tflite_flatbuffer import schema

    fb = schema()
    model, sg = graph.model, graph.sg
    for k, (kernel_index, bias_index) in graph.trainable().items():
        w, *b = [np.asarray(v.numpy(), np.float64) for v in sim.weights(k)]
        kernel = sg.tensors[kernel_index]
        axis = kernel.quantization.quantizedDimension
        reduce = tuple(a for a in range(w.ndim) if a != axis)
        top = np.abs(w).max(axis=reduce)
        scale = np.where(top > 0, top / 127.0, tfb.quantization(kernel)[0])  # all-zero: the file's
        if bias_index is not None:  # the int32 bias must fit: a nearly dead channel's scale
            in_scale = float(tfb.quantization(sg.tensors[int(graph.ops[k][1].inputs[0])])[0][0])
            scale = np.maximum(scale, np.abs(b[0]) / (in_scale * 2.0 ** 30))
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        set_constant(model, kernel, q, scale, np.zeros(len(scale), np.int64))
        if bias_index is not None:
            op = graph.ops[k][1]
            in_scale = float(tfb.quantization(sg.tensors[int(op.inputs[0])])[0][0])
            unit = scale * in_scale
            wide = sg.tensors[bias_index].type == fb.TensorType.INT64  # 16x8: int64 biases
            qb = np.round(b[0] / unit).astype(np.int64 if wide else np.int32)
            set_constant(model, sg.tensors[bias_index], qb, unit, np.zeros(len(unit), np.int64))
    return pack(model)

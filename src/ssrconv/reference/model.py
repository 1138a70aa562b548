"""SSR-Net rebuilt in Keras 3 code, layer for layer as in the original Keras 2 graph.

The original (Yang et al., IJCAI 2018, github.com/shamangary/SSR-Net) is two streams of four
valid 3x3 conv blocks (tanh + max-pool, relu + average-pool), three stage heads fed from
1x1-conv summaries of both streams, and a "soft stagewise regression" merge. Layer names
are the original ones (``conv2d_5``, ``pred_age_stage1``, ...), so weights copy over by name,
and the graph matches ``ssrnet_age_original_keras2.json``. The merge, a Lambda in the
original, is :class:`SSRMerge` here: a registered, serializable layer with no code payload.

Other members of the SSR-Net family (:mod:`ssrconv.reference.family`) are built from their
:class:`~ssrconv.reference.family.ArchSpec` (padding, BatchNorm epsilon, stage-1 ReLU, stages and
lambdas) with their preprocessing as a first :class:`InputAffine` layer; the original member
builds exactly the graph above (no input layer).

Importing this module imports Keras (and so TensorFlow): keep it out of ``ssrconv --help``.
"""

from __future__ import annotations

from ssrconv._imports import tensorflow

tensorflow("the Keras model")  # quiet import of TF before Keras pulls it in

import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

from ssrconv.reference.family import ORIGINAL, Member  # noqa: E402

INPUT_SIZE = 64
STAGE_NUM = ORIGINAL.arch.stage_num
LAMBDA_LOCAL = ORIGINAL.arch.lambda_local
LAMBDA_D = ORIGINAL.arch.lambda_d
BN_EPSILON = ORIGINAL.arch.bn_epsilon
TASKS = ("age", "gender")
V_BY_TASK = {"age": 101.0, "gender": 1.0}


@keras.saving.register_keras_serializable(package="ssrconv")
class SSRMerge(layers.Layer):
    """Soft stagewise regression: y = V * sum_k sum_i p_k[i] (i + l_k[i]) / prod_j<=k s_j(1 + d_j).

    Inputs, in the original order: ``[p1, p2, p3, d1, d2, d3, l1, l2, l3]``: stage
    probabilities (N, s_k), stage width shifts delta_k (N, 1), local index shifts (N, s_k).
    """

    def __init__(self, stage_num=STAGE_NUM, lambda_local=LAMBDA_LOCAL, lambda_d=LAMBDA_D,
                 V=101.0, **kwargs):
        super().__init__(**kwargs)
        self.stage_num = tuple(int(s) for s in stage_num)
        self.lambda_local = float(lambda_local)
        self.lambda_d = float(lambda_d)
        self.V = float(V)

    def call(self, inputs):
        n = len(self.stage_num)
        probs, deltas, local = inputs[:n], inputs[n:2 * n], inputs[2 * n:3 * n]
        total = None
        denominator = None
        for k, s in enumerate(self.stage_num):
            index = ops.cast(ops.arange(s), probs[k].dtype)
            stage_sum = ops.sum((index + self.lambda_local * local[k]) * probs[k], axis=-1,
                                keepdims=True)
            width = s * (1.0 + self.lambda_d * deltas[k])
            denominator = width if denominator is None else denominator * width
            term = stage_sum / denominator
            total = term if total is None else total + term
        return total * self.V

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)

    def get_config(self):
        config = super().get_config()
        config.update(stage_num=list(self.stage_num), lambda_local=self.lambda_local,
                      lambda_d=self.lambda_d, V=self.V)
        return config


@keras.saving.register_keras_serializable(package="ssrconv")
class InputAffine(layers.Layer):
    """A member's preprocessing inside the graph: ``face_bgr @ kernel + bias`` per pixel.

    A fixed 1x1 convolution (channel permutation times scale, bias -offset * scale: see
    :meth:`ssrconv.reference.family.Preprocess.affine`) held in the config, not as weights, so
    weight files and parameter counts are the member's own. Converters see one Conv2D.
    """

    def __init__(self, kernel, bias, **kwargs):
        super().__init__(**kwargs)
        self.kernel_values = [[float(v) for v in row] for row in kernel]
        self.bias_values = [float(v) for v in bias]

    def call(self, x):
        kernel = ops.reshape(ops.convert_to_tensor(self.kernel_values, x.dtype), (1, 1, 3, 3))
        bias = ops.convert_to_tensor(self.bias_values, x.dtype)
        return ops.conv(x, kernel, padding="valid") + bias

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(kernel=self.kernel_values, bias=self.bias_values)
        return config


def head_names(task: str) -> dict[str, str]:
    """Names of the task-specific layers: stage predictions and the merged output."""
    if task == "age":
        return {"stages": "pred_age_stage{}", "output": "pred_a"}
    if task == "gender":
        return {"stages": "pred_gender_stage{}", "output": "pred_gender"}
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def stage_layer_names(task: str, prefix: str = "") -> list[str]:
    """The intermediate layers parity compares stage by stage (probabilities, deltas, local deltas)."""
    stages = head_names(task)["stages"]
    names = [stages.format(k) for k in (1, 2, 3)]
    names += [f"delta_s{k}" for k in (1, 2, 3)]
    names += [f"local_delta_stage{k}" for k in (1, 2, 3)]
    return [prefix + n for n in names]


def _ssrnet_head(x, task: str, prefix: str, member: Member = ORIGINAL):
    """Build one SSR-Net of ``member``'s architecture on input tensor ``x`` (face_bgr); every
    layer name gets ``prefix``."""
    arch = member.arch

    def name(n):
        return prefix + n

    if not member.preprocess.identity:
        kernel, bias = member.preprocess.affine()
        x = InputAffine(kernel.tolist(), bias.tolist(), name=name("input_affine"))(x)

    def conv_block(t, conv, bn, act, filters, activation):
        t = layers.Conv2D(filters, 3, padding=arch.padding, name=name(conv))(t)
        t = layers.BatchNormalization(axis=-1, epsilon=arch.bn_epsilon, name=name(bn))(t)
        return layers.Activation(activation, name=name(act))(t)

    # Stream 1: relu + average pooling, 32 filters (conv2d_1..4 in the original).
    x1 = conv_block(x, "conv2d_1", "batch_normalization_1", "activation_1", 32, "relu")
    x_layer1 = layers.AveragePooling2D(2, 2, name=name("average_pooling2d_1"))(x1)
    x1 = conv_block(x_layer1, "conv2d_2", "batch_normalization_2", "activation_2", 32, "relu")
    x_layer2 = layers.AveragePooling2D(2, 2, name=name("average_pooling2d_2"))(x1)
    x1 = conv_block(x_layer2, "conv2d_3", "batch_normalization_3", "activation_3", 32, "relu")
    x_layer3 = layers.AveragePooling2D(2, 2, name=name("average_pooling2d_3"))(x1)
    x1 = conv_block(x_layer3, "conv2d_4", "batch_normalization_4", "activation_4", 32, "relu")

    # Stream 2: tanh + max pooling, 16 filters (conv2d_5..8).
    s = conv_block(x, "conv2d_5", "batch_normalization_5", "activation_5", 16, "tanh")
    s_layer1 = layers.MaxPooling2D(2, 2, name=name("max_pooling2d_1"))(s)
    s = conv_block(s_layer1, "conv2d_6", "batch_normalization_6", "activation_6", 16, "tanh")
    s_layer2 = layers.MaxPooling2D(2, 2, name=name("max_pooling2d_2"))(s)
    s = conv_block(s_layer2, "conv2d_7", "batch_normalization_7", "activation_7", 16, "tanh")
    s_layer3 = layers.MaxPooling2D(2, 2, name=name("max_pooling2d_3"))(s)
    s = conv_block(s_layer3, "conv2d_8", "batch_normalization_8", "activation_8", 16, "tanh")

    def summary(t, conv, pool=None, pool_cls=None, relu=True):
        t = layers.Conv2D(10, 1, activation="relu" if relu else None, name=name(conv))(t)
        if pool is not None:
            t = pool_cls(pool[1], pool[1], name=name(pool[0]))(t)
        return t

    def flat_drop(t, k):
        f = layers.Flatten(name=name(f"flatten_{k}"))(t)
        return f, layers.Dropout(0.2, name=name(f"dropout_{k}"))(f)

    stages = head_names(task)["stages"]
    # Stage 1 reads the deepest features, stage 3 the shallowest (as in the original).
    s_1 = summary(s, "conv2d_9", relu=arch.stage1_summary_relu)
    x_1 = summary(x1, "conv2d_10", relu=arch.stage1_summary_relu)
    s_2 = summary(s_layer2, "conv2d_11", ("max_pooling2d_4", 4), layers.MaxPooling2D)
    x_2 = summary(x_layer2, "conv2d_12", ("average_pooling2d_4", 4), layers.AveragePooling2D)
    s_3 = summary(s_layer1, "conv2d_13", ("max_pooling2d_5", 8), layers.MaxPooling2D)
    x_3 = summary(x_layer1, "conv2d_14", ("average_pooling2d_5", 8), layers.AveragePooling2D)

    probs, deltas, locals_ = [], [], []
    plan = [  # (flatten ids s/x, dense ids s/x, fusion dense, product ids, stage k)
        ((1, 2), ("dense_1", "dense_2"), "dense_3", ("multiply_1", "multiply_2"), 1, s_1, x_1),
        ((3, 4), ("dense_4", "dense_5"), "dense_6", ("multiply_3", "multiply_4"), 2, s_2, x_2),
        ((5, 6), ("dense_7", "dense_8"), "dense_9", ("multiply_5", "multiply_6"), 3, s_3, x_3),
    ]
    for (fs, fx), (ds, dx), fuse, (mul_delta, mul_feat), k, st, xt in plan:
        flat_s, drop_s = flat_drop(st, fs)
        flat_x, drop_x = flat_drop(xt, fx)
        feat_s = layers.Dense(3, activation="relu", name=name(ds))(drop_s)
        feat_x = layers.Dense(3, activation="relu", name=name(dx))(drop_x)
        feat = layers.Multiply(name=name(mul_feat))([feat_s, feat_x])
        feat = layers.Dense(2 * 3, activation="relu", name=name(fuse))(feat)
        delta_in = layers.Multiply(name=name(mul_delta))([flat_s, flat_x])
        probs.append(layers.Dense(3, activation="relu", name=name(stages.format(k)))(feat))
        deltas.append(layers.Dense(1, activation="tanh", name=name(f"delta_s{k}"))(delta_in))
        locals_.append(layers.Dense(3, activation="tanh", name=name(f"local_delta_stage{k}"))(feat))

    merge = SSRMerge(arch.stage_num, arch.lambda_local, arch.lambda_d, V=V_BY_TASK[task],
                     name=name(head_names(task)["output"]))
    return merge(probs + deltas + locals_)


def build_ssrnet(task: str = "age", member: Member = ORIGINAL) -> keras.Model:
    """An untrained SSR-Net of ``member`` for ``task`` ("age": years, V=101; "gender":
    P(male), V=1)."""
    head_names(task)  # validates task
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="face_bgr")
    output = _ssrnet_head(inputs, task, prefix="", member=member)
    return keras.Model(inputs, output, name=f"ssrnet_{task}")


def build_age_gender(age_member: Member = ORIGINAL, gender_member: Member = ORIGINAL
                     ) -> keras.Model:
    """Both SSR-Nets on one shared input: outputs ``age`` (years) and ``p_male``.

    Layers are prefixed ``age_`` and ``gender_`` so each head keeps its original names; each
    head is built from its own member's spec.
    """
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="face_bgr")
    age = _ssrnet_head(inputs, "age", prefix="age_", member=age_member)
    gender = _ssrnet_head(inputs, "gender", prefix="gender_", member=gender_member)
    age = layers.Identity(name="age")(age)
    gender = layers.Identity(name="p_male")(gender)
    return keras.Model(inputs, [age, gender], name="ssrnet_age_gender")


def stage_model(model: keras.Model, task: str, prefix: str = "") -> keras.Model:
    """A model with the same input whose outputs are the final output then every stage layer."""
    final = model.get_layer(prefix + head_names(task)["output"]).output
    stages = [model.get_layer(n).output for n in stage_layer_names(task, prefix)]
    return keras.Model(model.inputs, [final, *stages], name=f"{model.name}_stages")


def count_params(model: keras.Model) -> int:
    """Stored parameters (weights + BN statistics), as in the original .h5."""
    return int(sum(int(ops.size(w)) for w in model.weights))


def count_macs(model: keras.Model) -> int:
    """Multiply-adds of one forward pass for one face (conv and dense layers)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            total += h * w * c_out * kh * kw * c_in
        elif isinstance(layer, layers.Dense):
            c_in, c_out = layer.kernel.shape
            total += c_in * c_out
    return int(total)


OUTPUT_NAMES = {"age": ("age",), "gender": ("p_male",), "age-gender": ("age", "p_male")}


def output_domains() -> dict[str, float]:
    """The largest value each output of an SSR-Net can mean, by output name: the age in
    years up to the merge's V (101: SSR-Net's age scale), P(male) up to 1 (both from 0)."""
    return {OUTPUT_NAMES[task][0]: v for task, v in V_BY_TASK.items()}


def outputs_as_dict(model: keras.Model) -> keras.Model:
    """``model`` with its outputs as a dict (a converter's signature then names them), under
    ``model``'s own name: a Keras model built without one is named from a process-wide counter
    ("functional_7"), and that name is in the tensor names a .tflite keeps, so the bytes of a
    file depended on how many models the process had built before (docs/CONVERTERS.md,
    "Byte-reproducible exports")."""
    return keras.Model(model.inputs, dict(zip(model.output_names, model.outputs)), name=model.name)


def with_named_outputs(model: keras.Model, task: str) -> keras.Model:
    """The same graph with outputs named as exported artifacts name them: ``age`` (years)
    and/or ``p_male``. The age-gender model already has those names."""
    if task == "age-gender":
        return model
    (name,) = OUTPUT_NAMES[task]
    output = layers.Identity(name=name)(model.outputs[0])
    return keras.Model(model.inputs, output, name=f"{model.name}_export")


def graph_digest(model: keras.Model, digest) -> None:
    """Feed ``digest`` (a hashlib object) what ``model`` computes: each layer's name, class and
    weights (float32), in order. The content half of the caches' keys (the integer-only int8
    file, the distilled calibration inputs): the same graph and weights, the same bytes."""
    import numpy as np

    for layer in model.layers:
        digest.update(f"{layer.name}:{type(layer).__name__}".encode())
        for w in layer.get_weights():
            digest.update(np.ascontiguousarray(w, np.float32).tobytes())

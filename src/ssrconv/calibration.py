"""The one calibration iterator that feeds every quantizer (TFLite's representative_dataset,
onnxruntime's CalibrationDataReader): real face images prepared by the preprocessing contract,
or, with no face directory, inputs distilled from the model's own BatchNorm statistics (ZeroQ)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA_FREE_KIND = "data-free (ZeroQ: BatchNorm statistics)"
REAL_KIND = "real faces"


@dataclass(frozen=True)
class CalibrationSet:
    """Model inputs used to calibrate int8 ranges, with where they came from."""

    inputs: np.ndarray  # N x 64 x 64 x 3 float32 BGR 0..255
    source: str
    kind: str = REAL_KIND
    details: dict = field(default_factory=dict)  # how the inputs were made (data-free)

    @property
    def data_free(self) -> bool:
        """Whether the inputs were distilled from the model (no real faces)."""
        return self.kind == DATA_FREE_KIND

    @classmethod
    def from_dir(cls, directory: str | os.PathLike, limit: int = 300, kind: str = "auto",
                 crop_rule: str = "margin") -> "CalibrationSet":
        """Faces of ``directory`` (aligned chips and/or photos, as :func:`load_faces` reads
        them), at most ``limit`` of them, spread evenly over the name-sorted list (the one rule:
        :func:`ssrconv.reference.preprocess.spread_pick`, which says why), cut by the model's
        ``crop_rule`` (its contract's: the faces it will be fed, so the ranges it is quantized
        on; docs/PORTS.md, "int8").
        """
        from ssrconv.reference.preprocess import load_faces, spread_pick

        faces = load_faces(directory, limit, kind=kind, crop_rule=crop_rule)
        keep = spread_pick(list(range(len(faces))), limit)  # photos give several faces per file
        return cls(inputs=faces.inputs[keep], source=str(Path(directory)),
                   details={"files": faces.origin["files"], "chips": faces.origin["chips"],
                            "photos": faces.origin["photos"], "faces_kind": kind,
                            "crop_rule": crop_rule})

    @classmethod
    def distilled(cls, model, images: int = 64, seed: int = 0, iterations: int = 100,
                  batch_size: int = 32, progress: Callable[[str], None] | None = None,
                  cache: bool = False, **options) -> "CalibrationSet":
        """Data-free calibration inputs: ``images`` inputs distilled from ``model``'s BatchNorm
        statistics as in ZeroQ (Cai et al., CVPR 2020). See :func:`distill_inputs`. With
        ``cache`` (the exporter's), read from / written to the cache directory by content hash
        (:func:`distilled_cached`): a second data-free export of the same weights distils
        nothing."""
        settings = dict(images=images, seed=seed, iterations=iterations, batch_size=batch_size,
                        **options)
        if cache:
            inputs, details = distilled_cached(model, settings, progress)
        else:
            inputs, details = distill_inputs(model, progress=progress, **settings)
        return cls(inputs=inputs, source="distilled from the model's BatchNorm statistics",
                   kind=DATA_FREE_KIND, details=details)

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        """The inputs in order, ``batch_size`` at a time."""
        for start in range(0, len(self.inputs), batch_size):
            yield self.inputs[start:start + batch_size]

    def onnx_reader(self, input_name: str):
        """These inputs, one face per call, as an onnxruntime ``CalibrationDataReader`` feeding
        ``input_name`` (imported here: onnxruntime stays out of ``import ssrconv``)."""
        from onnxruntime.quantization import CalibrationDataReader

        batches = self.batches

        class _Reader(CalibrationDataReader):
            def __init__(self):
                self._it = batches(1)

            def get_next(self):
                batch = next(self._it, None)
                return None if batch is None else {input_name: batch}

            def rewind(self):
                self._it = batches(1)

        return _Reader()

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.source, "images": len(self), **self.details}


# ------------------------------------------------------------------------------ data-free (ZeroQ)
PIXEL_CENTER = 127.5  # the input domain is BGR 0..255: a Gaussian centred in it,
PIXEL_SCALE = 64.0    # ~95% inside [0, 255] before the first projection


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer of ``model`` (both heads of the age-gender model)."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found += batchnorm_layers(layer)
    return found


def distill_inputs(model, images: int = 64, seed: int = 0, iterations: int = 100,
                   batch_size: int = 32, lr: float = 0.1, normalized: bool = True,
                   clip: bool = True, progress: Callable[[str], None] | None = None,
                   output_weight: float = 0.0) -> tuple[np.ndarray, dict]:
    """Distil ``images`` model inputs whose BatchNorm input statistics match the stored ones.

    Each batch of ``batch_size`` starts from seeded Gaussian noise in the input domain
    (BGR, mean 127.5, std 64, clipped to 0..255) and is optimised with Adam (``lr`` in units of
    64 grey levels), the gradient taken through the Keras model, so that for every BatchNorm
    layer the per-channel mean and standard deviation over (N, H, W) of the layer's input match
    its ``moving_mean`` and ``sqrt(moving_variance + epsilon)``. The loss is ZeroQ's:
    sum over layers of ||mu_batch - mu_bn||_2 + ||sigma_batch - sigma_bn||_2, with each channel's
    difference divided by sigma_bn when ``normalized`` (the first convolutions see raw pixels,
    so their statistics are in the hundreds and would otherwise drown the deeper layers').
    After every step the inputs are projected back onto [0, 255] when ``clip``.

    With ``output_weight`` > 0 each input is also given a target for each of the model's named
    outputs (``age``, ``p_male``: :func:`ssrconv.reference.model.output_domains`), stratified
    over the output's domain [0, V] within each batch, and the loss adds ``output_weight`` x the
    mean |output - target| / V (``Target.distill_output_weight``). A BatchNorm
    statistic is per channel over every position, while the SSR head's Dense layers weigh each
    position of the last maps: matched on BatchNorm statistics alone, the MXNet pair's inputs
    (a model trained on 5-point aligned faces) spanned 10-55 y of output, reached a third to a
    tenth of the faces' ranges in its age head's stage-1 tensors, and its data-free 16x8 file
    failed (docs/INT8.md, "The MXNet pair's data-free 16x8 file"). With the targets its
    inputs span 3-101 y.

    Returns the inputs (float32, N x 64 x 64 x 3) and how they were made: iterations, batch
    size, seed, number of BatchNorm layers, the outputs given targets, loss before and after
    (mean over batches), seconds.
    """
    from ssrconv._imports import grappler_options, tensorflow

    tf = tensorflow("int8 calibration")
    import keras

    from ssrconv.reference.model import output_domains

    say = progress or (lambda message: None)
    bns = batchnorm_layers(model)
    if not bns:
        raise ValueError("the model has no BatchNormalization layers to distil inputs from")
    domains = output_domains() if output_weight else {}
    heads = [(k, domains[name]) for k, name in enumerate(model.output_names) if name in domains]
    outputs = model.outputs if isinstance(model.outputs, (list, tuple)) else [model.outputs]
    probe = keras.Model(model.inputs, [bn.input for bn in bns] + [outputs[k] for k, _ in heads])
    targets = []
    for bn in bns:
        mean = np.asarray(bn.moving_mean, np.float32)
        std = np.sqrt(np.asarray(bn.moving_variance, np.float32) + bn.epsilon)
        targets.append((tf.constant(mean), tf.constant(std), float(bn.epsilon)))

    def loss_of(x, wanted):
        total = 0.0
        probed = probe(x, training=False)
        for (_, domain), out, want in zip(heads, probed[len(bns):], wanted):
            total += output_weight * tf.reduce_mean(tf.abs(tf.reshape(out, [-1]) - want)) / domain
        for out, (mean, std, epsilon) in zip(probed[:len(bns)], targets):
            m, v = tf.nn.moments(out, axes=[0, 1, 2])
            s = tf.sqrt(v + epsilon)  # as the layer's own sigma
            if normalized:
                total += tf.norm((m - mean) / std) + tf.norm((s - std) / std)
            else:
                total += tf.norm(m - mean) + tf.norm(s - std)
        return total

    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    lo, hi = -PIXEL_CENTER / PIXEL_SCALE, (255.0 - PIXEL_CENTER) / PIXEL_SCALE
    rng = np.random.default_rng(seed)
    beta1, beta2, eps = 0.9, 0.999, 1e-8  # Adam, written out: its state is reset per batch

    @tf.function(reduce_retracing=True)
    def optimise(z0, wanted):
        z, m, v = z0, tf.zeros_like(z0), tf.zeros_like(z0)
        for t in tf.range(1, iterations + 1):
            with tf.GradientTape() as tape:
                tape.watch(z)
                loss = loss_of(PIXEL_CENTER + PIXEL_SCALE * z, wanted)
            g = tape.gradient(loss, z)
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            tf_ = tf.cast(t, tf.float32)
            step = lr * (m / (1 - beta1 ** tf_)) / (tf.sqrt(v / (1 - beta2 ** tf_)) + eps)
            z = z - step
            if clip:
                z = tf.clip_by_value(z, lo, hi)
        return z, loss_of(PIXEL_CENTER + PIXEL_SCALE * z, wanted)

    from ssrconv.progress import bar

    started = time.perf_counter()
    out, first, last = [], [], []
    n_batches = -(-images // batch_size)
    shown = bar(total=images, desc="distilling calibration inputs", unit="input")
    # Without Grappler: its rewrites of this gradient graph differed from one process to the
    # next once the output targets were in it, and so did the inputs (docs/INT8.md,
    # "Reproducible distillation"); without it every process computes what eager mode does.
    with grappler_options(disable_meta_optimizer=True):
        for b in range(n_batches):
            n = min(batch_size, images - b * batch_size)
            init = rng.standard_normal((n, *shape)).astype(np.float32)
            z0 = tf.constant(np.clip(init, lo, hi) if clip else init)
            # each input its own target per output, stratified over the output's domain
            wanted = [tf.constant(((rng.permutation(n) + rng.uniform(size=n)) / n * domain)
                                  .astype(np.float32)) for _, domain in heads]
            first.append(float(loss_of(PIXEL_CENTER + PIXEL_SCALE * z0, wanted)))
            z, loss = optimise(z0, wanted)
            last.append(float(loss))
            shown.clear()
            say(f"      distilled {b * batch_size + n}/{images} inputs (loss "
                f"{first[-1]:.1f} -> {last[-1]:.2f}, {time.perf_counter() - started:.0f} s)")
            out.append(PIXEL_CENTER + PIXEL_SCALE * z.numpy())
            shown.update(n)
    shown.close()
    inputs = np.concatenate(out).astype(np.float32)
    details = {"iterations": iterations, "batch_size": batch_size, "seed": seed,
               "batchnorm_layers": len(bns),
               "output_targets": [model.output_names[k] for k, _ in heads],
               "initial_loss": round(float(np.mean(first)), 4),
               "final_loss": round(float(np.mean(last)), 4),
               "seconds": round(time.perf_counter() - started, 1)}
    return inputs, details


# What the distillation does, in the cache key: change it whenever distill_inputs' output changes.
DISTILL_VERSION = 3  # 2: output targets (output_weight); 3: without Grappler (reproducible)
CACHE_DIR = "distilled"  # a folder of the cache directory (ssrconv.content_cache)


def distilled_cached(model, settings: dict, progress: Callable[[str], None] | None = None,
                     ) -> tuple[np.ndarray, dict]:
    """:func:`distill_inputs` of ``model`` with ``settings``, cached under the cache directory
    (``SSRCONV_CACHE``, :mod:`ssrconv.content_cache`) by the sha256 of the graph and weights,
    the settings and the TensorFlow and Keras versions (the optimiser's arithmetic): a hit
    returns the same inputs bytes and details a miss computed, with ``cache`` saying which
    ("hit" or "miss", and the key)."""
    from ssrconv._imports import tensorflow
    from ssrconv.content_cache import read_entry, write_entry
    from ssrconv.reference.model import graph_digest

    import keras

    say = progress or (lambda message: None)
    digest = hashlib.sha256(json.dumps(
        {"version": DISTILL_VERSION, "settings": settings, "tensorflow": tensorflow().__version__,
         "keras": keras.__version__}, sort_keys=True).encode())
    graph_digest(model, digest)
    key = digest.hexdigest()
    cached = read_entry(CACHE_DIR, key, ".npy")
    if cached is not None:
        say(f"      distilled inputs from the cache ({key[:12]}...)")
        inputs = np.load(io.BytesIO(cached[0]), allow_pickle=False)
        return inputs, {**cached[1], "cache": {"status": "hit", "key": key}}
    inputs, details = distill_inputs(model, progress=progress, **settings)
    buffer = io.BytesIO()
    np.save(buffer, inputs, allow_pickle=False)
    why_not = write_entry(CACHE_DIR, key, ".npy", buffer.getvalue(), details)
    if why_not:
        say(f"      distilled inputs not cached ({why_not})")
    return inputs, {**details, "cache": {"status": "miss", "key": key}}

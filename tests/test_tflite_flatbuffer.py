"""compact(): the same TFLite model in fewer bytes, read back by the runtime."""

from __future__ import annotations

import numpy as np
import pytest

from ssrconv.formats import tflite_flatbuffer as tfb


@pytest.fixture(scope="module")
def small_tflite() -> bytes:
    """A conv + dense model with a named stage layer, converted by the TFLite converter."""
    from ssrconv._imports import tensorflow

    tf = tensorflow()
    import keras

    x = keras.Input((16, 16, 3), name="face_bgr")
    y = keras.layers.Conv2D(8, 3, activation="relu", name="conv2d_1")(x)
    y = keras.layers.Flatten()(y)
    y = keras.layers.Dense(3, activation="relu", name="pred_age_stage1")(y)
    y = keras.layers.Dense(1, name="out")(y)
    model = keras.Model(x, {"age": y})
    rng = np.random.default_rng(0)
    for layer in model.layers:
        layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _interpreter(tfl: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=tfl, num_threads=1, experimental_op_resolver_type=(
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
    interpreter.allocate_tensors()
    return interpreter


def _run(tfl: bytes, x: np.ndarray) -> np.ndarray:
    return _interpreter(tfl).get_signature_runner()(face_bgr=x)["age"]


def _names(tfl: bytes) -> list[str]:
    _, subgraph, _ = tfb.operators(tfl)
    return [t.name.decode() for t in subgraph.tensors]


def test_compact_is_smaller_and_computes_the_same(small_tflite):
    x = np.random.default_rng(1).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    small = tfb.compact(small_tflite)
    assert len(small) < len(small_tflite)
    assert np.array_equal(_run(small, x[:1]), _run(small_tflite, x[:1]))
    names = [n for n in _names(small) if n]
    # the signature tensors and the stage tensor keep their names, nothing else does
    assert any("pred_age_stage1" in n for n in names)
    assert not any("conv2d_1" in n for n in names)
    model = tfb.load(small)
    assert all(b.data is None or len(b.data) for b in model.buffers[1:])  # one shared empty buffer


def test_fp16_constants_are_stored_half_and_expanded_at_load(small_tflite):
    fb = tfb.schema()
    x = np.random.default_rng(2).uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
    half = tfb.compact(small_tflite, fp16_constants=True)
    model, subgraph, ops = tfb.operators(half)
    big_float = [t for t in subgraph.tensors if t.type == fb.TensorType.FLOAT32
                 and model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data) >= 64]
    assert not big_float
    assert [name for name, _ in ops].count("DEQUANTIZE") >= 2  # conv kernel and dense weights
    reference = _run(small_tflite, x)
    assert np.allclose(_run(half, x), reference, rtol=2e-3, atol=1e-2 * float(np.abs(reference).max()))
    assert len(half) < len(tfb.compact(small_tflite))


def test_int8_dense_layers_are_found_in_the_flatbuffer(small_tflite):
    """TFLiteRuntime keeps XNNPACK away from models with int8 dense layers (docs/INT8.md)."""
    from ssrconv._imports import tensorflow
    from ssrconv.runtimes.tflite_rt import has_int8_dense

    tf = tensorflow()
    import keras

    x = keras.Input((8,))
    model = keras.Model(x, keras.layers.Dense(3, activation="relu")(x))
    rng = np.random.default_rng(3)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([rng.normal(size=(1, 8)).astype(np.float32)]
                                                for _ in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    assert has_int8_dense(_interpreter(converter.convert()))
    assert not has_int8_dense(_interpreter(small_tflite))


def test_fix_batch_makes_the_input_static_and_computes_the_same(small_tflite):
    x = np.random.default_rng(2).uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
    small = tfb.compact(small_tflite)
    fixed = tfb.fix_batch(small, 1)
    assert list(_interpreter(small).get_input_details()[0]["shape_signature"]) == [-1, 16, 16, 3]
    assert list(_interpreter(fixed).get_input_details()[0]["shape_signature"]) == [1, 16, 16, 3]
    assert np.array_equal(_run(fixed, x), _run(small, x))
    # every tensor keeps a unique, non-blank name through compaction (OpenVINO's TFLite
    # frontend tells tensors apart by name)
    names = _names(fixed)
    assert all(names) and len(set(names)) == len(names)

"""The Keras reference as a Runtime."""

from __future__ import annotations

import numpy as np

from ssrconv.runtimes.base import Runtime
from ssrconv.targets import REFERENCE_BACKEND


class KerasRuntime(Runtime):
    """The rebuilt SSR-Net with the published weights (the reference every export is held to)."""

    backend = REFERENCE_BACKEND
    engine = "keras"  # its name among --reference-engine's choices

    def __init__(self, task: str = "age-gender", age_weights=None, gender_weights=None):
        from ssrconv._imports import tensorflow

        tf = tensorflow("the keras reference")  # first: a missing extra is named for this step

        from ssrconv.reference.keras_reference import load_reference
        from ssrconv.reference.model import OUTPUT_NAMES
        self.reference = load_reference(task, age_weights, gender_weights)
        self.heads = OUTPUT_NAMES[task]
        self._model = self.reference.model
        # An eager Keras call re-dispatches every layer from Python (~240 ms per call measured);
        # one traced graph with a dynamic batch runs the same ops in ~1/25 of that.
        self._call = tf.function(lambda x: self._model(x, training=False), reduce_retracing=True,
                                 input_signature=[tf.TensorSpec((None, 64, 64, 3), tf.float32)])

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_batch(batch)
        outputs = self._call(batch)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return {head: np.asarray(o)[:, 0].astype(np.float32) for head, o in zip(self.heads, outputs)}

    def stage_outputs(self, batch: np.ndarray, specs) -> dict[str, np.ndarray]:
        import keras

        key = tuple(s.layer for s in specs)
        if getattr(self, "_stage_key", None) != key:
            stages = keras.Model(self._model.inputs,
                                 [self._model.get_layer(s.layer).output for s in specs])
            self._stage_model, self._stage_key = stages, key
        outputs = self._stage_model([self.check_batch(batch)], training=False)
        return {s.key: np.asarray(o, dtype=np.float32) for s, o in zip(specs, outputs)}

    def run_predict(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Through ``model.predict`` (what most users time: includes Keras' per-call overhead)."""
        outputs = self._model.predict(self.check_batch(batch), verbose=0)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return {head: np.asarray(o)[:, 0].astype(np.float32) for head, o in zip(self.heads, outputs)}

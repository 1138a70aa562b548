"""Integer-only int8 TFLite of SSR-Net: every operator from the input QUANTIZE to the output
DEQUANTIZEs integer, the convolutions on int8 tensors and the SSR head (its Dense layers, tanh
deltas and merge) on int16 ones, for TFLite Micro, NPUs and XNNPACK's QS8 kernels.
docs/INT8.md ("Integer-only int8") has the figures.

Recipe (:func:`convert_int8_integer`), on a graph whose merge has no division
(``Variant.rsqrt_reciprocal``) and whose SSR head keeps each head's tensors apart
(``Variant.merge_per_head``: one tensor, one scale):
 1. post-training quantization as the int8 recipe's steps: exact rewrites, cross-layer
    equalization (age head), GPTQ rounding of every conv kernel; calibrated ranges edited (tanh
    inputs clipped to [-4, 4], relu outputs at their MSE-optimal clip, each output's range the
    model's domain 0..V instead of the oldest face seen);
 2. the head widened to int16 activations (:func:`ssrconv.converters.tflite_int16_head.widen_head`:
    with an int8 head the merge's rounding alone kept the file outside the int8 budget), and
    for a member whose stage-1 maps are wider than the original's every feature map but
    ``Variant.wide_stage1_int8_maps`` (the PyTorch port: all but relu_conv2; its int8 maps
    summed their rounding past the budget), each
    head range HEADROOM times its calibrated one, a product of two activations HEADROOM
    squared (data-free inputs fall short of real faces' head ranges, and clipped the oldest
    faces);
 3. quantization-aware fine-tuning by distillation (:mod:`ssrconv.converters.int8_qat`): the
    file's kernels and biases trained, its integer arithmetic simulated, to reproduce the float
    graph's outputs on the calibration inputs and seeded variations of them. Not on
    data-free inputs (``RECIPE_DATA_FREE``): there CLE and GPTQ read the seeded variations
    instead, the average pools' outputs are clipped at their MSE-optimal value as the relu
    outputs are (``pool_clip``: distilled inputs with output targets stretch the first pool
    to 1.7 times the faces' range), and the file is step 2's;
 4. the result cached under the cache directory (``SSRCONV_CACHE``) by the content hash of the
    graph's weights, the recipe and the calibration inputs: a second export is a file read.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np

from ssrconv.converters.int8_prep import ALPHA, equalize, model_heads, rewrite, round_kernels
from ssrconv.converters.tflite_int8 import HEADROOM, TANH_CLIP, calibrate_only, edit_ranges
from ssrconv.converters.tflite_int16_head import widen_head
from ssrconv.errors import Int8RecipeError
from ssrconv.formats.tflite_flatbuffer import integer_only_violations

# What the recipe does, in the cache key: change it whenever the recipe's output changes.
# ``int8_maps`` (integer_file: the maps kept int8 when the others are int16) joins a recipe
# only when a member has it, so the files without int16 maps (the original's, the MXNet
# pair's) keep their bytes and their keys.
RECIPE = {"version": 9, "alpha": ALPHA, "head_headroom": HEADROOM, "tanh_clip": TANH_CLIP,
          "mse_clip": True, "pool_clip": False, "augment_copies": 4, "augment_seed": 0, "steps": 600, "batch_size": 32,
          "learning_rate": 0.005, "seed": 0, "prep_on_augmented": False}
# On distilled (data-free) inputs: CLE and GPTQ read the augmented inputs, and no fine-tuning.
# Fine-tuned on 64 distilled inputs, the file learns them, not faces: the data-free p99 on the
# dev faces moved 1.07 (PTQ) -> 1.04 / 1.14 / 1.02 y after 150 / 300 / 600 steps, and from
# 0.89 to 1.63 y with GPTQ on the augmented inputs (docs/INT8.md, "int16 head"). Version 9:
# pool_clip (docs/INT8.md, "Every member's data-free int8-integer file").
RECIPE_DATA_FREE = {**RECIPE, "steps": 0, "prep_on_augmented": True, "pool_clip": True}
CACHE_DIR = "int8-integer"  # a folder of the cache directory (ssrconv.content_cache)


def integer_file(model, calibration, variant, input_type: str = "float32") -> tuple[bytes, dict]:
    """:func:`convert_int8_integer` of ``model`` (the fast graph of ``variant``, a
    :class:`ssrconv.graph.Variant`; outputs named by a dict: ``reference.model.outputs_as_dict``)
    on a ``calibration.CalibrationSet``, with :data:`RECIPE_DATA_FREE` for distilled inputs and
    :data:`RECIPE` for real faces, and the variant's int16 maps for a member whose stage-1 is
    wider than the original's (``Variant.wide_stage1_int8_maps``). The TFLite and the integer
    ONNX export both ask here, so they convert, and cache, the same file."""
    from ssrconv.graph import stage1_products
    from ssrconv.reference.family import wide_stage1
    from ssrconv.reference.model import outputs_as_dict

    recipe = RECIPE_DATA_FREE if calibration.data_free else RECIPE
    if wide_stage1(stage1_products(model)) and variant.wide_stage1_int8_maps is not None:
        recipe = {**recipe, "int8_maps": list(variant.wide_stage1_int8_maps)}
    return convert_int8_integer(outputs_as_dict(model), calibration.inputs,
                                input_type=input_type, recipe=recipe)


def convert_int8_integer(model, calibration_inputs: np.ndarray, input_type: str = "float32",
                         progress=None, recipe: dict | None = None) -> tuple[bytes, dict]:
    """The integer-only int8 .tflite of ``model`` (an ssrconv fast graph, outputs named by a
    dict, merge without division) and what was done (``fine_tuning``: steps, loss before and
    after, seconds; steps 0 under ``RECIPE_DATA_FREE``; ``cache``: "hit" or "miss" and the
    key)."""
    from ssrconv.content_cache import read_entry, write_entry

    recipe = {**RECIPE, **(recipe or {})}
    say = progress or (lambda message: None)
    cal = np.asarray(calibration_inputs, np.float32)
    key = cache_key(model, cal, input_type, recipe)
    cached = read_entry(CACHE_DIR, key, ".tflite")
    if cached is not None:
        say(f"      integer-only int8 file from the cache ({key[:12]}...)")
        return cached[0], {**cached[1], "cache": {"status": "hit", "key": key}}
    from ssrconv.converters.int8_qat import augment, fine_tune

    inputs = augment(cal, recipe["augment_copies"], recipe["augment_seed"])
    prep = inputs if recipe["prep_on_augmented"] else None
    int8_maps = None if recipe.get("int8_maps") is None else tuple(recipe["int8_maps"])
    ptq = widen_head(quantize_ptq(model, cal, input_type, recipe, prep_inputs=prep),
                     recipe["head_headroom"], int8_maps)
    if recipe["steps"]:
        targets = _reference_outputs(model, inputs)
        data, tuned = fine_tune(ptq, inputs, targets, steps=recipe["steps"],
                                batch_size=recipe["batch_size"], lr=recipe["learning_rate"],
                                seed=recipe["seed"], progress=say)
    else:
        data, tuned = ptq, {"steps": 0}
    bad = integer_only_violations(data)
    if bad:
        raise Int8RecipeError(f"int8 integer-only TFLite: operators computing in float: {bad}")
    info = {"fine_tuning": tuned, "recipe": recipe}
    why_not = write_entry(CACHE_DIR, key, ".tflite", data, info)
    if why_not:
        say(f"      integer-only int8 file not cached ({why_not})")
    return data, {**info, "cache": {"status": "miss", "key": key}}


def cache_key(model, cal: np.ndarray, input_type: str, recipe: dict) -> str:
    """sha256 of what the file depends on: the graph (layer names, classes and weights), the
    calibration inputs, the input type, the recipe and the TensorFlow version."""
    from ssrconv._imports import tensorflow
    from ssrconv.reference.model import graph_digest

    digest = hashlib.sha256()
    digest.update(json.dumps({"recipe": recipe, "input_type": input_type,
                              "tensorflow": tensorflow().__version__,
                              "outputs": list(model.output_names)}, sort_keys=True).encode())
    graph_digest(model, digest)
    digest.update(np.ascontiguousarray(cal, np.float32).tobytes())
    return digest.hexdigest()


def _reference_outputs(model, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """The float graph's outputs on ``inputs``, by output name: what the fine-tuning imitates."""
    out = model.predict(inputs, batch_size=256, verbose=0)
    if isinstance(out, dict):
        return {k: np.asarray(v, np.float32).reshape(-1) for k, v in out.items()}
    out = out if isinstance(out, (list, tuple)) else [out]
    return {n: np.asarray(v, np.float32).reshape(-1) for n, v in zip(model.output_names, out)}


# ---------------------------------------------------------------------------- step 1: PTQ
def quantize_ptq(model, cal: np.ndarray, input_type: str = "float32", recipe: dict | None = None,
                 gptq: bool = True, fixed_output_ranges: bool = True,
                 prep_inputs: np.ndarray | None = None) -> bytes:
    """Step 1 of the module's recipe: the integer-only int8 file before fine-tuning, its ranges
    calibrated on ``cal``, CLE and GPTQ on ``prep_inputs`` (default ``cal``)."""
    recipe = {**RECIPE, **(recipe or {})}
    from ssrconv.reference.model import outputs_as_dict

    prep = cal if prep_inputs is None else prep_inputs
    m = rewrite(model)
    if recipe["alpha"]:
        equalize(m, prep, recipe["alpha"])
    if gptq:
        round_kernels(m, prep)
    calibrated = calibrate_only(outputs_as_dict(m), cal)
    domains = _output_ranges(model) if fixed_output_ranges else {}
    calibrated, _ = edit_ranges(calibrated, m, cal, recipe["tanh_clip"], recipe["mse_clip"], domains,
                                clip_pools=recipe["pool_clip"])
    tfl = _quantize(calibrated, input_type)
    bad = integer_only_violations(tfl)
    if bad:
        raise Int8RecipeError(f"int8 integer-only TFLite: operators computing in float: {bad} "
                              "(export it from the integer graph variant)")
    return tfl


def _output_ranges(model) -> dict[str, tuple[float, float]]:
    """The range of each output of ``model`` by construction (``reference.model.output_domains``:
    age 0..V, P(male) 0..1)."""
    from ssrconv.reference.model import OUTPUT_NAMES, output_domains

    domains = output_domains()
    return {name: (0.0, float(domains[name])) for head in model_heads(model)
            for name in OUTPUT_NAMES[head]}


def _quantize(calibrated: bytes, input_type: str) -> bytes:
    from ssrconv._imports import tensorflow
    from tensorflow.lite.python import convert as tfl_convert

    tf = tensorflow("int8 TFLite export")
    types = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tfl_convert.mlir_quantize(calibrated, input_data_type=types[input_type],
                                         output_data_type=tf.float32)

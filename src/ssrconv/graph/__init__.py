"""The export graph: the reference SSR-Net rewritten into a faster, function-preserving graph.

``build_export_graph`` and ``check_exact`` live in :mod:`ssrconv.graph.builder` (it imports
Keras); this package's ``__init__`` holds the variants and stays light. The fused stage layers
the builder writes are described in :mod:`ssrconv.stages`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssrconv.errors import SsrconvError
from ssrconv.reference.family import SUMMARY_CHANNELS

GRAPHS = ("fast", "original")

DEFAULT_GRAPH = "fast"

# The 1x1 conv whose map each stage-1 Dense reads, flattened: the reference's and the export
# graph's name (either with a head's "age_"/"gender_" prefix when the heads have their own).
_STAGE1_SUMMARY = ("conv2d_9", "stage1_s")


class GraphNotExactError(SsrconvError):
    """The fused export graph does not compute what the reference computes (beyond the bounds)."""


@dataclass(frozen=True)
class Variant:
    """How the fast graph is shaped for one converter/runtime (docs/GRAPH.md, "Variants").

    Every variant computes the same function; they differ where runtimes or quantizers do."""

    name: str
    # 1x1 summary conv output channels per head; above 10 the extra ones are exact zeros.
    summary_channels: int = 10
    # Grouped convs as one plain TF Conv2D (GroupedConv2D) rather than Keras' XLA-compiled call,
    # which only the TFLite converter inlines (tf2onnx and coremltools cannot read it).
    plain_groups: bool = True
    # One block-sparse Dense per Dense family over every stage and head (False: one Dense per
    # stage and head, as the reference: each Dense input holds one stage's one head only).
    batched_dense: bool = True
    # Convs of both heads as one groups=2 conv (the first: one conv over the shared input);
    # False: each head's own convs, as in the reference.
    grouped_convs: bool = True
    # n > 0: the input multiplied by 2^-n (one exact multiply) and the first convs' kernels by
    # 2^n, products bit-identical. For converters that store float16 weights and flush every
    # |w| < 2^-14 to zero (pnnx's convert_to_fp16_model): BatchNorm folding makes the first
    # convs' weights small (they read 0..255 pixels), down to 3e-7.
    input_scale_log2: int = 0
    # The merge's division as a multiplication by rsqrt(x)^2 (exact in real arithmetic, float
    # rounding only): TFLite's 16x8 quantizer has no DIV; the integer-only files need it.
    rsqrt_reciprocal: bool = False
    # One merge per head (batched_dense False only): no tensor of the SSR head holds two
    # heads' values. Integer-only int8 gives each tensor one scale, and a tensor holding the
    # gender head's stage features (0..8.3) rounded the age head's (0..0.16) to a few steps
    # (docs/INT8.md, "Integer-only int8").
    merge_per_head: bool = False
    # The merge's stage weights V / s^(k+1) in its stage-sum matrix (one column per stage and
    # head) rather than its output matrix (one column per head). A per-channel int8 quantizer
    # (TFLite's, for FULLY_CONNECTED) then stores each exactly (127 steps of weight / 127); in
    # the output matrix one scale served the three stages and 16x8 stored V/9 and V/27 0.8%
    # low, every age shifted down (docs/INT8.md, "The 16x8 file").
    merge_scales_in_sums: bool = False
    # n > 1 (per-stage Dense only): each stage-delta Dense wider than the original's (one tanh
    # unit over a padding=1 member's 640 stage-1 feature products; the original's read 160) as
    # a Dense with one output per group of its weights by magnitude, summed by a Dense of ones.
    # Exact; for per-channel int8 weights each group gets its own scale: with one, the PyTorch
    # port's stage-1 delta cost its 16x8 file most of its error. The original's 160-wide
    # deltas grouped made its data-free file worse (mean 0.14 -> 0.22 y: the groups' partial
    # sums get ranges of their own), so they stay one Dense (docs/INT8.md, "The 16x8 file").
    delta_scale_groups: int = 1
    # The stage-2 and stage-3 summaries' 4x4 and 8x8 average pools as chains of two and three
    # 2x2/stride-2 average pools: an average of equal blocks' averages is their average, and
    # floor(floor(n/2)/2) = floor(n/4), so every output reads the same inputs. The int8 recipes
    # write each average pool as a depthwise conv of its stride, and Vela 5.2 runs no
    # depthwise conv with a stride above 3 on the NPU (it left the four stride-4/8 ones to the
    # CPU). The 16x8 graph only: in the int8-integer file each step is one more int8 rounding,
    # and the MXNet pair's file calibrated on faces left the budget (TFLite Micro p99 0.95 ->
    # 1.1 y; docs/INT8.md, "Ethos-U").
    average_pools_stride2: bool = False
    # Integer-only int8 (tflite_int16_head.widen_head), for a member whose stage-1 maps are wider
    # than the original's (family.wide_stage1): the feature maps (layer names of this graph)
    # kept on int8 activations; every other map, as the SSR head, on int16 (TFLite's 16x8
    # kernels). None: every map int8. The PyTorch port's int8 maps summed their rounding to
    # 0.44 / 1.66 y (mean / p99, faces, before fine-tuning); its input affine alone costs
    # 0.06 / 0.34 y int8, and relu_conv2 (44% of its multiply-adds) 0.03 / 0.13
    # (docs/INT8.md, "The PyTorch port's int8-integer file: int16 maps").
    wide_stage1_int8_maps: tuple[str, ...] | None = None


VARIANTS = {v.name: v for v in (
    Variant("tflite", plain_groups=False),
    # Each head its own convs and Dense layers, for quantizers that give a tensor one scale:
    # TFLite dynamic range quantizes the input of each hybrid CONV_2D / FULLY_CONNECTED with one
    # scale per face (a groups=2 conv's input mixes both heads' activations: p99 1.34 y grouped
    # vs 0.66 y; block-sparse Dense kernels pass the 1024-element threshold above which weights
    # are quantized at all); static QDQ (ONNX / OpenVINO int8) one activation scale per tensor
    # (grouped: p99 1.01 y). Dense per stage: the int8 head is float, and batched it stores its
    # block-sparse zeros in float32 (ONNX int8: 399 KB batched and padded vs 248 KB, docs/INT8.md).
    Variant("per-head", plain_groups=False, batched_dense=False, grouped_convs=False),
    # Integer-only TFLite (int16x8, what microcontrollers and NPUs run): no DIV in the merge, and
    # each head its own convs: TFLite Micro's arena 352,576 bytes against 620,016 for the fused
    # graph, whose first convs write both heads' maps at once (docs/INT8.md, "TFLite Micro").
    Variant("per-head-integer", plain_groups=False, batched_dense=False, grouped_convs=False,
            rsqrt_reciprocal=True, merge_scales_in_sums=True, delta_scale_groups=4,
            average_pools_stride2=True),
    # Integer-only int8: per head from the input to the outputs, one merge per head, so no int8
    # tensor (one scale) holds both heads' values (docs/INT8.md, "Integer-only int8"); a wide
    # stage-1 delta grouped as in the 16x8 graph (the PyTorch port's file calibrated on faces:
    # p99 1.53 -> 1.33 y, docs/INT8.md "The other family members").
    Variant("per-head-int8-integer", plain_groups=False, batched_dense=False,
            grouped_convs=False, rsqrt_reciprocal=True, merge_per_head=True,
            delta_scale_groups=4, wide_stage1_int8_maps=("relu_conv2",)),
    # onnxruntime keeps its NCHWc blocked layout through 16-channel summaries (also used by
    # OpenVINO and onnxruntime-web: measured faster padded, docs/GRAPH.md).
    Variant("onnx", summary_channels=16),
    # ncnn and MNN: no faster with the padding, and the zeros cost file size.
    Variant("onnx-unpadded"),
    # ncnn and MNN fp16 (float16 weights, subnormals flushed: max 0.41 y without the scaling).
    Variant("onnx-unpadded-fp16", input_scale_log2=8),
    # CoreML (measured with coremltools 9.0; speed cannot be measured off macOS): fp16 is smallest
    # fully fused (291 KB vs 328 KB original); fp32 stores the block-sparse zeros in float32,
    # so it keeps the Dense layers per stage and head (458 KB vs 475 KB; fused: 498 KB).
    Variant("coreml"),
    Variant("coreml-perstage", batched_dense=False),
)}


def fast_graph_blocker(members: dict) -> str | None:
    """Why the fast graph cannot express a model whose heads are ``members`` ({head: Member of
    :mod:`ssrconv.reference.family`}), or None when it can (every member today).

    The builder reads each member's spec (padding, BatchNorm epsilon, stage-1 summary ReLU,
    in-graph preprocessing); what it needs of several heads is that one conv serves them all:
    the same padding and stage-1 activation, and, where the preprocessing cannot be folded into
    the first convs (same padding: the convs zero-pad the normalised input), one preprocessing.
    """
    specs = list(members.values())
    if len({m.arch.padding for m in specs}) > 1:
        return "its heads' convs pad differently"
    if len({m.arch.stage1_summary_relu for m in specs}) > 1:
        return "its heads differ in the stage-1 summary ReLU"
    unfoldable = [m for m in specs if m.arch.padding != "valid" and not m.preprocess.identity]
    if unfoldable and len({m.preprocess for m in specs}) > 1:
        return "its heads normalise the input differently and zero-pad it (padding=1)"
    return None


def fast_graph_only(name: str) -> bool:
    """Whether the rows converting variant ``name`` can only be made from the fast graph: the
    integer-only files quantize an SSR merge without a division (``rsqrt_reciprocal``), which
    the original graph does not have."""
    return get_variant(name).rsqrt_reciprocal


def get_variant(name: str) -> Variant:
    """The variant called ``name``; GraphNotExactError naming the known ones otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise GraphNotExactError(f"unknown export-graph variant {name!r}: known variants are "
                                 f"{', '.join(VARIANTS)}") from None


def stage1_products(model) -> int:
    """How many products each stage-1 Dense of ``model`` (the reference or an export graph, whose
    Keras layer names say which) sums: one per value of a head's flattened stage-1 summary,
    SUMMARY_CHANNELS x the area of its map. ``ssrconv.reference.family.wide_stage1`` says
    whether that is wider than the original's."""
    for layer in model.layers:
        if any(layer.name in (name, "age_" + name, "gender_" + name) for name in _STAGE1_SUMMARY):
            height, width = layer.output.shape[1:3]
            return SUMMARY_CHANNELS * height * width
    raise GraphNotExactError(f"model {model.name!r} has no stage-1 summary conv "
                             f"({' or '.join(_STAGE1_SUMMARY)}): not an SSR-Net graph")

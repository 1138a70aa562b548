"""The SSR-Net family: one architecture spec and one preprocessing contract per published member.

SSR-Net is published as the original Keras graph (``ssrnet_3_3_3_64_1.0_1.0``) and as ports that
change small things: padding, BatchNorm epsilon, a ReLU, the flatten order, the input
normalisation, the face crop. A :class:`Member` names one such variant; the Keras reference
(:mod:`ssrconv.reference.model`) and the numpy engine (:mod:`ssrconv.reference.numpy_engine`)
are built from its :class:`ArchSpec`, and every exported artifact keeps ssrconv's one input
(``face_bgr``: N x 64 x 64 x 3 float32 BGR 0..255) with the member's colour order and
normalisation inside the graph (:meth:`Preprocess.affine`).

What each port's own code says (read from its repository; docs/PORTS.md has the details):

- ``wayen820-mxnet`` (github.com/wayen820/gender_age_estimation_mxnet, ``src/symbols/ssr.py``):
  valid 3x3 convs, BatchNorm eps 2e-5, no ReLU after the stage-1 1x1 convs, MXNet's NCHW
  Flatten, ``(x - 127.5) * 0.0078125`` on RGB inside the graph; faces aligned by 5 landmarks to
  the ArcFace 112 x 112 template, resized to 64 (``src/common/face_preprocess.py``).
- ``oukohou-pytorch`` (github.com/oukohou/SSR_Net_Pytorch, ``SSR_models/SSR_Net_model.py``):
  padding=1 convs (64 -> 32 -> 16 -> 8, so dense inputs 640/160/160), BatchNorm eps 1e-5,
  ReLU after every 1x1 conv, NCHW ``view`` flatten; ``cv2.imread`` (BGR) / 255 then the ImageNet
  mean/std applied in that (BGR) channel order (``inference_images.py``); MegaAge-Asian's
  face crops, resized to 64.

Dense kernels read from an NCHW-flatten port are re-laid out to the NHWC flatten order when the
file is read (a row permutation: exact), so the graphs here always flatten NHWC; ``flatten``
records what the port computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ssrconv.errors import WeightsError

if TYPE_CHECKING:  # numpy is imported where it is used: the CLI reads MEMBERS for --arch
    import numpy as np

ORIGINAL_NAME = "ssrnet_3_3_3_64_1.0_1.0"

# Crop rules: how a face crop is cut from a photo before resizing to 64 x 64.
CROP_MARGIN = "margin"  # the detector box grown by 0.4 of its size on each side (original)
CROP_ALIGN5 = "align5-arcface112"  # 5 landmarks similarity-aligned to the ArcFace 112 template
CROPS = (CROP_MARGIN, CROP_ALIGN5)


SUMMARY_CHANNELS = 10  # output channels of each head's 1x1 summary convs (the stage inputs)

@dataclass(frozen=True)
class ArchSpec:
    """The shape-level facts that tell one SSR-Net from another."""

    name: str  # the original's naming: ssrnet_<stages>_<size>_<lambda_local>_<lambda_d>
    padding: str = "valid"  # the 3x3 convs: "valid" (original) or "same" (padding=1)
    bn_epsilon: float = 1e-3
    stage1_summary_relu: bool = True  # ReLU after the two stage-1 1x1 convs (conv2d_9/10)
    flatten: str = "NHWC"  # the order the port flattened in (NCHW kernels are re-laid out)
    stage_num: tuple[int, int, int] = (3, 3, 3)
    lambda_local: float = 1.0
    lambda_d: float = 1.0
    heads: tuple[str, ...] = ("age", "gender")  # heads this family member publishes

    def __post_init__(self):
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding must be valid or same, got {self.padding!r}")
        if self.flatten not in ("NHWC", "NCHW"):
            raise ValueError(f"flatten must be NHWC or NCHW, got {self.flatten!r}")
        if tuple(self.stage_num) != (3, 3, 3):
            # Every published SSR-Net is 3-3-3; the layer tables assume it.
            raise ValueError(f"only stage_num (3, 3, 3) is supported, got {self.stage_num}")

    def conv_sizes(self, input_size: int = 64) -> dict[str, int]:
        """Output height (= width) of every conv of one head (original layer names)."""
        shrink = 2 if self.padding == "valid" else 0
        sizes = {}
        h = input_size
        stream = []
        for _ in range(4):
            h -= shrink
            stream.append(h)
            h //= 2
        for i, size in enumerate(stream):
            sizes[f"conv2d_{i + 1}"] = sizes[f"conv2d_{i + 5}"] = size
        pooled = [stream[0] // 2, stream[1] // 2]  # layer1, layer2 (after the 2x2 pools)
        sizes["conv2d_9"] = sizes["conv2d_10"] = stream[3]
        sizes["conv2d_11"] = sizes["conv2d_12"] = pooled[1]
        sizes["conv2d_13"] = sizes["conv2d_14"] = pooled[0]
        return sizes

    def flat_widths(self, input_size: int = 64) -> tuple[int, int, int]:
        """Flattened summary width per stage (SUMMARY_CHANNELS x the pooled summary's area)."""
        return tuple(SUMMARY_CHANNELS * self.summary_hw(stage, input_size) ** 2
                     for stage in (1, 2, 3))

    def summary_hw(self, stage: int, input_size: int = 64) -> int:
        """Height (= width) of stage ``stage``'s flattened summary map (after its pool)."""
        sizes = self.conv_sizes(input_size)
        return {1: sizes["conv2d_9"], 2: sizes["conv2d_11"] // 4, 3: sizes["conv2d_13"] // 8}[stage]


@dataclass(frozen=True)
class Preprocess:
    """A member's preprocessing contract: what its network expects, from a BGR 0..255 face.

    ``colour`` is the channel order the network reads; ``offset``/``scale`` are per channel in
    that order: the network's input is ``(x - offset) * scale`` with x in 0..255.
    """

    colour: str = "BGR"
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    crop: str = CROP_MARGIN
    note: str = ""

    def __post_init__(self):
        if self.colour not in ("BGR", "RGB"):
            raise ValueError(f"colour must be BGR or RGB, got {self.colour!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")

    @property
    def identity(self) -> bool:
        """True when the network reads ssrconv's input as it is (the original contract)."""
        return (self.colour == "BGR" and self.offset == (0.0, 0.0, 0.0)
                and self.scale == (1.0, 1.0, 1.0))

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(kernel 3x3, bias 3): the network input = face_bgr @ kernel + bias, float64.

        One 1x1 convolution: a channel permutation (BGR -> the member's order) times the scale,
        and the bias -offset * scale. Every converter maps it to one conv op.
        """
        import numpy as np

        order = (0, 1, 2) if self.colour == "BGR" else (2, 1, 0)
        kernel = np.zeros((3, 3))
        for out_channel, in_channel in enumerate(order):
            kernel[in_channel, out_channel] = self.scale[out_channel]
        bias = -np.asarray(self.offset, np.float64) * np.asarray(self.scale, np.float64)
        return kernel, bias

    def apply(self, faces_bgr: np.ndarray, dtype=None) -> np.ndarray:
        """``faces_bgr`` (N x H x W x 3, BGR 0..255) as the member's network reads them, in
        ``dtype`` (default float64)."""
        import numpy as np

        dtype = np.float64 if dtype is None else dtype
        x = np.asarray(faces_bgr, dtype)
        if self.colour == "RGB":
            x = x[..., ::-1]
        return (x - np.asarray(self.offset, dtype)) * np.asarray(self.scale, dtype)


@dataclass(frozen=True)
class Member:
    """One published SSR-Net: its architecture, its contract and where it comes from."""

    name: str
    arch: ArchSpec
    preprocess: Preprocess
    source: str

    def describe(self) -> dict:
        """The manifest's record of this member: name, source, spec and contract."""
        return {"member": self.name, "source": self.source, "arch": asdict(self.arch),
                "preprocessing": asdict(self.preprocess)}


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

MEMBERS: dict[str, Member] = {m.name: m for m in (
    Member("original", ArchSpec(ORIGINAL_NAME), Preprocess(),
           "github.com/shamangary/SSR-Net (Keras .h5; also b02901145/SSR-Net_megaage-asian)"),
    Member("wayen820-mxnet",
           ArchSpec(ORIGINAL_NAME, bn_epsilon=2e-5, stage1_summary_relu=False, flatten="NCHW"),
           Preprocess(colour="RGB", offset=(127.5,) * 3, scale=(0.0078125,) * 3, crop=CROP_ALIGN5,
                      note="RGB, (x - 127.5) * 0.0078125 inside the graph; face aligned by 5 "
                           "landmarks to the ArcFace 112x112 template, resized to 64x64"),
           "github.com/wayen820/gender_age_estimation_mxnet (MXNet .params + -symbol.json)"),
    Member("oukohou-pytorch",
           ArchSpec(ORIGINAL_NAME, padding="same", bn_epsilon=1e-5, flatten="NCHW",
                    heads=("age",)),
           Preprocess(colour="BGR", offset=tuple(255.0 * m for m in _IMAGENET_MEAN),
                      scale=tuple(1.0 / (255.0 * s) for s in _IMAGENET_STD), crop=CROP_MARGIN,
                      note="BGR (cv2.imread) / 255, ImageNet mean/std applied in BGR channel "
                           "order; MegaAge-Asian face crops resized to 64x64 (the margin crop "
                           "stands in for them)"),
           "github.com/oukohou/SSR_Net_Pytorch (PyTorch .pth checkpoint)"),
)}
ORIGINAL = MEMBERS["original"]


def wide_stage1(stage1_products: int) -> bool:
    """True when each stage-1 Dense sums ``stage1_products`` products (``ArchSpec.flat_widths()[0]``;
    of a model: ``ssrconv.graph.stage1_products``), more than the original SSR-Net's 160 (10
    channels x its 4 x 4 stage-1 summaries). A padding=1 member's are 8 x 8 (the PyTorch port:
    640), and there fp16 arithmetic (MNN on arm64, docs/ARM64.md), int8 fourth blocks and one
    int8 scale for the stage-1 delta's weights broke their budgets (docs/PORTS.md, docs/INT8.md)."""
    return stage1_products > ORIGINAL.arch.flat_widths()[0]


def get_member(name: str) -> Member:
    """The member called ``name``; a WeightsError listing the known ones otherwise."""
    try:
        return MEMBERS[name]
    except KeyError:
        raise WeightsError(f"unknown SSR-Net member {name!r}: choose one of "
                           f"{', '.join(MEMBERS)}") from None

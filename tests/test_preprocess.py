"""The preprocessing contract: margin 0.4, clipping, edge-replicated chip padding, BGR, labels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssrconv.errors import InputError
from ssrconv.reference.preprocess import (
    crop_face,
    expand_box,
    parse_utkface_label,
    prepare_chip,
    read_image,
    to_bgr_uint8,
)


def test_expand_box_grows_by_margin_and_clips():
    assert expand_box((100, 100, 50, 50), (480, 640)) == (80, 80, 171, 171)
    assert expand_box((0, 0, 50, 50), (60, 60)) == (0, 0, 60, 60)


def test_crop_face_is_64x64_bgr_float32():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, :, 0] = 255  # pure blue in BGR
    crop = crop_face(image, (30, 30, 40, 40))
    assert crop.shape == (64, 64, 3) and crop.dtype == np.float32
    assert crop[..., 0].min() == 255 and crop[..., 2].max() == 0


def test_prepare_chip_pads_with_edge_replication():
    chip = np.full((200, 200, 3), 7, np.uint8)
    chip[:, 0] = 200  # left edge column: replicated into the whole left padding
    out = prepare_chip(chip)
    padded = cv2.copyMakeBorder(chip, 80, 80, 80, 80, cv2.BORDER_REPLICATE)
    expected = cv2.resize(padded, (64, 64), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    assert out[:, 0, 0].min() == 200  # left padding took the edge value


def test_utkface_labels():
    assert parse_utkface_label("34_0_2_2017.jpg.chip.jpg") == (34, True)
    assert parse_utkface_label("1_1_0_x.jpg") == (1, False)
    assert parse_utkface_label("face.jpg") is None


@pytest.mark.parametrize("shape,dtype", [((9, 9), np.uint8), ((9, 9, 1), np.uint8),
                                         ((9, 9, 4), np.uint8), ((9, 9, 3), np.uint16)])
def test_any_decoded_image_becomes_bgr_uint8(shape, dtype):
    out = to_bgr_uint8(np.ones(shape, dtype))
    assert out.shape == (9, 9, 3) and out.dtype == np.uint8


def test_unreadable_images_are_input_errors(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "random.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    for name in ("empty.jpg", "random.jpg", "missing.jpg"):
        with pytest.raises(InputError, match=name):
            read_image(tmp_path / name)


@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), x=st.floats(-50, 350), y=st.floats(-50, 350),
       bw=st.floats(1, 300), bh=st.floats(1, 300))
def test_crop_never_crashes(h, w, x, y, bw, bh):
    image = np.zeros((h, w, 3), np.uint8)
    try:
        crop = crop_face(image, (x, y, bw, bh))
    except InputError:
        return  # a box wholly outside the image is refused clearly
    assert crop.shape == (64, 64, 3)

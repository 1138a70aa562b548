"""The one preprocessing contract of SSR-Net, and the labelled-face loader built on it.

A model input is a 64x64 face crop, **BGR**, float32 in 0..255, no normalisation (the original
training read images with ``cv2.imread``). From a detector box the crop is the box grown by
0.4 of its width/height on every side, clipped to the image, resized with ``cv2.INTER_LINEAR``.
Pre-cropped aligned chips (UTKFace) are cropped tighter than SSR-Net's training crops, so they
are first padded by ``round(0.4 * size)`` on each side with edge replication.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssrconv.errors import InputError

INPUT_SIZE = 64
MARGIN = 0.4
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CONTRACT = {
    "input": "face_bgr",
    "layout": "NHWC",
    "size": f"{INPUT_SIZE}x{INPUT_SIZE}",
    "colour": "BGR",
    "range": "0..255 float32, no normalisation",
    "crop": f"detector box grown by {MARGIN} of its width/height on each side, clipped to the image",
    "resize": "cv2.INTER_LINEAR",
}


def to_bgr_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Any decoded image (gray, BGR, BGRA, 8/16-bit, float) as contiguous HxWx3 uint8 BGR."""
    import cv2

    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or 0 in image.shape:
        raise InputError(f"{name}: expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype.kind == "f":
        if not np.all(np.isfinite(image)):
            raise InputError(f"{name}: image contains NaN or Inf pixels")
        image = np.clip(image, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputError(f"{name}: unsupported pixel type {image.dtype}")
    if image.shape[2] == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


def check_regular_file(path: str | os.PathLike) -> Path:
    """``path`` if it is a regular file (symlinks followed); an InputError naming it otherwise.

    Checked with ``stat`` before any byte is read: opening a named pipe blocks until a writer
    comes (``ssrconv predict`` hung forever on one), and ``/dev/zero`` never ends.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a directory, not an image file")
    if not stat.S_ISREG(mode):
        kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or
                stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise InputError(f"{path}: {kind}, not an image file: give a regular file")
    return path


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file as HxWx3 uint8 BGR, upright; an InputError naming the file otherwise.

    The EXIF orientation (JPEG, PNG eXIf, WebP, TIFF) is applied, so the pixels, and every box
    found in them, are in the frame a photo viewer shows: a phone photo stored sideways with
    Orientation=6 was read sideways before and mispredicted (astronaut: 33.9 y male instead of
    26.2 y female). ``IMREAD_UNCHANGED`` ignores EXIF; ``IMREAD_COLOR | IMREAD_ANYDEPTH`` applies
    it and still keeps 16-bit samples (reduced to 8 bits by :func:`to_bgr_uint8`); alpha is
    dropped, as it was before (no compositing).
    """
    import cv2

    path = check_regular_file(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # np.fromfile handles unicode paths; imread may not
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    if data.size == 0:
        raise InputError(f"{path}: empty file")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise InputError(f"{path}: not a decodable image (JPEG, PNG, BMP, WebP, TIFF)")
    return to_bgr_uint8(image, name=str(path))


def expand_box(box, image_shape, margin: float = MARGIN) -> tuple[int, int, int, int]:
    """Grow an (x, y, w, h) box by ``margin`` of its size on each side, clipped to the image.

    Returns inclusive-exclusive pixel bounds (x1, y1, x2, y2), as the original SSR-Net demo.
    """
    x, y, w, h = (float(v) for v in box)
    img_h, img_w = image_shape[:2]
    x1 = max(int(x - margin * w), 0)
    y1 = max(int(y - margin * h), 0)
    x2 = min(int(x + w + margin * w), img_w - 1) + 1
    y2 = min(int(y + h + margin * h), img_h - 1) + 1
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"face box {tuple(box)} lies outside the {img_w}x{img_h} image")
    return x1, y1, x2, y2


def crop_face(image: np.ndarray, box, margin: float = MARGIN) -> np.ndarray:
    """The model input for the face in ``box`` (x, y, w, h) of a BGR image: 64x64x3 float32."""
    import cv2

    image = to_bgr_uint8(image)
    x1, y1, x2, y2 = expand_box(box, image.shape, margin)
    crop = image[y1:y2, x1:x2]
    resized = cv2.resize(crop, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    return resized.astype(np.float32)


def prepare_chip(chip: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    """The model input for a pre-cropped aligned face chip (e.g. UTKFace): 64x64x3 float32."""
    import cv2

    chip = to_bgr_uint8(chip)
    h, w = chip.shape[:2]
    pad_y, pad_x = round(margin * h), round(margin * w)
    padded = cv2.copyMakeBorder(chip, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_REPLICATE)
    resized = cv2.resize(padded, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    return resized.astype(np.float32)


_UTK = re.compile(r"^(\d{1,3})_([01])_")


def parse_utkface_label(filename: str) -> tuple[int, bool] | None:
    """(age, is_male) from a UTKFace name ``{age}_{gender}_{race}_...`` (gender 0 = male)."""
    match = _UTK.match(Path(filename).name)
    if match is None:
        return None
    return int(match.group(1)), match.group(2) == "0"


@dataclass(frozen=True)
class FaceSet:
    """Prepared face chips of one directory, with labels where the file name carries them."""

    names: list[str]
    inputs: np.ndarray  # N x 64 x 64 x 3 float32 BGR
    ages: np.ndarray  # float, NaN where unlabelled
    is_male: np.ndarray  # float 1.0 / 0.0, NaN where unlabelled

    def __len__(self) -> int:
        return len(self.names)


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files (by suffix) directly in ``directory``, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory of face images")
    return sorted(p for p in directory.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_faces(directory: str | os.PathLike, limit: int | None = None) -> FaceSet:
    """Load the aligned face chips of ``directory`` as model inputs (see :func:`prepare_chip`)."""
    paths = list_images(directory)
    if limit is not None:
        paths = paths[:limit]
    return load_face_files(paths, name=str(directory))


def load_face_files(paths: list[Path], name: str = "face list") -> FaceSet:
    """Load the given aligned face chips as model inputs (see :func:`prepare_chip`)."""
    if not paths:
        raise InputError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) in this directory")
    inputs, ages, males = [], [], []
    for path in paths:
        inputs.append(prepare_chip(read_image(path)))
        label = parse_utkface_label(path.name)
        ages.append(np.nan if label is None else label[0])
        males.append(np.nan if label is None else float(label[1]))
    return FaceSet(names=[p.name for p in paths], inputs=np.stack(inputs),
                   ages=np.array(ages, dtype=np.float64), is_male=np.array(males, dtype=np.float64))

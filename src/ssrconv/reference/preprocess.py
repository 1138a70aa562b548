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
from dataclasses import dataclass, field
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


FACE_KINDS = ("auto", "chips", "photos")
# Chip vs photo, per file, with --faces-kind auto. Measured with YuNet (score >= 0.7): on the 300
# UTKFace dev chips (200x200) exactly one face each, covering 65-93 % of the image (median 83 %);
# on the sample photos 6 faces (largest 1.3 % of t1.jpg) and 1 face (3.9 % of astronaut.png).
CHIP_MIN_COVERAGE = 0.25
CHIP_MAX_SIDE = 256
CHIP_RULE = (f"a file is an aligned chip when YuNet finds exactly one face covering at least "
             f"{CHIP_MIN_COVERAGE:.0%} of the image, or no face in an image of at most "
             f"{CHIP_MAX_SIDE} px a side; otherwise a photo, every face found cropped by the "
             f"contract (box grown by {MARGIN})")
LABELS_FILE = "labels.csv"


@dataclass(frozen=True)
class FaceSet:
    """Prepared model inputs of one directory, with labels where known.

    A face comes from an aligned chip (the whole file) or from a photo (one detected face of it,
    named ``file#i``, faces numbered left to right). ``origin`` says how many faces came from how
    many files and which rule decided chip vs photo.
    """

    names: list[str]
    inputs: np.ndarray  # N x 64 x 64 x 3 float32 BGR
    ages: np.ndarray  # float, NaN where unlabelled
    is_male: np.ndarray  # float 1.0 / 0.0, NaN where unlabelled
    origin: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        """One line: faces, files, chips/photos, the rule that decided."""
        o = self.origin
        if not o:
            return f"{len(self)} faces"
        text = (f"{len(self)} faces from {o['files']} files ({o['chips']} aligned chips, "
                f"{o['photos']} photos with {o['photo_faces']} faces")
        if o.get("files_without_face"):
            text += f", {len(o['files_without_face'])} photos without a face"
        text += f"), {o['labelled']} labelled; chip vs photo: {o['decided_by']}"
        return text


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files (by suffix) directly in ``directory``, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory of face images")
    return sorted(p for p in directory.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def spread_pick(paths: list, limit: int | None) -> list:
    """At most ``limit`` of the name-sorted ``paths`` (or any list), spread evenly over it.

    Taking the first ``limit`` would be biased: UTKFace names start with the age, so the first
    files are the youngest faces (measured on int8 calibration: all ages above 44 came out as
    43.9 years). The one subsetting rule of parity, eval and calibration.
    """
    if limit is None or len(paths) <= limit:
        return list(paths)
    picks = np.unique(np.linspace(0, len(paths) - 1, limit).round().astype(int))
    return [paths[i] for i in picks]


def load_faces(directory: str | os.PathLike, limit: int | None = None, kind: str = "auto",
               detector=None) -> FaceSet:
    """The faces of ``directory``: aligned chips (see :func:`prepare_chip`) and/or full photos
    (faces detected with YuNet, cropped by :func:`crop_face`), decided per file by
    :data:`CHIP_RULE` with ``kind="auto"``, or forced with ``"chips"`` / ``"photos"``. Labels
    come from a ``labels.csv`` beside the images (columns file, age, gender) or else from
    UTKFace-style names. ``limit`` caps the number of files read (:func:`spread_pick`)."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: must be at least 1")
    paths = spread_pick(list_images(directory), limit)
    labels = read_labels(Path(directory) / LABELS_FILE)
    return load_face_files(paths, name=str(directory), kind=kind, detector=detector, labels=labels)


def read_labels(path: Path) -> dict[str, tuple[float, float]]:
    """``labels.csv`` as {file or file#i: (age or NaN, is_male 1/0 or NaN)}; {} when absent."""
    import csv

    if not path.is_file():
        return {}
    out: dict[str, tuple[float, float]] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "file" not in reader.fieldnames:
            raise InputError(f"{path}: needs a header row with the columns file, age, gender")
        for number, row in enumerate(reader, start=2):
            age_text = (row.get("age") or "").strip()
            gender = (row.get("gender") or "").strip().lower()
            try:
                age = float(age_text) if age_text else np.nan
            except ValueError:
                raise InputError(f"{path}:{number}: age {age_text!r} is not a number") from None
            if gender not in _GENDERS:
                raise InputError(f"{path}:{number}: gender {row.get('gender')!r}: use M or F "
                                 "(or male/female), empty when unknown")
            out[(row.get("file") or "").strip()] = (age, _GENDERS[gender])
    return out


_GENDERS = {"m": 1.0, "male": 1.0, "f": 0.0, "female": 0.0, "": np.nan}


def _label_for(name: str, face_name: str, single: bool, labels: dict) -> tuple[float, float]:
    if face_name in labels:
        return labels[face_name]
    if single and name in labels:  # a per-file label says whose face only when there is one
        return labels[name]
    parsed = parse_utkface_label(name) if single else None
    return (np.nan, np.nan) if parsed is None else (float(parsed[0]), float(parsed[1]))


def load_face_files(paths: list[Path], name: str = "face list", kind: str = "auto",
                    detector=None, labels: dict | None = None) -> FaceSet:
    """The faces of the given files (see :func:`load_faces`)."""
    if kind not in FACE_KINDS:
        raise InputError(f"faces kind {kind!r}: choose from {', '.join(FACE_KINDS)}")
    if not paths:
        raise InputError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) in this directory")
    from ssrconv.progress import progress

    labels = labels or {}
    if kind != "chips" and detector is None:
        from ssrconv.detect import YuNetDetector

        detector = YuNetDetector()
    names, inputs, ages, males = [], [], [], []
    chips = photos = photo_faces = 0
    without_face: list[str] = []
    for path in progress(paths, desc=f"reading faces ({kind})", unit="file"):
        image = read_image(path)
        found = [] if kind == "chips" else sorted(detector.detect(image), key=lambda f: f.box[0])
        if kind == "chips" or (kind == "auto" and _is_chip(image, found)):
            chips += 1
            crops, face_names = [prepare_chip(image)], [path.name]
        else:
            photos += 1
            crops, face_names = [], []
            for face in found:
                try:
                    crops.append(crop_face(image, face.box))
                except InputError:
                    continue  # a box wholly outside the image
                face_names.append(f"{path.name}#{len(face_names)}")
            photo_faces += len(crops)
            if not crops:
                without_face.append(path.name)
        for crop, face_name in zip(crops, face_names):
            age, male = _label_for(path.name, face_name, len(crops) == 1, labels)
            names.append(face_name)
            inputs.append(crop)
            ages.append(age)
            males.append(male)
    if not inputs:
        raise InputError(f"{name}: no face found in its {len(paths)} images "
                         "(give aligned chips with --faces-kind chips, or photos with faces)")
    ages_arr = np.array(ages, dtype=np.float64)
    decided = {"auto": CHIP_RULE, "chips": "forced: every file is an aligned chip",
               "photos": "forced: every file is a photo"}[kind]
    origin = {"source": name, "files": len(paths), "faces": len(inputs), "chips": chips,
              "photos": photos, "photo_faces": photo_faces, "files_without_face": without_face,
              "labelled": int(np.isfinite(ages_arr).sum()), "kind": kind, "decided_by": decided,
              "labels": LABELS_FILE if labels else "UTKFace-style names"}
    return FaceSet(names=names, inputs=np.stack(inputs), ages=ages_arr,
                   is_male=np.array(males, dtype=np.float64), origin=origin)


def _is_chip(image: np.ndarray, found) -> bool:
    """:data:`CHIP_RULE` for one image and its YuNet faces."""
    h, w = image.shape[:2]
    if not found:
        return max(h, w) <= CHIP_MAX_SIDE
    if len(found) != 1:
        return False
    _, _, bw, bh = found[0].box
    return bw * bh >= CHIP_MIN_COVERAGE * w * h


def load_sample_faces(detector=None) -> FaceSet:
    """The 7 faces of the two built-in sample photographs (asset registry), unlabelled."""
    from ssrconv.assets import sample_photos

    faces = load_face_files(sample_photos(), name="the built-in sample photos", kind="photos",
                            detector=detector)
    return faces

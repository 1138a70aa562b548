"""Face detection for ``ssrconv predict``: OpenCV YuNet by default, the Haar cascade as a fallback.

YuNet (``cv2.FaceDetectorYN``, weights from the asset registry, sha256-checked) found 6/6 faces
in the group sample photo where the Haar cascade found 4/6; the cascade ships inside
opencv-python 4.x (not 5.x) and needs no download, which is why it is kept as the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssrconv.errors import SsrconvError

DETECTORS = ("yunet", "haar")
# YuNet cost grows with the pixel count; faces SSR-Net can read survive this downscale.
YUNET_MAX_SIDE = 1600
# Smaller images hold no face worth a 64x64 chip; on a 1x1 image YuNet once returned an
# infinite box (its anchors assume at least one 32-px stride cell).
YUNET_MIN_SIDE = 8


@dataclass(frozen=True)
class Face:
    """A detected face: box (x, y, w, h) in image pixels and the detector's score (0..1)."""

    box: tuple[float, float, float, float]
    score: float


class Detector:
    """Finds faces in BGR uint8 images."""

    name = ""
    is_fallback = False

    def detect(self, image: np.ndarray) -> list[Face]:  # pragma: no cover - interface
        raise NotImplementedError


class YuNetDetector(Detector):
    name = "yunet"

    def __init__(self, model_path: str | None = None, score_threshold: float = 0.7,
                 nms_threshold: float = 0.3):
        import cv2

        from ssrconv.assets import resolve

        path = resolve(model_path or "yunet").path
        try:
            self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold,
                                                  nms_threshold, 5000)
        except cv2.error as err:
            raise SsrconvError(f"{path}: OpenCV cannot load it as a YuNet model ({err.msg.strip()})") from None

    def detect(self, image: np.ndarray) -> list[Face]:
        import cv2

        h, w = image.shape[:2]
        if min(h, w) < YUNET_MIN_SIDE:
            return []
        scale = min(1.0, YUNET_MAX_SIDE / max(h, w))
        small = image if scale == 1.0 else cv2.resize(image, (max(1, round(w * scale)),
                                                              max(1, round(h * scale))),
                                                      interpolation=cv2.INTER_AREA)
        self._net.setInputSize((small.shape[1], small.shape[0]))
        _, found = self._net.detect(small)
        if found is None:
            return []
        faces = []
        for row in found:
            if not np.all(np.isfinite(row)):
                continue  # seen once on a 1x1 image: an infinite box (OverflowError downstream)
            x, y, bw, bh = (float(v) / scale for v in row[:4])
            if bw >= 1 and bh >= 1:
                faces.append(Face((x, y, bw, bh), float(row[-1])))
        return faces


class HaarDetector(Detector):
    """OpenCV's frontal-face Haar cascade (no score: reported as 1.0)."""

    name = "haar"
    is_fallback = True

    def __init__(self):
        import cv2

        data = getattr(cv2, "data", None)
        if data is None or not hasattr(cv2, "CascadeClassifier"):
            raise SsrconvError("this OpenCV build has no Haar cascades (OpenCV 5 removed them); "
                               "use --detector yunet")
        self._cascade = cv2.CascadeClassifier(data.haarcascades + "haarcascade_frontalface_default.xml")
        if self._cascade.empty():
            raise SsrconvError("OpenCV's bundled haarcascade_frontalface_default.xml did not load")

    def detect(self, image: np.ndarray) -> list[Face]:
        import cv2

        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        boxes = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(20, 20))
        return [Face(tuple(float(v) for v in b), 1.0) for b in boxes]


def make_detector(name: str = "yunet") -> Detector:
    """The detector called ``name`` ("yunet" or "haar")."""
    if name == "yunet":
        return YuNetDetector()
    if name == "haar":
        return HaarDetector()
    raise SsrconvError(f"unknown detector {name!r}: choose from {', '.join(DETECTORS)}")

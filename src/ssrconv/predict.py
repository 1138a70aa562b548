"""``ssrconv predict``: detector + crop + SSR-Net on photos and videos, on any backend.

What the original SSR-Net demos did, but with any exported artifact, so a user can see with
their own eyes that the phone model sees what the reference sees. All faces of an image go
through the model in one batch; crops follow the one preprocessing contract.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssrconv.atomic import fsync_path, place, temp_path, write_atomic
from ssrconv.errors import InputError, SsrconvError
from ssrconv.reference.preprocess import IMAGE_SUFFIXES, check_regular_file, crop_face, read_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
CSV_FIELDS = ("source", "frame", "face", "x", "y", "w", "h", "score", "age", "p_male", "gender",
              "ref_age", "ref_p_male", "age_diff", "p_male_diff")


@dataclass
class PredictResult:
    """Every face found, and every input that could not be processed (with the reason)."""

    records: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    annotated: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def expand_inputs(inputs: list[str | os.PathLike]) -> Iterator[Path]:
    """Files to process: files as given, directories' regular non-hidden files in name order."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            yield path


def label(age: float | None, p_male: float | None) -> str:
    """The annotation text, e.g. "34, M"."""
    parts = []
    if age is not None:
        parts.append(f"{age:.0f}")
    if p_male is not None:
        parts.append("M" if p_male > 0.5 else "F")
    return ", ".join(parts)


def annotate(image: np.ndarray, records: list[dict]) -> np.ndarray:
    """A copy of ``image`` with each face's box and "age, gender" label drawn."""
    import cv2

    canvas = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 500))
    for r in records:
        x, y, w, h = (int(round(v)) for v in r["box"])
        cv2.rectangle(canvas, (x, y), (x + w, y + h), (0, 220, 0), thickness)
        text = label(r.get("age"), r.get("p_male"))
        scale = max(0.5, w / 120)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(0, y - th - base - 4)
        cv2.rectangle(canvas, (x, top), (x + tw + 4, top + th + base + 4), (0, 220, 0), -1)
        cv2.putText(canvas, text, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), thickness, cv2.LINE_AA)
    return canvas


class Predictor:
    """Detector + crops + one runtime (+ optionally the reference, for ``--compare``)."""

    def __init__(self, runtime, detector, min_face: int = 0, reference=None):
        self.runtime = runtime
        self.detector = detector
        self.min_face = min_face
        self.reference = reference

    def find(self, image: np.ndarray) -> list:
        """The detector's faces of ``image`` at least ``min_face`` pixels on their short side."""
        return [f for f in self.detector.detect(image) if min(f.box[2], f.box[3]) >= self.min_face]

    def crop(self, image: np.ndarray, found: list, source: str = "",
             frame: int | None = None) -> tuple[list[dict], np.ndarray | None]:
        """One record per readable face of ``found`` and their model inputs stacked in one
        batch (the preprocessing contract's crops); (``[]``, None) when no face is readable."""
        records = []
        crops = []
        for face in found:
            try:
                crops.append(crop_face(image, face.box))
            except InputError:
                continue  # a box wholly outside the image: nothing to read
            records.append({"source": source, "frame": frame, "face": len(records),
                            "box": [round(v, 1) for v in face.box], "score": round(face.score, 4)})
        return records, (np.stack(crops) if crops else None)

    def faces_of(self, image: np.ndarray, source: str, frame: int | None = None) -> list[dict]:
        """Detect, crop, run the model on all faces in one batch; one record per face.
        (``ssrconv bench`` times these same three steps: :meth:`find`, :meth:`crop`, run.)"""
        records, batch = self.crop(image, self.find(image), source, frame)
        if not records:
            return []
        outputs = self.runtime.run(batch)
        reference = self.reference.run(batch) if self.reference is not None else None
        for i, r in enumerate(records):
            if "age" in outputs:
                r["age"] = round(float(outputs["age"][i]), 3)
            if "p_male" in outputs:
                # SSR-Net's gender head is a regression: raw outputs reach 1.05 and below 0.
                # Users see a probability, clipped to [0, 1]; p_male_diff compares raw outputs.
                r["p_male"] = round(float(np.clip(outputs["p_male"][i], 0.0, 1.0)), 5)
                r["gender"] = "M" if outputs["p_male"][i] > 0.5 else "F"
            if reference is not None:
                if "age" in outputs:
                    r["ref_age"] = round(float(reference["age"][i]), 3)
                    r["age_diff"] = round(float(outputs["age"][i] - reference["age"][i]), 4)
                if "p_male" in outputs:
                    r["ref_p_male"] = round(float(np.clip(reference["p_male"][i], 0.0, 1.0)), 5)
                    r["p_male_diff"] = round(float(outputs["p_male"][i] - reference["p_male"][i]), 6)
        return records

    def run(self, inputs: list[str | os.PathLike], out_dir: Path | None = None, every: int = 1,
            progress: Callable[[str], None] | None = None) -> PredictResult:
        """Process every input; failures are collected, never fatal to the others.

        Progress is a bar on a terminal (files done, faces found); ``progress`` gets one line
        per skipped input only (the reason), not one per file.
        """
        from ssrconv.progress import bar

        say = progress or (lambda message: None)
        result = PredictResult()
        files = list(expand_inputs(inputs))
        if not files:
            # exit 0 with nothing processed looked like success
            raise InputError(f"no image or video files in {', '.join(str(i) for i in inputs)}")
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        used_names: set[str] = set()
        faces = 0
        with bar(total=len(files), desc="predict", unit="file") as shown:
            for path in files:
                try:
                    # stat before opening: a named pipe would block forever, /dev/zero never end
                    check_regular_file(path)
                    if path.suffix.lower() in VIDEO_SUFFIXES:
                        records = self._video(path, out_dir, every, used_names, result)
                    else:
                        records = self._image(path, out_dir, used_names, result)
                    result.records.extend(records)
                    faces += len(records)
                except SsrconvError as err:
                    result.failures.append({"source": str(path), "error": str(err)})
                    shown.clear()
                    say(f"skipped: {err}")
                    shown.refresh()
                shown.set_postfix_str(f"{faces} faces", refresh=False)
                shown.update(1)
        return result

    def _out_name(self, path: Path, suffix: str, used: set[str]) -> str:
        name = f"{path.stem}_annotated{suffix}"
        n = 1
        while name in used:
            n += 1
            name = f"{path.stem}_annotated_{n}{suffix}"
        used.add(name)
        return name

    def _image(self, path: Path, out_dir, used, result) -> list[dict]:
        import cv2

        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"{path}: not an image or video file (by its suffix)")
        image = read_image(path)
        records = self.faces_of(image, str(path))
        if out_dir is not None:
            suffix = path.suffix.lower()  # the input's own format: a PNG stays lossless
            name = self._out_name(path, suffix, used)
            ok, encoded = cv2.imencode(suffix, annotate(image, records))
            if not ok:
                raise InputError(f"{path}: could not encode the annotated image")
            write_atomic(out_dir / name, encoded.tobytes())
            result.annotated.append(str(out_dir / name))
        return records

    def _video(self, path: Path, out_dir, every: int, used, result) -> list[dict]:
        import cv2

        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise InputError(f"{path}: not a readable video")
        writer = None
        tmp = final = None
        records: list[dict] = []
        frames = 0
        try:
            fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            index = 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                if index % every == 0:
                    found = self.faces_of(frame, str(path), frame=index)
                    records.extend(found)
                    frames += 1
                    if out_dir is not None:
                        if writer is None:
                            final = out_dir / self._out_name(path, ".mp4", used)
                            tmp = temp_path(final, ".mp4")
                            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"),
                                                     fps / every, (frame.shape[1], frame.shape[0]))
                        writer.write(annotate(frame, found))
                index += 1
            if frames == 0:
                raise InputError(f"{path}: no decodable frames")
            if writer is not None:
                writer.release()
                writer = None
                fsync_path(tmp)
                place(tmp, final)
                result.annotated.append(str(final))
        finally:
            capture.release()
            if writer is not None:
                writer.release()
            if tmp is not None and tmp.exists():
                tmp.unlink()
        return records


def predict_faces(image: str | os.PathLike | np.ndarray, model: str | os.PathLike | None = None,
                  detector: str = "yunet", min_face: int = 0) -> list[dict]:
    """The faces of one photo with their ages and genders: what ``ssrconv predict PHOTO`` prints,
    as a list of dicts (``box`` x, y, w, h in pixels, detector ``score``, ``age`` in years,
    ``p_male`` clipped to 0..1, ``gender`` "M"/"F"), one per face found.

    ``image``: a path, or a BGR uint8 array as ``cv2.imread`` returns. ``model``: an exported
    artifact or a weights file (``.h5``); None: the reference (Keras when TensorFlow is
    installed, else the numpy engine). ``detector``: "yunet" or "haar".
    """
    from ssrconv.detect import make_detector
    from ssrconv.loading import is_weights_file, load_runtime, reference_from_weights

    if isinstance(image, np.ndarray):
        source, pixels = "<array>", image
    else:
        check_regular_file(Path(image))
        source, pixels = str(image), read_image(Path(image))
    if model is None:
        from ssrconv.reference import load_reference_runtime

        runtime = load_reference_runtime("age-gender")
    else:
        runtime = reference_from_weights(model) if is_weights_file(model) else load_runtime(model)
    with runtime:
        faces = Predictor(runtime, make_detector(detector), min_face=min_face).faces_of(pixels, source)
    return [{k: v for k, v in face.items() if k not in ("source", "frame")} for face in faces]


def to_json(result: PredictResult) -> str:
    return json.dumps({"faces": result.records, "failures": result.failures,
                       "annotated": result.annotated}, indent=2) + "\n"


def to_csv(result: PredictResult) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in result.records:
        x, y, w, h = r["box"]
        writer.writerow({**r, "x": x, "y": y, "w": w, "h": h})
    return buffer.getvalue()

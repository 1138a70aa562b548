"""The one calibration iterator that feeds every quantizer (TFLite's representative_dataset,
onnxruntime's CalibrationDataReader): real face images prepared by the preprocessing contract."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class CalibrationSet:
    """Model inputs used to calibrate int8 ranges, with where they came from."""

    inputs: np.ndarray  # N x 64 x 64 x 3 float32 BGR 0..255
    source: str

    @classmethod
    def from_dir(cls, directory: str | os.PathLike, limit: int = 300) -> "CalibrationSet":
        """Face images of ``directory`` (aligned chips, padded by the contract), at most ``limit``
        of them, spread evenly over the name-sorted list.

        Taking the first ``limit`` would be biased: UTKFace names start with the age, so the first
        100 files are the youngest faces, and ranges calibrated on them clip every older face's
        prediction (measured: all ages above 44 came out as 43.9 years).
        """
        from ssrconv.reference.preprocess import list_images, load_face_files

        paths = list_images(directory)
        if len(paths) > limit:
            picks = np.unique(np.linspace(0, len(paths) - 1, limit).round().astype(int))
            paths = [paths[i] for i in picks]
        faces = load_face_files(paths, name=str(directory))
        return cls(inputs=faces.inputs, source=str(Path(directory)))

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        """The inputs in order, ``batch_size`` at a time."""
        for start in range(0, len(self.inputs), batch_size):
            yield self.inputs[start:start + batch_size]

    def onnx_reader(self, input_name: str):
        """These inputs, one face per call, as an onnxruntime ``CalibrationDataReader`` feeding
        ``input_name`` (imported here: onnxruntime stays out of ``import ssrconv``)."""
        from onnxruntime.quantization import CalibrationDataReader

        batches = self.batches

        class _Reader(CalibrationDataReader):
            def __init__(self):
                self._it = batches(1)

            def get_next(self):
                batch = next(self._it, None)
                return None if batch is None else {input_name: batch}

            def rewind(self):
                self._it = batches(1)

        return _Reader()

    def describe(self) -> dict:
        return {"kind": "real faces", "source": self.source, "images": len(self)}

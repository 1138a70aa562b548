"""ssrconv: ship SSR-Net to ONNX, TFLite, CoreML, the browser, OpenVINO, ncnn, MNN and Arm
Ethos-U, prove parity, measure speed.

``import ssrconv`` stays light: TensorFlow, coremltools and onnxruntime are imported
only by the functions that need them.
"""

import os

# TensorFlow's C++ start-up chatter (CPU feature notes, oneDNN banners) buries ssrconv's own
# output; users can still raise it by setting the variable themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ssrconv._version import __version__  # noqa: E402
from ssrconv.errors import AssetError, InputError, SsrconvError, WeightsError  # noqa: E402



def export(options=None, progress=None, **kwargs):
    """Export SSR-Net; see :func:`ssrconv.exporter.export` (imported lazily: it is heavy)."""
    from ssrconv.exporter import export as _export

    return _export(options, progress=progress, **kwargs)


def predict_faces(image, model=None, detector="yunet", min_face=0):
    """Faces of one photo (path or BGR array) with ages and genders; see
    :func:`ssrconv.predict.predict_faces` (imported lazily)."""
    from ssrconv.predict import predict_faces as _predict_faces

    return _predict_faces(image, model=model, detector=detector, min_face=min_face)


__all__ = ["__version__", "export", "predict_faces", "AssetError", "InputError", "SsrconvError", "WeightsError"]

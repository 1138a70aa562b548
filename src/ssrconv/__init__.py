"""ssrconv: ship SSR-Net to ONNX, TFLite and CoreML, prove parity, measure speed.

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


__all__ = ["__version__", "export", "AssetError", "InputError", "SsrconvError", "WeightsError"]

"""Optional extras: which pip extra brings which library, and one-line errors when it is missing.

The base install runs artifacts (onnxruntime, ai-edge-litert, numpy, opencv, h5py): a device
or a CI runner that only checks exports needs nothing else, the numpy reference standing in for
Keras. Converting needs ``ssrconv[export]`` (TensorFlow, Keras, tf2onnx, coremltools); running a
``.mlpackage`` needs coremltools (``ssrconv[coreml]``). :func:`require` turns a missing library
into a :class:`~ssrconv.errors.MissingExtraError` naming the extra, instead of a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util

from ssrconv.errors import MissingExtraError

# extra -> what it brings, for the message ("ssrconv export needs the converters: ...").
EXTRAS = {
    "export": "the converters",
    "coreml": "coremltools",
    # Runtime extras added by other targets (openvino, tract, ncnn, mnn, browser) go here.
}
# Modules no extra can bring: pnnx's wheel requires torch (a 5 GB CUDA build from PyPI) for a
# PyTorch frontend the ONNX path never imports, so it is installed without its dependencies.
INSTALL_COMMANDS = {"pnnx": "pip install --no-deps 'pnnx>=20261020'"}


def available(module: str) -> bool:
    """True when ``module`` is installed (found on the path; nothing is imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken __spec__
        return False


def _message(module: str, extra: str, what: str) -> str:
    brings = EXTRAS.get(extra, extra)
    command = INSTALL_COMMANDS.get(module, f"pip install 'ssrconv[{extra}]'")
    return f"{what} needs {brings} ({module} is not installed): {command}"


def check(modules: tuple[str, ...] | list[str], extra: str, what: str) -> None:
    """MissingExtraError for the first of ``modules`` that is not installed (nothing imported)."""
    for module in modules:
        if not available(module):
            raise MissingExtraError(_message(module, extra, what))


def require(module: str, extra: str, what: str):
    """Import and return ``module``; MissingExtraError (one line naming the extra) when it, or
    one of its own dependencies, is not installed. ``what`` names the step that needs it
    (e.g. "ssrconv export")."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        missing = err.name or module
        raise MissingExtraError(_message(missing, extra, what)) from None

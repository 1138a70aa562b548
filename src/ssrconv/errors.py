"""The project's own errors: each carries one line a user can act on."""


class SsrconvError(Exception):
    """Base class: the CLI prints ``str(err)`` on one line and exits non-zero."""

    exit_code = 1


class AssetError(SsrconvError):
    """A registry asset (weights, detector) could not be found, fetched or verified."""


class WeightsError(SsrconvError):
    """A weights file does not fit the model it is being loaded into."""


class InputError(SsrconvError):
    """An input file or directory (image, face folder, ...) is missing or unusable."""


class ModelFileError(SsrconvError):
    """An exported model file (.onnx, .tflite, .mlpackage) is unreadable, corrupt or foreign:
    refused before its runtime is handed the bytes, or when the runtime cannot load or run it."""


class ManifestError(InputError):
    """A manifest (``<artifact>.json``) or ``index.json`` is unreadable or malformed."""


class MissingExtraError(SsrconvError):
    """A command needs a library of an optional extra (``ssrconv[export]``, ...) that is not
    installed; the message names the extra to install."""

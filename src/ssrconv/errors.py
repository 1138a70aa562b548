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


class OptionsError(SsrconvError):
    """An impossible or malformed combination of options (a usage error: exit code 2)."""

    exit_code = 2


class MissingExtraError(SsrconvError):
    """A command needs a pip extra (converters, an engine) that is not installed."""


class IntegrityError(ModelFileError):
    """An artifact's bytes on disk are not the bytes its manifest (or the index) records: the
    file was replaced or edited after export, or a commit was torn. Never trusted."""


class ConverterError(SsrconvError):
    """A converter's external tool (pnnx, MNN's converter, tf2onnx, Vela) failed or wrote
    something other than what was asked (``ssrconv.converters.tool.run_tool``)."""


class Int8RecipeError(SsrconvError):
    """An int8 recipe's own check failed (a converter or quantizer behaved unlike the recipe
    expects): the export is refused rather than shipped wrong."""


def clip(text: str, limit: int = 200) -> str:
    """The first line of ``text`` (a library's error message) shortened for one of our error
    lines: at most ``limit`` characters, cut at a word boundary with "..." when longer, never
    mid-word (``... at offset 190496 (actua`` said nothing); a single word longer than the
    limit is kept whole."""
    line = (str(text).strip().splitlines() or [""])[0].strip()
    if len(line) <= limit:
        return line
    cut = line.rfind(" ", 0, limit - 3)
    return line if cut <= 0 else line[:cut].rstrip(" ,;:") + "..."

"""Import TensorFlow (and coremltools) once, without their start-up chatter on the terminal.

TF 2.21 logs through absl before ``TF_CPP_MIN_LOG_LEVEL`` is read (oneDNN banners, "could not
find cuda drivers", a cuInit failure on CPU-only machines), so the environment variable alone
does not silence it. Those lines are written to file descriptor 2 while the library loads and
the platforms initialise; we point fd 2 at /dev/null for exactly that window. A failed import
still raises its Python exception with its message.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys


@contextlib.contextmanager
def silenced_fd2():
    """Redirect the process-level stderr (fd 2) to /dev/null inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@functools.cache
def _tensorflow():
    from ssrconv._extras import require

    if os.environ.get("SSRCONV_TF_VERBOSE") == "1":
        return require("tensorflow", "export", "TensorFlow")
    with silenced_fd2():
        tf = require("tensorflow", "export", "TensorFlow")
        require("keras", "export", "Keras")  # Keras 3 imports TF's backend here: same chatter

        tf.config.list_physical_devices()  # platform (CUDA probe) initialisation happens now
    # The export runs model.predict on many small models (exactness check, CLE, GPTQ): TF's
    # Python logger then warns "N out of the last M calls ... triggered tf.function
    # retracing" on every export. Expected here, not actionable by a user: errors only.
    import logging

    tf.get_logger().setLevel(logging.ERROR)
    return tf


@contextlib.contextmanager
def grappler_options(**options: bool):
    """TensorFlow functions called inside run with these Grappler options
    (``tf.config.optimizer.set_experimental_options``: process-wide), each restored on the way
    out; an option not set before goes back to the opposite of what the block asked (each
    use flips a default: ``remapping`` on, ``disable_meta_optimizer`` off)."""
    tf = tensorflow()
    previous = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options(options)
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(
            {name: previous.get(name, not value) for name, value in options.items()})


def tensorflow(what: str = "this step"):
    """The ``tensorflow`` module, imported quietly (and Keras with it).

    Without ``ssrconv[export]`` installed: MissingExtraError naming ``what`` (e.g. "ssrconv
    export", "the keras reference") and the extra to install.
    """
    from ssrconv._extras import check

    check(("tensorflow", "keras"), "export", what)
    return _tensorflow()


@functools.cache
def _coremltools():
    import logging

    from ssrconv._extras import available, require

    if available("tensorflow"):
        tensorflow()
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    return require("coremltools", "coreml", "coremltools")


def coremltools(what: str = "this step", extra: str = "coreml"):
    """The ``coremltools`` module, imported quietly.

    coremltools imports TensorFlow when that is installed (so that goes first, quietly), then
    logs a warning per missing native proxy off macOS and "TensorFlow 2.21 has not been
    tested": its logger is set to ERROR. Conversions are verified by parity instead. Without
    coremltools: MissingExtraError naming ``what`` and ``extra`` ("coreml" to run a .mlpackage,
    "export" to convert).
    """
    from ssrconv._extras import check

    check(("coremltools",), extra, what)
    return _coremltools()

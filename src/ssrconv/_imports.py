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
def tensorflow():
    """The ``tensorflow`` module, imported quietly (and Keras with it)."""
    if os.environ.get("SSRCONV_TF_VERBOSE") == "1":
        import tensorflow as tf
        return tf
    with silenced_fd2():
        import tensorflow as tf
        import keras  # noqa: F401  (Keras 3 imports TF's backend here: same chatter)

        tf.config.list_physical_devices()  # platform (CUDA probe) initialisation happens now
    return tf


@functools.cache
def coremltools():
    """The ``coremltools`` module, imported quietly.

    coremltools imports TensorFlow (so that goes first, quietly), then logs a warning per
    missing native proxy off macOS and "TensorFlow 2.21 has not been tested": its logger is set
    to ERROR. Conversions are verified by parity instead.
    """
    import logging

    tensorflow()
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools as ct

    return ct

"""Microcontroller figures of a .tflite: the smallest TensorFlow Lite Micro tensor arena it
allocates in ("MCU RAM") and its flash bytes (the file). Shared by the export (the manifest) and
the tflite-micro engine; needs the ``mcu`` extra (pip ``tflite-micro``)."""

from __future__ import annotations

from functools import lru_cache

from ssrconv.errors import ModelFileError

# Bisection bounds: the fp32 file needs 1,198,128 bytes (docs/INT8.md); 16 MiB is far above any
# SSR-Net file and far below what a corrupt one could ask for.
MAX_ARENA = 16 * 2**20
ARENA_STEP = 16  # TFLM aligns its allocations to 16 bytes


def interpreter(data: bytes, arena: int):
    """A TFLite Micro interpreter of ``data`` in an ``arena``-byte tensor arena (RuntimeError
    or ValueError when it does not allocate)."""
    from tflite_micro.python.tflite_micro import runtime

    from ssrconv._imports import silenced_fd2

    with silenced_fd2():  # TFLM reports a too-small arena on stderr before raising
        return runtime.Interpreter.from_bytes(data, arena_size=arena)


@lru_cache(maxsize=16)
def smallest_arena(data: bytes) -> int:
    """The smallest tensor arena (bytes, a multiple of 16) in which TFLite Micro allocates
    ``data``: bisection between 0 and MAX_ARENA (allocation succeeds for every arena above the
    smallest). ModelFileError when even MAX_ARENA does not allocate."""
    try:
        interpreter(data, MAX_ARENA)
    except (RuntimeError, ValueError) as err:
        raise ModelFileError(f"TFLite Micro cannot allocate this model in {MAX_ARENA:,} bytes "
                             f"({str(err).splitlines()[0][:200]})") from None
    low, high = 0, MAX_ARENA // ARENA_STEP  # in steps: low fails, high allocates
    while high - low > 1:
        middle = (low + high) // 2
        try:
            interpreter(data, middle * ARENA_STEP)
            high = middle
        except (RuntimeError, ValueError):
            low = middle
    return high * ARENA_STEP


def mcu_figures(data: bytes) -> dict:
    """The manifest's ``mcu`` block: arena and flash bytes, and what measured them."""
    from importlib.metadata import version

    return {"ram_bytes": smallest_arena(data), "flash_bytes": len(data),
            "ram_measured_with": f"tflite-micro {version('tflite-micro')}: the smallest "
                                 "tensor arena that allocates (bisection, 16-byte steps)"}

"""The bench rows that are not artifacts of the format table, in one table.

An artifact row's backend is its format's family (``ssrconv.targets.FORMATS``); the other rows
are listed here: the reference computed from the .h5 weights (on Keras, or on the numpy engine),
the single-thread numpy GEMM that measures the machine's rate, and the stand-in runtime of the
harness's tests. Planning, the worker processes and the report ask this table instead of
branching on the names.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssrconv.targets import REFERENCE_BACKEND, REFERENCE_ON_ENGINE


@dataclass(frozen=True)
class RowKind:
    """One kind of non-artifact row, named by its ``backend`` (the worker's ``load`` backend)."""

    backend: str
    what: str
    # "module:Class" the worker builds with the row's options (no library to import, no file);
    # None: ssrconv.loading.load_runtime(backend=...) builds it.
    builds: str | None = None
    # The reference computed from .h5 weights: its size is its weights files, its engine is the
    # report's reference engine, and the worker reports the rebuilt model's parameter and MAC
    # counts with ``describe`` ("module:function" of the loaded runtime).
    from_weights: bool = False
    describe: str | None = None
    size_label: str = "{name}"  # the size table's name of the row's files
    # BLAS threads of the worker: "row" (the row's --threads), "one" (pinned), None (untouched).
    blas_threads: str | None = None
    tensorflow: bool = False  # the worker imports TensorFlow and sets its thread pools


KERAS = RowKind(REFERENCE_BACKEND, "the Keras reference (model call and model.predict)",
                from_weights=True, describe="ssrconv.benchmarks.worker:keras_info",
                size_label="keras (.h5 weights)", tensorflow=True)
REFERENCE = RowKind(REFERENCE_ON_ENGINE, "the reference on the numpy engine (no TensorFlow)",
                    from_weights=True, describe="ssrconv.benchmarks.worker:numpy_info",
                    size_label="{name} (.h5 weights)", blas_threads="row")
GEMM = RowKind("gemm", "numpy float32 GEMM on one thread: the machine's reference rate",
               builds="ssrconv.benchmarks.worker:Gemm", blas_threads="one")
FAKE = RowKind("fake", "a stand-in runtime for the harness's tests (busy-waits, can crash)",
               builds="ssrconv.benchmarks.worker:FakeRuntime")

ROW_KINDS = {kind.backend: kind for kind in (KERAS, REFERENCE, GEMM, FAKE)}


def row_kind(backend: str) -> RowKind | None:
    """The kind of a non-artifact row (None: ``backend`` is a format family)."""
    return ROW_KINDS.get(backend)


def resolve(dotted: str):
    """The object a ``module:name`` entry of this table names (imported on demand)."""
    import importlib

    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)

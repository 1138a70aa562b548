"""One module per target family. Each exposes:

- ``convert(model, target, options, dest, calibration) -> dict``: write the artifact to ``dest``
  (a temporary path chosen by the caller) and return family-specific manifest fields;
- ``describe(path) -> dict``: read the artifact back (inputs/outputs with names, shapes,
  dtypes, quantization; ops) for the manifest, from the file itself, not from intentions.
"""

from __future__ import annotations

import importlib


def converter_for(family: str):
    """The converter module of ``family`` (imported lazily: each pulls in heavy libraries)."""
    return importlib.import_module(f"ssrconv.converters.{family}")

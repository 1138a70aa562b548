"""One module per format family (the ``module`` of its row in :mod:`ssrconv.targets`). Each
exposes:

- ``convert(model, target, options, dest, calibration, metadata) -> dict``: write the artifact
  to ``dest`` (a temporary path chosen by the caller) and return family-specific manifest fields;
- ``describe(path) -> dict``: read the artifact back (inputs/outputs with names, shapes,
  dtypes, quantization; ops) for the manifest, from the file itself, not from intentions;
- ``verify(path)``: a structural check that raises ModelFileError before a runtime sees the
  bytes;
- ``file_precision(path) -> str``: the precision an unmanaged file computes in, read from it.

Reading (``verify``, ``file_precision``) needs only the runtime libraries; converting needs the
``export`` extra.
"""

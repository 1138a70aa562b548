"""The write side: one module per format family (the ``module`` of its row in
:mod:`ssrconv.targets`). Each exposes

- ``convert(model, target, options, dest, calibration, metadata) -> dict``: write the artifact
  to ``dest`` (a temporary path chosen by the caller) and return family-specific manifest fields.

Reading an artifact back (``describe``, ``verify``, ``file_precision``, ``static_batch``) is the
format's module in :mod:`ssrconv.formats`, which converters use and runtimes share; converters
never import a runtime. Converting needs the ``export`` extra.
"""

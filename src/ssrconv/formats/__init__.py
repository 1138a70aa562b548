"""The format read layer: per format, what reading an artifact needs and nothing that writes
or runs it.

Each module (one per family of :data:`ssrconv.targets.FORMATS`) offers

- ``verify(path)``: a structural check that raises ModelFileError before a runtime sees the
  bytes (``open_artifact`` calls it once; runtimes trust the artifact they are handed);
- ``describe(path) -> dict``: inputs/outputs, ops and other facts read back from the file;
- ``file_precision(path) -> str``: the precision class (parity budget) of an unmanaged file,
  read from it;
- ``static_batch(path) -> int | None`` where the format can store one,

plus the readers converters and runtimes share (the tflite flatbuffer schema, the ncnn param
parser, the OpenVINO IR files, the web folder's config, the MIL program interpreter).
Converters (write, :mod:`ssrconv.converters`) and runtimes (run, :mod:`ssrconv.runtimes`) both
depend on this package and never on each other; it imports neither, nor the reference.
Reading needs only the runtime libraries (imported inside functions), never TensorFlow.
"""

HEADS = ("age", "p_male")  # the outputs an SSR-Net artifact may have, in this order

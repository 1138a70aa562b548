"""One Runtime per engine (the factories the format table's :class:`~ssrconv.targets.Engine`
rows name), each handed an artifact :func:`ssrconv.artifacts.open_artifact` already verified.

Every runtime takes a float32 BGR batch (N x 64 x 64 x 3, 0..255) and returns
``{"age": (N,), "p_male": (N,)}`` (the heads the artifact has), handling quantized I/O with the
model's own scale and zero-point. Runtimes read files through :mod:`ssrconv.formats` and never
import a converter; loading an artifact or the reference is :func:`ssrconv.loading.load_runtime`.
"""

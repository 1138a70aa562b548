"""Size and speed of every backend, measured side by side (``ssrconv bench``)."""

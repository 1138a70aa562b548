"""The worker that runs artifacts for :class:`ssrconv.runtimes.remote.Worker` on another
platform (``python -m ssrconv.platform_worker``, inside the arm64 root filesystem).

Requests are JSON lines on stdin, answers JSON lines on the original stdout; everything a
library prints goes to stderr (the host's log of the worker). An artifact is opened and
verified here as in the host process (:func:`ssrconv.artifacts.open_artifact`), then run on its
engine; face batches come and outputs go as ``.npy``/``.npz`` files named in the requests.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

from ssrconv.errors import SsrconvError

_DISTRIBUTIONS = ("ssrconv", "numpy", "onnxruntime", "ai-edge-litert", "ncnn", "MNN", "openvino",
                  "tract", "coremltools")


def _versions() -> dict[str, str | None]:
    import importlib.metadata

    found = {}
    for dist in _DISTRIBUTIONS:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


def serve(requests, answer) -> None:
    """Answer each request of ``requests`` (JSON lines) with ``answer(dict)`` until "quit"."""
    from ssrconv.artifacts import open_artifact
    from ssrconv.platforms import machine_info
    from ssrconv.stages import StagesUnavailable, stage_specs
    from ssrconv.targets import ENGINES

    loaded = {}
    handles = itertools.count(1)
    for line in requests:
        message = json.loads(line)
        op = message["op"]
        try:
            if op == "quit":
                break
            if op == "hello":
                answer({"info": machine_info(), "versions": _versions(),
                        "engines": {name: e.installed() for name, e in ENGINES.items()}})
            elif op == "load":
                runtime = open_artifact(Path(message["path"])).runtime(engine=message["engine"])
                handle = next(handles)
                loaded[handle] = runtime
                answer({"id": handle, "engine": runtime.engine,
                        "stage_engine": runtime.stage_engine or runtime.engine,
                        "heads": list(runtime.heads), "describe": runtime.describe()})
            elif op in ("run", "stages"):
                runtime = loaded[message["id"]]
                batch = np.load(message["input"], allow_pickle=False)
                if op == "run":
                    out = runtime.run(batch)
                else:
                    specs = [s for s in stage_specs(runtime.heads) if s.key in message["keys"]]
                    out = runtime.stage_outputs(batch, specs)
                target = message["input"][:-len(".npy")] + ".out.npz"
                np.savez(target, **{k: np.asarray(v) for k, v in out.items()})
                answer({"output": target})
            elif op == "unload":
                loaded.pop(message["id"]).close()
                answer({})
            else:
                answer({"error": f"unknown request {op!r}"})
        except StagesUnavailable as err:
            answer({"error": f"StagesUnavailable: {err}"})
        except SsrconvError as err:
            answer({"error": str(err)})
        except Exception as err:  # a runtime's own exception: reported, the worker goes on
            first = str(err).splitlines()[0][:300] if str(err) else ""
            answer({"error": f"{type(err).__name__}: {first}"})
    for runtime in loaded.values():
        runtime.close()


def main() -> None:
    """Serve stdin; answers on the original stdout, everything else to stderr."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a runtime printing to stdout must not corrupt the protocol
    sys.stdout = sys.stderr

    def answer(message: dict) -> None:
        protocol.write(json.dumps(message, default=str) + "\n")
        protocol.flush()

    serve(sys.stdin, answer)


if __name__ == "__main__":
    main()

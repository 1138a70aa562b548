"""``python -m ssrconv.benchmarks.worker``: one backend in its own process, driven by the harness.

Each backend runs in a process of its own so that TFLite never shares a process with
TensorFlow, each peak RSS belongs to one backend, and a backend that crashes (a segfault, a
"double free") takes down only its worker: the harness reports it as failed and goes on.

Protocol: the harness writes one JSON object per line on stdin; the worker answers each with one
JSON line on its private copy of the original stdout (``{"ok": true, ...}`` or
``{"ok": false, "error": "one line"}``). File descriptor 1 is pointed at stderr at start-up, so
whatever a library prints cannot corrupt the protocol. Commands:

``load``    backend, path, threads, inputs (.npy of N x 64 x 64 x 3 float32), batches, modes,
            options -> engine, heads, import_s, load_s, first_ms {mode: {batch: ms}}, info
``warmup``  mode, batch, n -> untimed calls
``time``    mode, batch, n -> ns: per-call times; overhead_ns: the same loop around an empty call
``stats``   -> peak RSS, whether TensorFlow is in sys.modules
``pipeline_load`` photos, threads -> faces per photo (YuNet + the crops of ``ssrconv predict``)
``pipeline`` mode, photo, n -> detect_ns, crop_ns, model_ns per photo (and in_page_ms)
``exit``

A browser runtime's in-page time (performance.now around session.run) is read after each timed
call, outside the timed region: ``in_page_ms`` beside ``ns``.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import signal
import sys
import time

import numpy as np

from ssrconv.benchmarks.kinds import FAKE, GEMM, resolve, row_kind

MAX_DISTINCT_BATCHES = 8  # pre-made inputs cycled through, so no call reuses the previous array
MIN_CALLS = 2  # a block cut short by its time budget still times at least this many calls


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def make_batches(pool: np.ndarray, batch: int) -> list[np.ndarray]:
    """Distinct contiguous float32 batches of ``batch`` faces drawn in order from ``pool``
    (wrapping around), made before timing so no copy is timed."""
    count = max(1, min(MAX_DISTINCT_BATCHES, len(pool) // batch))
    return [np.ascontiguousarray(pool[(i * batch + np.arange(batch)) % len(pool)], np.float32)
            for i in range(count)]


def time_calls(fn, batches: list[np.ndarray], n: int, budget_s: float | None = None,
               min_calls: int = MIN_CALLS, after=None) -> list[int]:
    """Up to ``n`` calls of ``fn`` cycling over ``batches``, each timed alone with
    perf_counter_ns; stops early once ``budget_s`` seconds are spent and ``min_calls`` are done
    (so a 200 ms Keras call does not hold the whole round hostage). ``after`` (no arguments)
    is called after each call, outside the timed region (e.g. to read a page's own timer).

    The garbage collector is paused inside the block (as timeit does) so a collection
    triggered by one backend's garbage does not land in a random call; it runs before.
    """
    clock = time.perf_counter_ns
    count = len(batches)
    out = []
    deadline = None if budget_s is None else clock() + int(budget_s * 1e9)
    gc.collect()
    gc.disable()
    try:
        for i in range(n):
            x = batches[i % count]
            start = clock()
            fn(x)
            end = clock()
            out.append(end - start)
            if after is not None:
                after()
            if deadline is not None and end > deadline and len(out) >= min_calls:
                break
    finally:
        gc.enable()
    return out


class _Noop:
    """An empty runtime: timing its ``run`` the same way measures the harness's own cost."""

    def run(self, batch):
        return {}


class FakeRuntime:
    """A stand-in backend for tests of the harness (no real library): busy-waits ``delay_us``
    per call, and can kill its own process with a signal at ``crash`` ("load" or "time")."""

    backend = engine = FAKE.backend

    def __init__(self, delay_us: float = 0.0, crash: str | None = None,
                 crash_signal: str = "SIGSEGV", heads=("age", "p_male")):
        self.delay_ns = int(delay_us * 1000)
        self.crash = crash
        self.crash_signal = crash_signal
        self.heads = tuple(heads)
        if crash == "load":
            self.die()

    def die(self):
        os.kill(os.getpid(), getattr(signal, self.crash_signal))
        time.sleep(5)  # the signal is asynchronous: never answer meanwhile

    def run(self, batch):
        end = time.perf_counter_ns() + self.delay_ns
        while time.perf_counter_ns() < end:
            pass
        return {h: np.zeros(len(batch), np.float32) for h in self.heads}


class Gemm:
    """numpy float32 square matrix multiply: the machine's reference compute rate."""

    backend = GEMM.backend
    engine = "numpy-float32-gemm"
    heads = ()

    def __init__(self, size: int = 512):
        rng = np.random.default_rng(0)
        self.size = size
        self.a = rng.standard_normal((size, size), dtype=np.float32)
        self.b = rng.standard_normal((size, size), dtype=np.float32)
        self.c = np.empty((size, size), np.float32)

    def run(self, batch):
        np.matmul(self.a, self.b, out=self.c)
        return self.c


def _import_backend(backend: str, threads: int | None, engine: str | None = None) -> dict:
    """Import the library of the engine that runs the row (timed separately from loading the
    model): the format table's ``needs`` of ``engine`` (default: the format's first engine), or
    TensorFlow for a row kind that runs on it (:mod:`ssrconv.benchmarks.kinds`); set threads
    where they are process settings rather than load options. Returns what was set."""
    import importlib

    from ssrconv.benchmarks.kinds import row_kind
    from ssrconv.targets import FORMATS, get_engine

    info = {}
    kind = row_kind(backend)
    if kind is not None and kind.tensorflow:
        from ssrconv._imports import tensorflow

        tf = tensorflow(f"benchmarking the {kind.backend} reference")
        if threads:
            try:  # must happen before TensorFlow's runtime starts; the env vars cover it too
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError as err:
                info["thread_setting_error"] = str(err)
        info["tf_intra_op_threads"] = tf.config.threading.get_intra_op_parallelism_threads()
        info["tf_inter_op_threads"] = tf.config.threading.get_inter_op_parallelism_threads()
    elif backend in FORMATS:
        from ssrconv._extras import check

        chosen = get_engine(engine) if engine else FORMATS[backend].engine
        check(chosen.needs, chosen.extra or "all", f"engine {chosen.name}")
        for module in chosen.needs:
            importlib.import_module(module)
    return info  # other row kinds (the numpy reference) need only numpy, imported already


def keras_info(runtime) -> dict:
    """The Keras reference's weights files and the rebuilt model's parameters and multiply-adds
    per head (the ``describe`` of its row kind)."""
    from ssrconv.reference.model import count_macs, count_params

    model = runtime.reference.model
    heads = max(len(runtime.heads), 1)
    return {"weights_files": [str(w.path) for w in runtime.reference.weights.values()],
            "params_per_head": count_params(model) // heads,
            "macs_per_head": count_macs(model) // heads}


def numpy_info(runtime) -> dict:
    """The numpy reference's weights files, parameters and multiply-adds per head."""
    from ssrconv.reference.numpy_engine import count_macs

    heads = max(len(runtime.heads), 1)
    return {"weights_files": [str(w.path) for w in runtime.weights.values()],
            "params_per_head": sum(runtime.params.values()) // heads,
            "macs_per_head": count_macs("age")}


def _blas_limit(threads: int) -> dict:
    """Cap BLAS threads with threadpoolctl when it is installed (the harness also starts the
    GEMM worker with OPENBLAS_NUM_THREADS etc. set, which works without it)."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return {"threadpoolctl": None}
    limiter = threadpool_limits(limits=threads, user_api="blas")
    return {"threadpoolctl": [{k: p.get(k) for k in ("internal_api", "num_threads", "version",
                                                      "architecture")}
                              for p in threadpool_info()], "_limiter": limiter}


class Worker:
    """The state of one worker: its runtime, its pre-made batches, its modes."""

    def __init__(self):
        self.rss_start = peak_rss_bytes()
        self.runtime = None
        self.batches: dict[int, list[np.ndarray]] = {}
        self.calls: dict[str, object] = {}
        self.predictor = None  # the end-to-end path (pipeline_load): detector + crops + runtime
        self.photos: list[np.ndarray] = []
        self._keep = []

    def handle(self, request: dict) -> dict:
        command = request.get("cmd")
        handler = getattr(self, f"cmd_{command}", None)
        if handler is None:
            raise ValueError(f"unknown command {command!r}")
        return handler(request)

    def cmd_load(self, req: dict) -> dict:
        backend = req["backend"]
        threads = req.get("threads")
        options = dict(req.get("options") or {})
        info: dict = {}
        started = time.perf_counter()
        kind = row_kind(backend)
        if kind is not None and kind.builds is not None:
            # Built here from its options: no library to import, no file to load.
            if kind.blas_threads is not None:
                limits = _blas_limit(threads or 1)
                self._keep.append(limits.pop("_limiter", None))
                info.update(limits)
            runtime = resolve(kind.builds)(**options)
            import_s = 0.0
            load_s = time.perf_counter() - started
        else:
            info.update(_import_backend(backend, threads, options.get("engine")))
            import_s = time.perf_counter() - started
            from ssrconv.loading import load_runtime

            started = time.perf_counter()
            runtime = load_runtime(req.get("path"), backend=backend, num_threads=threads, **options)
            load_s = time.perf_counter() - started
        self.runtime = runtime
        if getattr(runtime, "threads", None) is not None:
            info["runtime_threads"] = runtime.threads  # what the runtime was built with
        if kind is not None and kind.describe is not None:
            info.update(resolve(kind.describe)(runtime))
        pool = np.load(req["inputs"], allow_pickle=False) if req.get("inputs") else np.zeros((1, 64, 64, 3), np.float32)
        modes = req.get("modes") or ["run"]
        for mode in modes:
            if mode == "predict":
                self.calls[mode] = runtime.run_predict
            else:
                self.calls[mode] = runtime.run
        first_ms: dict = {}
        for batch in req.get("batches") or [1]:
            self.batches[batch] = make_batches(pool, batch)
        for mode in modes:
            first_ms[mode] = {}
            for batch in req.get("batches") or [1]:
                # The first call of each mode and batch size pays for tracing, allocation and
                # delegate preparation: reported on its own, never mixed into the timed runs.
                first_ms[mode][str(batch)] = time_calls(self.calls[mode], self.batches[batch][:1], 1)[0] / 1e6
        return {"engine": getattr(runtime, "engine", backend), "heads": list(getattr(runtime, "heads", ())),
                "import_s": import_s, "load_s": load_s, "first_ms": first_ms, "info": info,
                "pid": os.getpid(), "inputs": int(len(pool))}

    def _fn(self, req: dict):
        mode = req.get("mode", "run")
        if mode not in self.calls:
            raise ValueError(f"mode {mode!r} was not loaded")
        batch = int(req["batch"])
        if batch not in self.batches:
            raise ValueError(f"batch {batch} was not prepared at load")
        return self.calls[mode], self.batches[batch]

    def cmd_warmup(self, req: dict) -> dict:
        fn, batches = self._fn(req)
        time_calls(fn, batches, int(req["n"]), req.get("budget_s"))
        return {}

    def _in_page_probe(self):
        """(after-callback, list it fills) reading a browser runtime's in-page time of the call
        just made; (None, None) for runtimes that have no page. The runtime's running total is
        read, not its last run(): a fixed-batch file is fed in several run() calls per call."""
        if not hasattr(self.runtime, "browser_ms_total"):
            return None, None
        in_page: list[float] = []
        seen = [self.runtime.browser_ms_total]

        def after():
            total = self.runtime.browser_ms_total
            in_page.append(total - seen[0])
            seen[0] = total

        return after, in_page

    def cmd_time(self, req: dict) -> dict:
        fn, batches = self._fn(req)
        n = int(req["n"])
        # The test stand-in's crash point (duck-typed: the worker runs as __main__, the table
        # builds ssrconv.benchmarks.worker's class).
        if getattr(self.runtime, "crash", None) == "time":
            self.runtime.die()
        after, in_page = self._in_page_probe()
        ns = time_calls(fn, batches, n, req.get("budget_s"), after=after)
        overhead = time_calls(_Noop().run, batches, len(ns))
        reply = {"ns": ns, "overhead_ns": overhead}
        if in_page is not None:
            reply["in_page_ms"] = in_page
        return reply

    def cmd_pipeline_load(self, req: dict) -> dict:
        """Read the sample photos and build the detector + crop path of ``ssrconv predict``
        (:class:`ssrconv.predict.Predictor`, YuNet) around this worker's runtime."""
        import cv2

        from ssrconv.detect import make_detector
        from ssrconv.predict import Predictor
        from ssrconv.reference.preprocess import read_image

        if req.get("threads"):
            cv2.setNumThreads(int(req["threads"]))  # YuNet on the same thread budget as the model
        self.predictor = Predictor(self.runtime, make_detector("yunet"))
        self.photos = [read_image(p) for p in req["photos"]]
        faces = [len(self.predictor.crop(img, self.predictor.find(img))[0]) for img in self.photos]
        return {"faces": faces, "shapes": [list(img.shape[:2]) for img in self.photos]}

    def cmd_pipeline(self, req: dict) -> dict:
        """``n`` timed passes of one photo through detect, crop and the model (this row's mode),
        each step timed alone; the garbage collector paused as in :func:`time_calls`."""
        mode = req.get("mode", "run")
        if mode not in self.calls or self.predictor is None:
            raise ValueError(f"mode {mode!r} or the pipeline was not loaded")
        fn = self.calls[mode]
        image = self.photos[int(req["photo"])]
        predictor, clock = self.predictor, time.perf_counter_ns
        after, in_page = self._in_page_probe()
        budget = req.get("budget_s")
        deadline = None if budget is None else clock() + int(budget * 1e9)
        out: dict[str, list] = {"detect_ns": [], "crop_ns": [], "model_ns": [], "faces": []}
        gc.collect()
        gc.disable()
        try:
            for _ in range(int(req["n"])):
                t0 = clock()
                found = predictor.find(image)
                t1 = clock()
                records, batch = predictor.crop(image, found)
                t2 = clock()
                if batch is not None:
                    fn(batch)
                t3 = clock()
                if after is not None and batch is not None:
                    after()
                for key, value in (("detect_ns", t1 - t0), ("crop_ns", t2 - t1),
                                   ("model_ns", t3 - t2), ("faces", len(records))):
                    out[key].append(value)
                if deadline is not None and t3 > deadline and len(out["faces"]) >= MIN_CALLS:
                    break
        finally:
            gc.enable()
        if in_page is not None:
            out["in_page_ms"] = in_page
        return out

    def cmd_stats(self, req: dict) -> dict:
        return {"peak_rss_bytes": peak_rss_bytes(), "rss_before_load_bytes": self.rss_start,
                "tensorflow_imported": "tensorflow" in sys.modules,
                "keras_imported": "keras" in sys.modules,
                "onnxruntime_imported": "onnxruntime" in sys.modules}

    def cmd_exit(self, req: dict) -> dict:
        return {}


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    message = text[0] if text else ""
    from ssrconv.errors import SsrconvError

    if isinstance(err, SsrconvError):
        return message
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def main() -> None:
    """Serve requests from stdin until ``exit`` or end of input (the harness went away)."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter on fd 1 must not corrupt the protocol
    sys.stdout = sys.stderr
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            reply = {"ok": True, **worker.handle(request)}
        except Exception as err:  # reported to the harness as this backend's failure
            reply = {"ok": False, "error": _one_line(err)}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()
        if request.get("cmd") == "exit" or (request.get("cmd") == "load" and not reply["ok"]):
            break


if __name__ == "__main__":
    main()

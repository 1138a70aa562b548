"""Process orchestration: one worker process per backend, timed side by side, interleaved.

The machine this runs on is small and shared, so its speed drifts from second to second. Timing
backend A for a minute and then backend B would fold that drift into the A/B ratio. Instead
every backend is loaded first (each in its own worker process), then the timed calls are
handed out in rounds: in each round every worker in turn (and a single-thread numpy GEMM, the
machine's reference rate) runs a short block of calls. All rows see the same noise, and the
ratios between them are measured, not inferred.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ssrconv.atomic import scratch_dir
from ssrconv.errors import SsrconvError

GEMM_KEY = "gemm"
_WORKER_NUMBERS = itertools.count(1)


@dataclass(frozen=True)
class Settings:
    """What to measure and how hard. ``runs`` timed calls per row and batch size are split into
    ``rounds`` interleaved blocks; ``warmup`` untimed calls per row and batch size come first."""

    threads: int = 1
    batch: int = 8
    runs: int = 200
    warmup: int = 20
    rounds: int = 10
    gemm_size: int = 512
    gemm_calls: int = 5  # GEMMs per round: ~3 ms each at 95 GFLOP/s
    block_seconds: float = 1.0  # a block stops early past this (min 2 calls): slow rows get fewer
    faces_dir: str | None = None
    # Passes of each sample photo through YuNet + crop + model per row (0: no pipeline rows),
    # split over the same interleaved rounds.
    pipeline_runs: int = 20
    pipeline_warmup: int = 2
    input_count: int = 64
    seed: int = 0
    load_timeout: float = 600.0
    call_timeout: float = 300.0

    def __post_init__(self):
        for name in ("threads", "batch", "runs", "rounds", "input_count", "gemm_size"):
            if getattr(self, name) < 1:
                raise SsrconvError(f"--{name.replace('_', '-')} must be at least 1, got "
                                   f"{getattr(self, name)}")
        if not self.block_seconds > 0:
            raise SsrconvError(f"--block-seconds must be positive, got {self.block_seconds}")
        if self.warmup < 0:
            raise SsrconvError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.pipeline_runs < 0:
            raise SsrconvError(f"--pipeline-runs must be 0 or more, got {self.pipeline_runs}")

    @property
    def batches(self) -> list[int]:
        """Batch sizes measured: 1 always, and the chosen batch."""
        return sorted({1, self.batch})

    @property
    def block(self) -> int:
        """Timed calls per row in one round."""
        return math.ceil(self.runs / self.rounds_used)

    @property
    def rounds_used(self) -> int:
        return min(self.rounds, self.runs)

    @property
    def pipeline_rounds(self) -> int:
        return min(self.rounds, self.pipeline_runs)

    @property
    def pipeline_block(self) -> int:
        """Timed passes of each photo per row in one round."""
        return math.ceil(self.pipeline_runs / self.pipeline_rounds) if self.pipeline_runs else 0

    def as_dict(self) -> dict:
        return {"threads": self.threads, "batch": self.batch, "batches": self.batches,
                "runs": self.block * self.rounds_used, "runs_requested": self.runs,
                "warmup": self.warmup, "rounds": self.rounds_used, "block": self.block,
                "block_seconds": self.block_seconds, "gemm_size": self.gemm_size,
                "gemm_calls_per_round": self.gemm_calls,
                "pipeline_runs": self.pipeline_block * self.pipeline_rounds,
                "pipeline_rounds": self.pipeline_rounds, "pipeline_warmup": self.pipeline_warmup}


@dataclass
class Entry:
    """One row of the report: an artifact (or the Keras reference in one of its two modes),
    what is known before it runs, and what was measured."""

    name: str
    backend: str
    target: str
    precision: str
    path: str | None = None
    mode: str = "run"  # run | predict (Keras model.predict)
    options: dict = field(default_factory=dict)
    worker_key: str = ""
    timed: bool = True
    note: str | None = None
    heads: list[str] = field(default_factory=list)
    graph: str | None = None  # the export graph of its manifest ("fast", "original"; None: unknown)
    # Its manifest's microcontroller/NPU figures ("mcu": TFLite Micro arena and flash bytes;
    # "ethos_u": Vela's estimates per accelerator), reported in their own table.
    device: dict = field(default_factory=dict)
    # measured
    status: str = "pending"  # ok | failed | not-timed
    error: str | None = None
    engine: str | None = None
    import_s: float | None = None
    load_s: float | None = None
    first_ms: dict[int, float] = field(default_factory=dict)
    times_ns: dict[int, list[int]] = field(default_factory=dict)
    overhead_ns: dict[int, list[int]] = field(default_factory=dict)
    in_page_ms: dict[int, list[float]] = field(default_factory=dict)  # browser engines
    # photo file name -> {"faces": [...], "detect_ns": [...], "crop_ns": [...], "model_ns": [...]}
    pipeline: dict[str, dict] = field(default_factory=dict)
    pipeline_error: str | None = None
    process: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    size: dict | None = None

    def __post_init__(self):
        self.worker_key = self.worker_key or self.name


def keras_entries(predict: bool = True, weights: str | os.PathLike | None = None) -> list[Entry]:
    """The Keras reference: model call, and model.predict (what most users time), sharing one
    worker process (same model; predict adds only Keras' per-call machinery). ``weights``: one
    weights file (its head read from its layers) instead of the default age-gender pair."""
    options, heads, label = {"task": "age-gender"}, ["age", "p_male"], "keras"
    if weights is not None:
        from ssrconv.assets import resolve
        from ssrconv.reference.weights import read_h5_weights

        task = read_h5_weights(resolve(weights).path).task
        options = {"task": task, f"{task}_weights": str(weights)}
        heads, label = (["age"] if task == "age" else ["p_male"]), f"keras {Path(weights).name}"
    rows = [Entry(f"{label} (model call)", "keras", "keras-fp32", "fp32", mode="run",
                  options=options, worker_key="keras", heads=heads)]
    if predict:
        rows.append(Entry(f"{label} (model.predict)", "keras", "keras-fp32", "fp32",
                          mode="predict", options=options, worker_key="keras", heads=heads))
    return rows


def reference_entries(engine: str = "auto", predict: bool = True,
                      weights: str | os.PathLike | None = None) -> list[Entry]:
    """The reference rows on ``engine`` (:func:`ssrconv.reference.reference_engine`: "auto" is
    Keras when TensorFlow is installed, else the numpy engine): :func:`keras_entries`, or one
    row of the numpy reference (model call; it has no model.predict)."""
    from ssrconv.reference import reference_engine

    chosen = reference_engine(engine)
    if chosen == "keras":
        return keras_entries(predict=predict, weights=weights)
    options, heads, label = {"task": "age-gender"}, ["age", "p_male"], f"reference {chosen}"
    if weights is not None:
        from ssrconv.assets import resolve
        from ssrconv.reference.weights import read_h5_weights

        task = read_h5_weights(resolve(weights).path).task
        options = {"task": task, f"{task}_weights": str(weights)}
        heads, label = (["age"] if task == "age" else ["p_male"]), f"{label} {Path(weights).name}"
    return [Entry(label, "reference", f"reference-{chosen}", "fp32", mode="run",
                  options={**options, "engine": chosen}, heads=heads)]


def artifact_entry(artifact, engine: str | None = None) -> Entry:
    """The row of one opened, verified artifact (:func:`ssrconv.artifacts.open_artifact`) on
    ``engine`` (None: its format's default; the row is then named by the file alone)."""
    from ssrconv.targets import get_engine

    heads = list(artifact.heads or ())
    name = artifact.label if engine is None else f"{artifact.label} on {engine}"
    entry = Entry(name, artifact.format.family, artifact.target.key, artifact.precision,
                  path=str(artifact.path), heads=heads,
                  options={} if engine is None else {"engine": engine},
                  graph=(artifact.manifest or {}).get("graph"),
                  device={key: (artifact.manifest or {})[key] for key in ("mcu", "ethos_u")
                          if (artifact.manifest or {}).get(key)})
    chosen = artifact.format.engine if engine is None else get_engine(engine)
    reason = chosen.why_not_timed()
    if reason is not None:
        entry.timed = False
        entry.note = reason
    return entry


def _runs_in_browser(entry: Entry) -> bool:
    from ssrconv.targets import FORMATS, get_engine

    if entry.backend not in FORMATS:
        return False
    name = entry.options.get("engine") or FORMATS[entry.backend].engines[0]
    return get_engine(name).in_browser


def add_native_rows(entries: list[Entry]) -> list[Entry]:
    """``entries`` plus, for each timed browser row whose file has no timed native row, the
    native row its in-page time is shown beside: the file on its format's default engine, or
    for a ``.web`` folder the ``.onnx`` it carries (on onnxruntime) unless the export's own
    ``.onnx`` of that precision is already a row (the folder carries the same graph)."""
    from ssrconv.artifacts import open_artifact
    from ssrconv.targets import FORMATS

    out = list(entries)
    native = [e for e in entries if e.timed and e.path and not _runs_in_browser(e)]
    for entry in entries:
        if not (entry.timed and entry.path and _runs_in_browser(entry)):
            continue
        path = Path(entry.path)
        if any(Path(e.path) == path for e in native):
            continue
        inner_family = FORMATS[entry.backend].inner_family
        if inner_family is not None:
            if any(e.backend == inner_family and Path(e.path).parent == path.parent
                   and e.precision == entry.precision for e in native):
                continue
            inner = open_artifact(FORMATS[entry.backend].inner_artifact(path))
            row = artifact_entry(inner)
            row.name = row.worker_key = f"{path.name}/{inner.path.name}"
        else:
            row = artifact_entry(open_artifact(path))
            if _runs_in_browser(row):
                continue  # no native engine reads this format
        if not any(e.name == row.name for e in out):
            out.append(row)
            native.append(row)
    return out


def engine_entries(artifact, engine: str | None = None, engines=()) -> list[Entry]:
    """The rows of ``artifact``: on ``engine`` (None: its default), or with ``engines``
    ("all" or names) one row per engine of the format table that reads it, as ``ssrconv parity
    --engines`` pairs them; a pair that cannot run here (not installed, refused by design) is a
    row with the reason, not timed."""
    from ssrconv.parity import engines_for, not_run_reason

    if not engines:
        return [artifact_entry(artifact, engine)]
    rows = []
    for name in engines_for(artifact, engine, engines):
        entry = artifact_entry(artifact, name)
        why = not_run_reason(artifact, name)
        if why is not None:
            entry.timed, entry.note = False, f"not run: {why}"
        rows.append(entry)
    return rows


class WorkerFailed(Exception):
    """A worker answered with an error, died, or did not answer in time."""


class WorkerHandle:
    """One worker process and its JSON-lines channel, with timeouts and post-mortems."""

    def __init__(self, label: str, env: dict[str, str], log_dir: Path):
        self.label = label
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)
        self.stderr_path = log_dir / f"worker-{next(_WORKER_NUMBERS)}-{safe}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "ssrconv.benchmarks.worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=env)
        self._buffer = b""
        self.dead: str | None = None

    def request(self, payload: dict, timeout: float) -> dict:
        """Send one command and wait for its answer; WorkerFailed on error, death or timeout."""
        if self.dead:
            raise WorkerFailed(self.dead)
        try:
            self.proc.stdin.write((json.dumps(payload) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerFailed(self._fail(self._death())) from None
        line = self._readline(timeout)
        try:
            reply = json.loads(line)
        except ValueError:
            raise WorkerFailed(self._fail(f"unreadable answer {line[:80]!r}")) from None
        if not reply.get("ok"):
            raise WorkerFailed(self._fail(reply.get("error") or "unknown error"))
        return reply

    def _readline(self, timeout: float) -> str:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerFailed(self._fail(f"no answer within {timeout:.0f} s (worker killed)"))
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise WorkerFailed(self._fail(self._death()))
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def _fail(self, message: str) -> str:
        self.dead = message
        return message

    def _death(self) -> str:
        """Why the worker went away: its exit signal or code, and its last stderr line."""
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.wait()
        if code < 0:
            try:
                why = f"worker killed by signal {signal.Signals(-code).name}"
            except ValueError:
                why = f"worker killed by signal {-code}"
        else:
            why = f"worker exited with code {code}"
        last = self.last_stderr_line()
        return f"{why} ({last})" if last else why

    def last_stderr_line(self) -> str | None:
        """The last non-empty line the worker wrote to stderr (e.g. "free(): double free")."""
        try:
            self._stderr.flush()
            lines = [ln.strip() for ln in self.stderr_path.read_text(errors="replace").splitlines()]
        except OSError:
            return None
        lines = [ln for ln in lines if ln]
        return lines[-1][:200] if lines else None

    def close(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit; kill it if it does not."""
        if self.proc.poll() is None and not self.dead:
            try:
                self.request({"cmd": "exit"}, timeout)
            except WorkerFailed:
                pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._cleanup()

    def kill(self) -> None:
        """Kill this worker (only this process: it was started by us, by its pid)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _cleanup(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._stderr.close()


def prepare_inputs(settings: Settings, directory: Path) -> tuple[Path, str]:
    """Save the inputs every worker times on (identical for all) as .npy; returns the path and
    a sentence saying what they are: real faces when a faces directory is given, else seeded
    uniform noise in 0..255."""
    import numpy as np

    if settings.faces_dir:
        from ssrconv.reference.preprocess import load_faces

        faces = load_faces(settings.faces_dir, limit=settings.input_count)
        inputs = faces.inputs.astype(np.float32)
        description = (f"{len(inputs)} real faces from {settings.faces_dir} (ssrconv "
                       "preprocessing: 64x64 BGR float32 0..255)")
    else:
        rng = np.random.default_rng(settings.seed)
        inputs = rng.uniform(0, 255, (settings.input_count, 64, 64, 3)).astype(np.float32)
        description = (f"{len(inputs)} seeded random inputs (uniform 0..255, seed {settings.seed});"
                       " no faces directory given (SSRCONV_FACES / --faces)")
    path = directory / "inputs.npy"
    np.save(path, inputs)
    return path, description


def _worker_env(backend: str, threads: int) -> dict[str, str]:
    """The environment of one worker: the parent's, plus thread caps where a library reads them
    from the environment. OPENBLAS_CORETYPE and the like are passed through untouched."""
    import ssrconv

    env = dict(os.environ)
    src = str(Path(ssrconv.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    if backend == "keras":
        # Read by TensorFlow when its runtime starts; the worker also sets tf.config.threading.
        env["TF_NUM_INTRAOP_THREADS"] = str(threads)
        env["TF_NUM_INTEROP_THREADS"] = "1"
    # BLAS threads where BLAS is the backend: the numpy reference's matrix products get the
    # row's threads; the GEMM measuring the machine's single-core rate is pinned to one.
    blas_threads = {"reference": threads, GEMM_KEY: 1}.get(backend)
    if blas_threads is not None:
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(blas_threads)
    return env


def _size_paths(entry: Entry) -> list[str]:
    if entry.path:
        return [entry.path]
    files = entry.info.get("weights_files")
    if files:
        return files
    if entry.backend not in ("keras", "reference"):
        return []
    from ssrconv.assets import DEFAULT_AGE_WEIGHTS, DEFAULT_GENDER_WEIGHTS, locate

    found = [locate(name)[0] for name in (DEFAULT_AGE_WEIGHTS, DEFAULT_GENDER_WEIGHTS)]
    return [str(p) for p in found if p is not None]


def measure_sizes(entries: list[Entry]) -> None:
    """Fill each row's size block (a missing file is reported, not fatal)."""
    from ssrconv.benchmarks import stats
    from ssrconv.benchmarks.sizes import size_info

    for entry in entries:
        heads = len(entry.heads) or 1
        params = entry.info.get("params_per_head", stats.PARAMS_PER_HEAD)
        try:
            paths = _size_paths(entry)
            entry.size = size_info(paths, entry.precision, heads, params) if paths else None
        except OSError as err:
            entry.size = {"error": f"cannot read: {err.strerror or err}"}


class Bench:
    """Runs a list of rows: start workers, load, warm up, interleave timed rounds, collect."""

    def __init__(self, entries: list[Entry], settings: Settings,
                 progress: Callable[[str], None] | None = None):
        self.entries = entries
        self.settings = settings
        self.say = progress or (lambda message: None)
        self.workers: dict[str, WorkerHandle] = {}
        self.gemm_ns: list[int] = []
        self.gemm_error: str | None = None
        self.gemm_info: dict = {}
        self.inputs_description = ""
        self.photos: list[dict] = []  # the pipeline's sample photos: name, path, faces
        self.pipeline_error: str | None = None
        self._bar = None

    def groups(self) -> dict[str, list[Entry]]:
        """Timed rows by worker process (Keras call and predict share one)."""
        out: dict[str, list[Entry]] = {}
        for entry in self.entries:
            if entry.timed:
                out.setdefault(entry.worker_key, []).append(entry)
            else:
                entry.status = "not-timed"
        return out

    def _note(self, message: str) -> None:
        """A progress line on stderr, printed above the bar (when one is shown)."""
        if self._bar is not None:
            self._bar.clear()
        self.say(message)
        if self._bar is not None:
            self._bar.refresh()

    def _step(self, message: str | None) -> None:
        """One unit of the bar done; ``message`` is printed only where no bar is drawn (logs,
        pipes), so a terminal shows the bar and a log keeps its one line per round."""
        if self._bar is not None and not self._bar.disable:
            self._bar.update(1)
        elif message:
            self.say(message)

    def run(self) -> None:
        """Measure everything; failures are recorded on their rows, never raised."""
        from ssrconv.progress import bar

        s = self.settings
        groups = self.groups()
        steps = (len(groups) + len(s.batches) * s.rounds_used
                 + (s.pipeline_rounds if s.pipeline_runs else 0))
        with scratch_dir("ssrconv-bench-") as tmp, \
                bar(total=steps, desc="bench", unit="step") as shown:
            self._bar = shown
            inputs, self.inputs_description = prepare_inputs(s, Path(tmp))
            self._note(f"inputs: {self.inputs_description}")
            try:
                self._start_gemm(Path(tmp))
                for number, (key, rows) in enumerate(groups.items(), start=1):
                    self._load(key, rows, inputs, Path(tmp), f"[{number}/{len(groups)}]")
                    self._step(None)
                for batch in s.batches:
                    self._time_batch(batch)
                # Peak RSS before the pipeline: YuNet's memory is not the backend's.
                self._collect_stats(groups)
                if s.pipeline_runs:
                    self._time_pipeline(groups)
            finally:
                for handle in self.workers.values():
                    handle.close()
                self._bar = None
        for entry in self.entries:
            if entry.timed and entry.status == "running":
                entry.status = "ok"
        for entry in self.entries:
            if entry.status == "failed":
                entry.pipeline.clear()  # a failed row has no measurement, end to end either
        for entry in self.entries:
            if not entry.timed:
                self.say(f"{entry.name}: {entry.note}")

    def _start_gemm(self, tmp: Path) -> None:
        s = self.settings
        handle = WorkerHandle(GEMM_KEY, _worker_env(GEMM_KEY, 1), tmp)
        self.workers[GEMM_KEY] = handle
        try:
            reply = handle.request({"cmd": "load", "backend": GEMM_KEY, "threads": 1,
                                    "options": {"size": s.gemm_size}, "modes": ["run"],
                                    "batches": [1]}, s.load_timeout)
            self.gemm_info = reply.get("info", {})
            self._note(f"reference: numpy float32 GEMM {s.gemm_size}x{s.gemm_size}, 1 thread")
        except WorkerFailed as err:
            self.gemm_error = str(err)
            self._note(f"reference GEMM failed: {err}")

    def _load(self, key: str, rows: list[Entry], inputs: Path, tmp: Path, label: str) -> None:
        s = self.settings
        first = rows[0]
        self._note(f"{label} {key}: starting worker ({first.backend}) and loading")
        handle = WorkerHandle(key, _worker_env(first.backend, s.threads), tmp)
        self.workers[key] = handle
        try:
            reply = handle.request({"cmd": "load", "backend": first.backend, "path": first.path,
                                    "threads": s.threads, "inputs": str(inputs),
                                    "batches": s.batches, "modes": [r.mode for r in rows],
                                    "options": first.options}, s.load_timeout)
        except WorkerFailed as err:
            for row in rows:
                self._mark_failed(row, f"load: {err}")
            self._note(f"      FAILED: {err}")
            return
        for row in rows:
            row.status = "running"
            row.engine = reply["engine"] + ("" if row.mode == "run" else f" ({row.mode})")
            row.heads = reply.get("heads") or row.heads
            row.import_s, row.load_s = reply["import_s"], reply["load_s"]
            row.first_ms = {int(b): ms for b, ms in reply["first_ms"][row.mode].items()}
            row.info = dict(reply.get("info", {}))
            row.process["pid"] = reply.get("pid")
            firsts = ", ".join(f"batch {b} {ms:.1f} ms" for b, ms in row.first_ms.items())
            self._note(f"      {row.name}: {row.engine}; import {row.import_s:.2f} s, load "
                     f"{row.load_s:.3f} s, first call {firsts}")

    def _mark_failed(self, entry: Entry, message: str) -> None:
        entry.status = "failed"
        entry.error = message
        entry.times_ns.clear()  # a partial run is not a measurement
        entry.overhead_ns.clear()

    def _live(self) -> list[Entry]:
        return [e for e in self.entries if e.timed and e.status == "running"]

    def _call(self, entry: Entry, payload: dict) -> dict | None:
        """One request for ``entry``; on failure every row of that worker is marked failed."""
        handle = self.workers[entry.worker_key]
        try:
            return handle.request(payload, self.settings.call_timeout)
        except WorkerFailed as err:
            for row in self.entries:
                if row.worker_key == entry.worker_key and row.status == "running":
                    self._mark_failed(row, str(err))
                    self._note(f"      {row.name} FAILED: {err}")
            return None

    def _time_batch(self, batch: int) -> None:
        s = self.settings
        live = self._live()
        if not live:
            return
        self._note(f"batch {batch}: warm-up {s.warmup} calls each, then {s.rounds_used} rounds of "
                 f"{s.block} calls per backend, interleaved")
        if s.warmup:
            for entry in live:
                self._call(entry, {"cmd": "warmup", "mode": entry.mode, "batch": batch,
                                   "n": s.warmup, "budget_s": s.block_seconds})
        for number in range(s.rounds_used):
            live = self._live()
            if not live:
                break
            # Rotate who goes first, so no row always runs right after the same neighbour.
            shift = number % len(live)
            for entry in live[shift:] + live[:shift]:
                if entry.status != "running":
                    continue
                reply = self._call(entry, {"cmd": "time", "mode": entry.mode, "batch": batch,
                                           "n": s.block, "budget_s": s.block_seconds})
                if reply is not None:
                    entry.times_ns.setdefault(batch, []).extend(reply["ns"])
                    entry.overhead_ns.setdefault(batch, []).extend(reply["overhead_ns"])
                    if "in_page_ms" in reply:
                        entry.in_page_ms.setdefault(batch, []).extend(reply["in_page_ms"])
            self._time_gemm()
            self._step(f"batch {batch}: round {number + 1}/{s.rounds_used} done")

    def _time_pipeline(self, groups: dict[str, list[Entry]]) -> None:
        """The end-to-end rows: each sample photo through YuNet, the crops and the model, in
        every live worker, interleaved in rounds like the model calls. A failure here is the
        row's pipeline_error; its model-call timings stand."""
        from ssrconv.assets import SAMPLE_PHOTOS, sample_photos

        s = self.settings
        try:
            paths = sample_photos()
        except SsrconvError as err:
            self.pipeline_error = f"sample photos unavailable: {err}"
            self._note(f"pipeline: {self.pipeline_error}")
            return
        self.photos = [{"name": p.name, "asset": a, "path": str(p)}
                       for a, p in zip(SAMPLE_PHOTOS, paths)]
        ready: list[Entry] = []
        for key, rows in groups.items():
            live = [r for r in rows if r.status == "running"]
            if not live:
                continue
            try:
                reply = self.workers[key].request(
                    {"cmd": "pipeline_load", "photos": [str(p) for p in paths],
                     "threads": s.threads}, s.load_timeout)
            except WorkerFailed as err:
                for row in live:
                    row.pipeline_error = f"pipeline: {err}"
                self._note(f"      {key} pipeline FAILED: {err}")
                continue
            for photo, faces, shape in zip(self.photos, reply["faces"], reply["shapes"]):
                photo.setdefault("faces", faces)
                photo.setdefault("shape", shape)
            ready += live
        if not ready:
            return
        listed = ", ".join(f"{p['name']} ({p.get('faces', '?')} face"
                           f"{'' if p.get('faces') == 1 else 's'})" for p in self.photos)
        self._note(f"pipeline: {listed} through YuNet + crop + model: {s.pipeline_warmup} "
                   f"warm-up passes, then {s.pipeline_rounds} rounds of {s.pipeline_block} per "
                   "photo and row, interleaved")
        for entry in ready:
            for index in range(len(self.photos)):
                self._pipeline_call(entry, index, s.pipeline_warmup, keep=False)
        for number in range(s.pipeline_rounds):
            live = [e for e in ready if e.pipeline_error is None]
            if not live:
                break
            shift = number % len(live)
            for entry in live[shift:] + live[:shift]:
                for index in range(len(self.photos)):
                    self._pipeline_call(entry, index, s.pipeline_block)
            self._step(f"pipeline: round {number + 1}/{s.pipeline_rounds} done")

    def _pipeline_call(self, entry: Entry, photo: int, n: int, keep: bool = True) -> None:
        if n <= 0 or entry.pipeline_error is not None:
            return
        try:
            reply = self.workers[entry.worker_key].request(
                {"cmd": "pipeline", "mode": entry.mode, "photo": photo, "n": n,
                 "budget_s": self.settings.block_seconds}, self.settings.call_timeout)
        except WorkerFailed as err:
            for row in self.entries:
                if row.worker_key == entry.worker_key:
                    row.pipeline_error = f"pipeline: {err}"
            self._note(f"      {entry.name} pipeline FAILED: {err}")
            return
        if keep:
            got = entry.pipeline.setdefault(self.photos[photo]["name"], {})
            for key, values in reply.items():
                if key != "ok":
                    got.setdefault(key, []).extend(values)

    def _time_gemm(self) -> None:
        if self.gemm_error:
            return
        try:
            reply = self.workers[GEMM_KEY].request(
                {"cmd": "time", "mode": "run", "batch": 1, "n": self.settings.gemm_calls},
                self.settings.call_timeout)
            self.gemm_ns.extend(reply["ns"])
        except WorkerFailed as err:
            self.gemm_error = str(err)

    def _collect_stats(self, groups: dict[str, list[Entry]]) -> None:
        for key, rows in groups.items():
            handle = self.workers.get(key)
            if handle is None or handle.dead:
                continue
            try:
                reply = handle.request({"cmd": "stats"}, self.settings.call_timeout)
            except WorkerFailed as err:
                for row in rows:
                    if row.status == "running":
                        self._mark_failed(row, f"stats: {err}")
                continue
            shared = [r.name for r in rows] if len(rows) > 1 else []
            for row in rows:
                row.process.update({k: v for k, v in reply.items() if k != "ok"})
                if shared:
                    row.process["shared_with"] = [n for n in shared if n != row.name]


def run_bench(entries: list[Entry], settings: Settings,
              progress: Callable[[str], None] | None = None) -> dict:
    """Benchmark ``entries`` side by side and return the report (see report.build_report)."""
    from ssrconv.benchmarks.fingerprint import fingerprint
    from ssrconv.benchmarks.report import build_report

    say = progress or (lambda message: None)
    fp = fingerprint(settings.threads)
    bench = Bench(entries, settings, say)
    bench.run()
    measure_sizes(entries)
    return build_report(entries, bench.gemm_ns, settings, fp, bench.inputs_description,
                        gemm_error=bench.gemm_error, gemm_info=bench.gemm_info,
                        photos=bench.photos, pipeline_error=bench.pipeline_error)

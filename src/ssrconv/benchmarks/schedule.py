"""Process orchestration: one worker process per backend, timed side by side, interleaved.

The machine this runs on is small and shared, so its speed drifts from second to second. Timing
backend A for a minute and then backend B would fold that drift into the A/B ratio. Instead
every backend is loaded first (each in its own worker process), then the timed calls are
handed out in rounds: in each round every worker in turn (and a single-thread numpy GEMM, the
machine's reference rate) runs a short block of calls. All rows see the same noise, and the
ratios between them are measured, not inferred.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ssrconv.atomic import scratch_dir
from ssrconv.benchmarks.inputs import prepare_inputs
from ssrconv.benchmarks.kinds import GEMM
from ssrconv.benchmarks.plan import Entry
from ssrconv.benchmarks.settings import Settings
from ssrconv.benchmarks.workers import WorkerFailed, WorkerHandle, worker_env
from ssrconv.errors import SsrconvError

GEMM_KEY = GEMM.backend


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
        handle = WorkerHandle(GEMM_KEY, worker_env(GEMM_KEY, 1), tmp)
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
        handle = WorkerHandle(key, worker_env(first.backend, s.threads), tmp)
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
    from ssrconv.benchmarks.sizes import measure_sizes

    say = progress or (lambda message: None)
    fp = fingerprint(settings.threads)
    bench = Bench(entries, settings, say)
    bench.run()
    measure_sizes(entries)
    return build_report(entries, bench.gemm_ns, settings, fp, bench.inputs_description,
                        gemm_error=bench.gemm_error, gemm_info=bench.gemm_info,
                        photos=bench.photos, pipeline_error=bench.pipeline_error)

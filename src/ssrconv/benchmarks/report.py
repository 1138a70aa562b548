"""The benchmark report: built from raw measurements, rendered as a terminal table, Markdown,
JSON and a PNG chart, and written atomically.

:func:`build_report` is pure (rows with raw per-call times in, a JSON-ready dict out), so the
whole report can be checked on synthetic timings without running any backend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from ssrconv.benchmarks import stats
from ssrconv.benchmarks.fingerprint import one_line
from ssrconv.benchmarks.kinds import row_kind
from ssrconv.benchmarks.sizes import PAPER_MODEL_BYTES

SCHEMA = "ssrconv.bench/1"
PREDICT_ROW = "keras (model.predict)"
# SSR-Net's own issue #21 (github.com/shamangary/SSR-Net/issues/21): a user timed
# `model.predict(faces)` of the original demo (TYY_demo_mtcnn.py) on a CPU at 20-30 ms per call,
# face detection not included; the author answered that the detector is the slow part.
ISSUE_21_MS = (20, 30)
ISSUE_21_URL = "https://github.com/shamangary/SSR-Net/issues/21"


def _macs_per_head(entries) -> tuple[int, str]:
    for entry in entries:
        macs = entry.info.get("macs_per_head")
        if macs:
            return int(macs), f"counted on the rebuilt reference by the {entry.backend} worker"
    return stats.MACS_PER_FACE_PER_HEAD, "ssrconv's count of the reference (conv + dense layers)"


def _ms(values_ns) -> float:
    return stats.summarize(values_ns)["median"] / 1000.0


def pipeline_summary(raw: dict) -> dict:
    """One row's end-to-end numbers on one photo from its raw per-pass step times (ns): medians
    in ms of YuNet, the crops, the model and their per-pass sum, and each of them per face."""
    faces = list(raw.get("faces") or [])
    if not faces:
        return {"n": 0}
    totals = [d + c + m for d, c, m in zip(raw["detect_ns"], raw["crop_ns"], raw["model_ns"])]
    count = max(set(faces), key=faces.count)  # YuNet is deterministic: one count in practice
    out = {"n": len(faces), "faces": count, "faces_seen": sorted(set(faces)),
           "detect_ms": _ms(raw["detect_ns"]), "crop_ms": _ms(raw["crop_ns"]),
           "model_ms": _ms(raw["model_ns"]), "total_ms": _ms(totals),
           "total_min_ms": min(totals) / 1e6}
    out["per_face"] = {key: (out[key] / count if count else math.nan)
                       for key in ("detect_ms", "crop_ms", "model_ms", "total_ms")}
    if raw.get("in_page_ms"):
        out["in_page_model_ms"] = _ms([v * 1e6 for v in raw["in_page_ms"]])
    return out


def _original(entry, rows, target: str):
    """The original-graph row of ``target`` on ``entry``'s format and engine, or None: the
    baseline of "vs original fp32" (target ``<format>-fp32``, issue 13's targets) and of
    "vs original same target" (``entry.target``: what the fast graph gains for that file)."""
    for row in rows:
        if (row.graph == "original" and row.target == target
                and row.backend == entry.backend and row.engine == entry.engine):
            return row
    return None


def build_report(entries, gemm_ns, settings, fingerprint: dict, inputs: str,
                 gemm_error: str | None = None, gemm_info: dict | None = None,
                 photos: list | None = None, pipeline_error: str | None = None) -> dict:
    """The report of a run, from its rows (harness.Entry), the GEMM times and the settings;
    ``photos`` (name, asset, faces) and the rows' raw pipeline times give the end-to-end rows."""
    gemm = stats.gemm_gflops(settings.gemm_size, gemm_ns)
    gemm.update({"threads": 1, "error": gemm_error,
                 "blas_threads": (gemm_info or {}).get("threadpoolctl")})
    macs, macs_source = _macs_per_head(entries)
    ok = [e for e in entries if e.status == "ok"]
    latency: dict[str, dict] = {e.name: {} for e in ok}
    ratios: dict[str, dict] = {e.name: {} for e in ok}
    for batch in settings.batches:
        for e in ok:
            if e.times_ns.get(batch):
                latency[e.name][str(batch)] = stats.analyse_latency(
                    e.times_ns[batch], e.overhead_ns.get(batch, []), batch, len(e.heads) or 1,
                    gemm["median_gflops"], gemm["best_gflops"], macs)
                if e.in_page_ms.get(batch):  # a browser engine's own timer, inside the page
                    latency[e.name][str(batch)]["in_page_per_face_us"] = stats.summarize(
                        [ms * 1e6 for ms in e.in_page_ms[batch]], batch)
        medians = {name: rows[str(batch)]["per_face_us"]["median"]
                   for name, rows in latency.items() if str(batch) in rows}
        fp32 = [e.name for e in ok if e.precision == "fp32"]
        reference = PREDICT_ROW if PREDICT_ROW in medians else None
        for name, value in stats.latency_ratios(medians, reference, fp32).items():
            ratios[name][str(batch)] = value
        for e in ok:
            for key, target in (("time_vs_original_fp32", f"{e.backend}-fp32"),
                                ("time_vs_original_target", e.target)):
                baseline = _original(e, ok, target)
                if e.name in medians and baseline is not None and baseline.name in medians:
                    ratios[e.name][str(batch)][key] = stats.fraction(
                        medians[e.name], medians[baseline.name])
    rows = []
    for e in entries:
        rows.append({
            "name": e.name, "backend": e.backend, "mode": e.mode, "target": e.target,
            "precision": e.precision, "graph": e.graph, "path": e.path, "engine": e.engine,
            "status": e.status,
            "error": e.error, "note": e.note, "heads": list(e.heads), "size": e.size,
            "device": e.device,
            "load": {"import_s": e.import_s, "load_s": e.load_s,
                     "first_call_ms": {str(b): v for b, v in sorted(e.first_ms.items())}},
            "latency": latency.get(e.name, {}),
            "ratios": ratios.get(e.name, {}),
            "memory": {k: e.process.get(k) for k in ("peak_rss_bytes", "rss_before_load_bytes",
                                                     "shared_with", "pid")},
            "tensorflow_imported": e.process.get("tensorflow_imported"),
            "worker": e.info,
            "pipeline": {photo: pipeline_summary(raw) for photo, raw in e.pipeline.items()},
            "pipeline_error": e.pipeline_error,
        })
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings.as_dict(),
        "inputs": inputs,
        "fingerprint": fingerprint,
        "model_cost": {"macs_per_face_per_head": macs, "flops_per_mac": stats.FLOPS_PER_MAC,
                       "source": macs_source},
        "paper_bytes": PAPER_MODEL_BYTES,
        "gemm": gemm,
        "reference_engine": next((e.engine for e in entries if e.engine
                                  and getattr(row_kind(e.backend), "from_weights", False)), None),
        "pipeline": {"photos": photos or [], "detector": "yunet", "error": pipeline_error,
                     "context": {"ssrnet_issue_21_ms": list(ISSUE_21_MS), "url": ISSUE_21_URL,
                                 "what": "model.predict on the demo's faces, CPU, detector "
                                         "not included"}},
        "results": rows,
        "failed": [r["name"] for r in rows if r["status"] == "failed"],
    }


# ---------------------------------------------------------------- formatting helpers


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_num(value, digits: int = 3) -> str:
    """A positive quantity with about ``digits`` significant digits, thousands separated."""
    if _missing(value):
        return "-"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def fmt_int(value) -> str:
    return "-" if _missing(value) else f"{int(value):,}"


def fmt_ratio(value, suffix: str = "x") -> str:
    """Ratios with two decimals below 10 (1.00x, 0.27x), fewer above (14.0x, 169x)."""
    if _missing(value):
        return "-"
    text = f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return text + suffix


def fmt_pct(value) -> str:
    """A fraction as a percentage with two significant digits (0.018%, 4.3%, 52%)."""
    return "-" if _missing(value) else f"{fmt_num(100 * value, 2)}%"


def fmt_mb(value) -> str:
    return "-" if _missing(value) else f"{value / 2**20:.0f}"


def _size_label(row: dict) -> str:
    """Size rows name files: the reference's are its .h5 weights (its row kind says how)."""
    kind = row_kind(row["backend"])
    return kind.size_label.format(name=row["name"]) if kind is not None else row["name"]


def _native_row(row: dict, results: list[dict]) -> dict | None:
    """The native row a browser row is compared with: the same file on an engine without a page
    (for a .web folder: the .onnx of the same export and precision, the graph it carries)."""
    def native(r):
        return r is not row and r["status"] == "ok" and r["latency"] and not any(
            "in_page_per_face_us" in lat for lat in r["latency"].values())

    same = [r for r in results if native(r) and r["path"] == row["path"]]
    if same:
        return same[0]
    from ssrconv.targets import FORMATS

    fmt = FORMATS.get(row["backend"])
    if fmt is not None and fmt.inner_family is not None and row["path"]:
        from pathlib import Path

        # The .onnx the folder carries, or the export's own of the same precision beside it.
        folders = (str(Path(row["path"])), str(Path(row["path"]).parent))
        onnx = [r for r in results if native(r) and r["backend"] == fmt.inner_family and r["path"]
                and str(Path(r["path"]).parent) in folders and r["precision"] == row["precision"]]
        # The carried file first (the very graph), then the format's default engine.
        onnx.sort(key=lambda r: (str(Path(r["path"]).parent) != folders[0], " on " in r["name"]))
        return onnx[0] if onnx else None
    return None


def _status_text(row: dict) -> str:
    # Short, so the column stays narrow; the notes carry the reason.
    if row["status"] == "failed":
        return "FAILED"
    if row["status"] == "not-timed":
        return "not timed"
    return "-"


# ---------------------------------------------------------------- the tables, column by column


def fmt_text(value) -> str:
    """A name or count as it is; a missing value as "-"."""
    return "-" if _missing(value) or value == "" else str(value)


def _at(*path):
    """A cell's value at ``path`` in one table line (None where any step is missing)."""
    def value(line: dict):
        for key in path:
            if not isinstance(line, dict) or line.get(key) is None:
                return None
            line = line[key]
        return line
    return value


@dataclass(frozen=True)
class Column:
    """One column of a report table: its header, its value in one line of the table (a dict:
    ``row``, the report's result, and what the table adds: ``batch``, ``lat``, ``size``...),
    how the value is written, and whether the terminal shows it by default (within 100
    columns; ``ssrconv bench --wide`` and the Markdown show every column). ``when``: the
    column is there only for reports it answers True for (e.g. a browser row's in-page time)."""

    header: str
    value: Callable[[dict], object]
    fmt: Callable[[object], str] = fmt_text
    narrow: bool = False
    when: Callable[[dict], bool] | None = None


@dataclass(frozen=True)
class Table:
    """A report table: its title, its columns, and its lines (one dict per line, from the
    report). A line with ``status`` (a row with no timing) writes that text in the
    ``status_column``, the table's names where the columns have them, and "-" elsewhere.
    ``optional``: the table is left out when it has no line."""

    title: str
    columns: tuple[Column, ...]
    lines: Callable[[dict], list[dict]]
    status_column: str | None = None
    optional: bool = False

    def render(self, report: dict, wide: bool = True) -> tuple[list[str], list[list[str]]]:
        """(headers, cells) of this table for ``report``: every column, or (``wide`` False)
        the terminal's default ones."""
        columns = [c for c in self.columns if (wide or c.narrow)
                   and (c.when is None or c.when(report))]
        cells = []
        for line in self.lines(report):
            if "status" in line:
                cells.append([line["status"] if c.header == self.status_column
                              else c.fmt(c.value(line)) if c.header in _NAME_HEADERS else "-"
                              for c in columns])
            else:
                cells.append([c.fmt(c.value(line)) for c in columns])
        return [c.header for c in columns], cells


_NAME_HEADERS = ("backend", "engine")  # written on a status line too


def _engine(line: dict):
    return line["row"]["engine"]


def _size_lines(report: dict) -> list[dict]:
    # model.predict is the same files as the model call
    return [{"row": r, "size": r["size"] or {}} for r in report["results"] if r["mode"] != "predict"]


def _batch_lines(report: dict) -> list[dict]:
    """One line per row and batch size it was timed at; a status line for an untimed row."""
    out = []
    for row in report["results"]:
        if not row["latency"]:
            out.append({"row": row, "status": _status_text(row)})
            continue
        for batch in sorted(row["latency"], key=int):
            load = row["load"]
            out.append({"row": row, "batch": batch, "lat": row["latency"][batch],
                        "ratio": row["ratios"].get(batch, {}),
                        "load_s": (load["import_s"] or 0) + (load["load_s"] or 0),
                        "first_ms": load["first_call_ms"].get(batch),
                        "rss": row["memory"].get("peak_rss_bytes")})
    return out


def _pipeline_lines(report: dict) -> list[dict]:
    return [{"row": row, "photo": photo, "p": p} for row in report["results"]
            for photo, p in row.get("pipeline", {}).items() if p.get("n")]


def _has_in_page_model(report: dict) -> bool:
    return any("in_page_model_ms" in p for r in report["results"]
               for p in r.get("pipeline", {}).values())


def _browser_lines(report: dict) -> list[dict]:
    """Browser engines: one line per row and batch size with an in-page time, beside the native
    engine's time for the same artifact."""
    out = []
    for row in report["results"]:
        for batch, lat in sorted(row["latency"].items(), key=lambda kv: int(kv[0])):
            page = lat.get("in_page_per_face_us")
            if not page:
                continue
            native = _native_row(row, report["results"])
            native_lat = (native or {}).get("latency", {}).get(batch)
            native_us = native_lat["per_face_us"]["median"] if native_lat else None
            out.append({"row": row, "batch": batch, "lat": lat, "page": page,
                        "native": f"{native['name']} ({native['engine']})" if native else None,
                        "native_us": native_us,
                        "vs": page["median"] / native_us if native_us else None})
    return out


def _device_lines(report: dict) -> list[dict]:
    """One line per (artifact, Ethos-U accelerator) of the rows whose manifests carry
    microcontroller or NPU figures (one line without an accelerator when there is no Vela
    report)."""
    out = []
    for row in report["results"]:
        device = row.get("device") or {}
        if not device or row["mode"] == "predict":
            continue
        for name, vela in (device.get("ethos_u") or {None: None}).items():
            out.append({"row": row, "mcu": device.get("mcu") or {}, "accelerator": name,
                        "vela": vela})
    return out


def _npu_ops(line: dict) -> str | None:
    vela = line["vela"]
    return f"{vela['npu_operators']}/{vela['npu_operators'] + vela['cpu_operators']}" if vela else None


def _npu_macs(line: dict) -> str | None:
    return f"{100 * line['vela']['npu_mac_share']:.2f}%" if line["vela"] else None


def _off_chip(line: dict) -> float | None:
    vela = line["vela"]
    return vela["off_chip_flash_kib"] + vela["dram_kib"] if vela else None


_NAME = Column("backend", _at("row", "name"), narrow=True)
_FILES = Column("backend", lambda line: _size_label(line["row"]), narrow=True)
_PER_FACE = ("lat", "per_face_us")

TABLES = (
    Table("Size", (
        _FILES,
        Column("target", _at("row", "target"), narrow=True),
        Column("heads", lambda line: len(line["row"]["heads"]) or None),
        Column("file bytes", _at("size", "file_bytes"), fmt_int, narrow=True),
        Column("gzip bytes", _at("size", "gzip_bytes"), fmt_int, narrow=True),
        Column("param bytes", _at("size", "param_bytes"), fmt_int),
        Column("x paper 0.32 MB", _at("size", "ratio_to_paper"), fmt_ratio),
        Column("x paper per head", _at("size", "ratio_to_paper_per_head"), fmt_ratio,
               narrow=True),
    ), lines=_size_lines),
    Table("Latency per face (us; raw: the harness overhead is measured beside, never "
          "subtracted)", (
        _NAME,
        Column("engine", _engine, narrow=True),
        Column("batch", _at("batch"), narrow=True),
        Column("n", _at(*_PER_FACE, "n")),
        Column("median", _at(*_PER_FACE, "median"), fmt_num, narrow=True),
        Column("p90", _at(*_PER_FACE, "p90"), fmt_num, narrow=True),
        Column("p99", _at(*_PER_FACE, "p99"), fmt_num),
        Column("min", _at(*_PER_FACE, "min"), fmt_num, narrow=True),
        Column("std", _at(*_PER_FACE, "std"), fmt_num),
        Column("overhead us/call", _at("lat", "overhead_us", "median"), fmt_num),
        Column("overhead share", _at("lat", "overhead_share"), fmt_pct),
    ), lines=_batch_lines, status_column="median"),
    Table("Throughput and efficiency", (
        _NAME,
        Column("batch", _at("batch"), narrow=True),
        Column("faces/s", _at("lat", "throughput_faces_per_s"), fmt_num, narrow=True),
        Column("GFLOP/s", _at("lat", "gflops"), fmt_num),
        Column("best GFLOP/s", _at("lat", "gflops_best"), fmt_num),
        Column("best of 1-core GEMM", _at("lat", "fraction_of_core_gemm_best"), fmt_pct),
        Column("speed-up vs predict", _at("ratio", "speedup_vs_keras_predict"), fmt_ratio,
               narrow=True),
        Column("time vs fastest fp32", _at("ratio", "time_vs_fastest_fp32"), fmt_ratio,
               narrow=True),
        Column("vs original fp32", _at("ratio", "time_vs_original_fp32"), fmt_ratio),
        Column("vs original same target", _at("ratio", "time_vs_original_target"), fmt_ratio),
        Column("import+load s", _at("load_s"), fmt_num),
        Column("first call ms", _at("first_ms"), fmt_num),
        Column("peak RSS MB", _at("rss"), fmt_mb),
    ), lines=_batch_lines, status_column="faces/s"),
    Table("End to end per photo and per face (ms, medians): YuNet + crop + model, as "
          "`ssrconv predict` runs them", (
        _NAME,
        Column("engine", _engine),
        Column("photo", _at("photo"), narrow=True),
        Column("faces", _at("p", "faces"), narrow=True),
        Column("n", _at("p", "n")),
        Column("YuNet ms", _at("p", "detect_ms"), fmt_num, narrow=True),
        Column("crop ms", _at("p", "crop_ms"), fmt_num),
        Column("model ms", _at("p", "model_ms"), fmt_num, narrow=True),
        Column("model in page ms", _at("p", "in_page_model_ms"), fmt_num,
               when=_has_in_page_model),
        Column("total ms", _at("p", "total_ms"), fmt_num, narrow=True),
        Column("YuNet per face", _at("p", "per_face", "detect_ms"), fmt_num),
        Column("crop per face", _at("p", "per_face", "crop_ms"), fmt_num),
        Column("model per face", _at("p", "per_face", "model_ms"), fmt_num, narrow=True),
        Column("total per face", _at("p", "per_face", "total_ms"), fmt_num),
    ), lines=_pipeline_lines, optional=True),
    Table("In the browser vs native (per face, us, medians)", (
        _NAME,
        Column("engine", _engine, narrow=True),
        Column("batch", _at("batch")),
        Column("round trip", _at(*_PER_FACE, "median"), fmt_num),
        Column("in page", _at("page", "median"), fmt_num, narrow=True),
        Column("in page min", _at("page", "min"), fmt_num),
        Column("native row (engine)", _at("native")),
        Column("native", _at("native_us"), fmt_num, narrow=True),
        Column("in page vs native", _at("vs"), fmt_ratio, narrow=True),
    ), lines=_browser_lines, optional=True),
    Table("Microcontroller and NPU: MCU RAM is the smallest TFLite Micro arena that allocates; "
          "NPU split, SRAM and time are Vela's estimates, not measurements", (
        _NAME,
        Column("MCU RAM bytes", _at("mcu", "ram_bytes"), fmt_int, narrow=True),
        Column("flash bytes", _at("mcu", "flash_bytes"), fmt_int, narrow=True),
        Column("accelerator", _at("accelerator"), narrow=True),
        Column("NPU ops", _npu_ops, narrow=True),
        Column("NPU MACs", _npu_macs, narrow=True),
        Column("SRAM KiB", _at("vela", "sram_kib"), fmt_num, narrow=True),
        Column("flash/DRAM KiB", _off_chip, fmt_num),
        Column("estimated ms", _at("vela", "estimated_inference_ms"), fmt_num, narrow=True),
    ), lines=_device_lines, optional=True),
)


def tables(report: dict, wide: bool = True) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, cells) of the report's tables (:data:`TABLES`): size, latency,
    throughput, and when measured the end-to-end pipeline and the browser's in-page time beside
    native. ``wide`` False: the terminal's default columns only."""
    out = []
    for table in TABLES:
        headers, cells = table.render(report, wide)
        if cells or not table.optional:
            out.append((table.title, headers, cells))
    return out


def _coretype_caveat(report: dict) -> str:
    """OPENBLAS_CORETYPE pins numpy's BLAS to one CPU's kernels (e.g. Haswell: AVX2 on an
    AVX-512 machine), which understates this machine's GEMM rate, not the runtimes' (theirs
    ignore it): shares of that GEMM can then exceed 100%."""
    coretype = report["fingerprint"].get("env", {}).get("OPENBLAS_CORETYPE")
    if not coretype:
        return ""
    return (f" numpy's BLAS ran with OPENBLAS_CORETYPE={coretype} (that CPU's kernels, maybe not "
            "this one's best): the runtimes' shares of it may be overstated.")


def notes(report: dict) -> list[str]:
    """The sentences that say how each number was obtained."""
    s = report["settings"]
    gemm = report["gemm"]
    cost = report["model_cost"]
    out = [
        f"Inputs: {report['inputs']}.",
        f"Each backend in its own worker process, {s['threads']} thread(s); per row and batch "
        f"size: {s['warmup']} warm-up calls, then {s['runs']} timed calls in {s['rounds']} "
        f"interleaved rounds of {s['block']} (every backend in turn each round, so all see the "
        f"same machine noise); a block stops early after {s['block_seconds']:g} s (at least 2 "
        "calls), so slow rows have fewer calls (column n). Times are perf_counter_ns around each "
        "runtime call on pre-made inputs; per face = per call / batch.",
        "Harness overhead: the same timing loop around an empty call, measured in each worker "
        "beside each block; reported, never subtracted.",
        f"Throughput: sustained (faces run / total time in calls). GFLOP/s: "
        f"{cost['flops_per_mac']} x {cost['macs_per_face_per_head']:,} multiply-adds per face "
        f"per head ({cost['source']}) x heads / median time per face; best GFLOP/s uses the "
        "fastest call, and 'best of 1-core GEMM' divides it by the fastest GEMM (the least "
        "disturbed samples of both; the JSON also has median / median).",
    ]
    if gemm.get("error"):
        out.append(f"Reference GEMM failed: {gemm['error']}.")
    else:
        out.append(f"1-core reference: numpy float32 GEMM {gemm['size']}x{gemm['size']}, one BLAS "
                   f"thread, timed in the same rounds: median {fmt_num(gemm['median_gflops'])} "
                   f"GFLOP/s (best {fmt_num(gemm['best_gflops'])}, n={gemm['n']})."
                   + _coretype_caveat(report))
    out.append("Sizes: file bytes on disk (a .mlpackage sums its files); gzip -9 of the contents; "
               "param bytes = " + next((r["size"]["param_bytes_method"] for r in report["results"]
                                        if r["size"] and "param_bytes_method" in r["size"]),
                                       "n/a") + ".")
    out.append(f"The paper's 0.32 MB is one head's .h5 ({report['paper_bytes']:,} bytes); the "
               "default exports are age-gender (two heads, age and P(male), in one file), so "
               "compare 'x paper per head'. Keras' size is its two .h5 weight files.")
    out.append("Latency, throughput and GFLOP/s of an age-gender row are for both heads: one "
               "call returns age and P(male).")
    out.append("Speed-up vs predict: Keras model.predict time / this time (what users who time "
               "model.predict see). Time vs fastest fp32: this time / the fastest fp32 row. "
               "Vs original fp32: this time / the time of the original-graph (`export --graph "
               "original`) fp32 export of the same format on the same engine, in the same run; "
               "vs original same target: the same over the original-graph export of this row's "
               "own target (e.g. int8 over int8).")
    engine = report.get("reference_engine")
    if engine and engine != "keras":
        out.append(f"Reference: the {engine} engine of the rebuilt SSR-Net (same .h5 weights; "
                   "Keras/TensorFlow not installed or not chosen: `pip install "
                   "'ssrconv[export]'` adds the Keras rows, model call and model.predict); "
                   "'speed-up vs predict' needs Keras' model.predict and is empty.")
    out += _pipeline_notes(report)
    if any(r["memory"].get("shared_with") for r in report["results"]):
        out.append("Keras model call and model.predict run in one worker: one peak RSS.")
    for row in report["results"]:
        if row["status"] == "not-timed":
            out.append(f"{row['name']}: {row['note']}.")
        elif row["status"] == "failed":
            out.append(f"{row['name']}: FAILED: {row['error']}")
    return out


def _pipeline_notes(report: dict) -> list[str]:
    pipe = report.get("pipeline") or {}
    s = report["settings"]
    out = []
    if pipe.get("error"):
        out.append(f"End to end: not measured ({pipe['error']}).")
    if any(r.get("pipeline") for r in report["results"]):
        photos = ", ".join(f"{p['name']} ({p.get('faces', '?')} face"
                           f"{'' if p.get('faces') == 1 else 's'}, "
                           f"{'x'.join(str(v) for v in reversed(p.get('shape') or []))})"
                           for p in pipe.get("photos", []))
        low, high = pipe["context"]["ssrnet_issue_21_ms"]
        out.append(f"End to end: the sample photos {photos} (asset registry, decoded once, not "
                   "timed) pass through what `ssrconv predict` runs, each step timed alone in "
                   "the row's worker: YuNet (OpenCV, the row's thread count), the crops of the "
                   "preprocessing contract, one model call on all faces of the photo; "
                   f"{s.get('pipeline_warmup', 0)} warm-up passes, then "
                   f"{s.get('pipeline_runs', 0)} in {s.get('pipeline_rounds', 0)} interleaved "
                   "rounds per photo and row. Total = median of per-pass sums; per face = each "
                   "median / the photo's faces. Browser rows' model ms is the round trip; 'model in page ms' their "
                   "page's own timer.")
        out.append(f"For context, SSR-Net's issue #21 ({pipe['context']['url']}): "
                   f"model.predict on the faces of the original demo took {low}-{high} ms per "
                   "call on a user's CPU, detection not included (the author: the detector is "
                   "the slow part); compare the keras (model.predict) model ms.")
    for row in report["results"]:
        if row.get("pipeline_error"):
            out.append(f"{row['name']}: end to end FAILED: {row['pipeline_error']}")
    return out


def _align(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells):
        # Names left-aligned, numbers right-aligned (the first two columns are names).
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


# The terminal's width: a table shows its ``narrow`` columns unless --wide, and the notes wrap.
TERMINAL_WIDTH = 100


def render_text(report: dict, wide: bool = False) -> str:
    """The terminal report: the tables aligned (their main columns, within 100 columns; every
    column with ``wide``), then the notes and the fingerprint wrapped to 100 columns."""
    import textwrap

    lines = []
    for title, headers, rows in tables(report, wide):
        lines += [title, *_align(headers, rows), ""]
    if not wide:
        lines += ["(main columns; ssrconv bench --wide, --markdown or --json for all of them)", ""]
    for note in [*notes(report), f"Machine: {one_line(report['fingerprint'])}"]:
        lines += textwrap.wrap(note, TERMINAL_WIDTH, initial_indent="- ", subsequent_indent="  ",
                               break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def render_markdown(report: dict) -> str:
    """Markdown for the README: the fingerprint line, the three tables, the notes."""
    lines = [f"Benchmark ({report['created']}). Machine: {one_line(report['fingerprint'])}", ""]
    for title, headers, rows in tables(report):
        lines += [f"**{title}**", "", "| " + " | ".join(headers) + " |",
                  "|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
        lines.append("")
    lines += [f"- {n}" for n in notes(report)]
    return "\n".join(lines) + "\n"


def _json_safe(value):
    """NaN and infinities are not JSON: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def render_json(report: dict) -> str:
    """The report as strict JSON (NaN -> null)."""
    return json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n"


def plotted_rows(results: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rows drawn on the latency chart, timed rows left out of it). model.predict (Keras'
    per-call overhead, ~100x the model call) squashed every other bar on the log axis: it is
    left out and named, with its time, under the axis."""
    timed = [r for r in results if r["latency"]]
    return ([r for r in timed if r["mode"] != "predict"], [r for r in timed if r["mode"] == "predict"])


def render_plot(report: dict) -> bytes:
    """PNG bytes: median latency per face per row and batch size with p10-p90 error bars
    (log scale: model.predict is orders of magnitude slower), and file size per artifact
    against the paper's one-head .h5."""
    import io

    from ssrconv._extras import require

    matplotlib = require("matplotlib", "plot", "ssrconv bench --plot")
    matplotlib.use("Agg")  # no display: render to memory
    import matplotlib.pyplot as plt

    import textwrap

    results = report["results"]
    batches = [str(b) for b in report["settings"]["batches"]]
    timed, left_out = plotted_rows(results)
    sized = [r for r in results if r["mode"] != "predict" and r["size"] and "file_bytes" in r["size"]]
    fig, (ax_lat, ax_size) = plt.subplots(1, 2, figsize=(13, max(3.5, 0.45 * max(len(timed), len(sized), 1) + 1.5)))
    height = 0.8 / max(len(batches), 1)
    for k, batch in enumerate(batches):
        ys, med, lo, hi = [], [], [], []
        for i, row in enumerate(timed):
            lat = row["latency"].get(batch)
            if not lat:
                continue
            face = lat["per_face_us"]
            ys.append(i + (k - (len(batches) - 1) / 2) * height)
            med.append(face["median"])
            lo.append(face["median"] - face["p10"])
            hi.append(face["p90"] - face["median"])
        ax_lat.barh(ys, med, height=height, xerr=[lo, hi], capsize=2, label=f"batch {batch}")
    ax_lat.set_yticks(range(len(timed)), [r["name"] for r in timed], fontsize=8)
    ax_lat.invert_yaxis()
    ax_lat.set_xscale("log")
    xlabel = "median latency per face (us, log; bars p10-p90)"
    for r in left_out:
        worst = max(r["latency"].values(), key=lambda lat: lat["per_face_us"]["median"])
        xlabel += (f"\nnot drawn: {r['name']}, {worst['per_face_us']['median']:,.0f} us per face "
                   "(Keras' per-call overhead)")
    ax_lat.set_xlabel(xlabel)
    ax_lat.legend(fontsize=8)
    ax_lat.set_title(f"Latency, {report['settings']['threads']} thread(s)")
    names = [_size_label(r) for r in sized]
    ax_size.barh(range(len(sized)), [r["size"]["file_bytes"] / 1024 for r in sized], color="tab:gray")
    ax_size.axvline(report["paper_bytes"] / 1024, color="tab:red", linestyle="--",
                    label="paper .h5 (one head)")
    ax_size.set_yticks(range(len(sized)), names, fontsize=8)
    ax_size.invert_yaxis()
    ax_size.set_xlabel("file size (KiB; age-gender files hold two heads)")
    ax_size.legend(fontsize=8)
    ax_size.set_title("Size")
    # The whole machine line, wrapped to the figure's width (it was cut at 150 characters).
    fig.suptitle(textwrap.fill(one_line(report["fingerprint"]), 190), fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()

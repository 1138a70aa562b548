"""The benchmark report: built from raw measurements, rendered as a terminal table, Markdown,
JSON and a PNG chart, and written atomically.

:func:`build_report` is pure (rows with raw per-call times in, a JSON-ready dict out), so the
whole report can be checked on synthetic timings without running any backend.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

from ssrconv.benchmarks import stats
from ssrconv.benchmarks.fingerprint import one_line
from ssrconv.benchmarks.sizes import PAPER_MODEL_BYTES

SCHEMA = "ssrconv.bench/1"
PREDICT_ROW = "keras (model.predict)"


def _macs_per_head(entries) -> tuple[int, str]:
    for entry in entries:
        macs = entry.info.get("macs_per_head")
        if macs:
            return int(macs), "counted on the rebuilt Keras model by the keras worker"
    return stats.MACS_PER_FACE_PER_HEAD, "ssrconv's count of the reference (conv + dense layers)"


def build_report(entries, gemm_ns, settings, fingerprint: dict, inputs: str,
                 gemm_error: str | None = None, gemm_info: dict | None = None) -> dict:
    """The report of a run, from its rows (harness.Entry), the GEMM times and the settings."""
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
        medians = {name: rows[str(batch)]["per_face_us"]["median"]
                   for name, rows in latency.items() if str(batch) in rows}
        fp32 = [e.name for e in ok if e.precision == "fp32"]
        reference = PREDICT_ROW if PREDICT_ROW in medians else None
        for name, value in stats.latency_ratios(medians, reference, fp32).items():
            ratios[name][str(batch)] = value
    rows = []
    for e in entries:
        rows.append({
            "name": e.name, "backend": e.backend, "mode": e.mode, "target": e.target,
            "precision": e.precision, "path": e.path, "engine": e.engine, "status": e.status,
            "error": e.error, "note": e.note, "heads": list(e.heads), "size": e.size,
            "load": {"import_s": e.import_s, "load_s": e.load_s,
                     "first_call_ms": {str(b): v for b, v in sorted(e.first_ms.items())}},
            "latency": latency.get(e.name, {}),
            "ratios": ratios.get(e.name, {}),
            "memory": {k: e.process.get(k) for k in ("peak_rss_bytes", "rss_before_load_bytes",
                                                     "shared_with", "pid")},
            "tensorflow_imported": e.process.get("tensorflow_imported"),
            "worker": e.info,
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
    """Size rows name files: the Keras reference's are its .h5 weights."""
    return "keras (.h5 weights)" if row["backend"] == "keras" else row["name"]


def _status_text(row: dict) -> str:
    # Short, so the column stays narrow; the notes carry the reason.
    if row["status"] == "failed":
        return "FAILED"
    if row["status"] == "not-timed":
        return "not timed"
    return "-"


def tables(report: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) of the three report tables: size, latency, throughput."""
    size_rows, latency_rows, speed_rows = [], [], []
    for row in report["results"]:
        size = row["size"] or {}
        if row["mode"] != "predict":  # model.predict is the same files as the model call
            size_rows.append([_size_label(row), row["target"], str(len(row["heads"]) or "-"),
                              fmt_int(size.get("file_bytes")), fmt_int(size.get("gzip_bytes")),
                              fmt_int(size.get("param_bytes")),
                              fmt_ratio(size.get("ratio_to_paper")),
                              fmt_ratio(size.get("ratio_to_paper_per_head"))])
        batches = sorted(row["latency"], key=int) or [None]
        for batch in batches:
            if batch is None:
                text = _status_text(row)
                latency_rows.append([row["name"], row["engine"] or "-", "-", "-", text] + ["-"] * 6)
                speed_rows.append([row["name"], "-", text] + ["-"] * 8)
                continue
            lat = row["latency"][batch]
            face, over = lat["per_face_us"], lat["overhead_us"]
            latency_rows.append([row["name"], row["engine"] or "-", batch, str(face["n"]),
                                 fmt_num(face["median"]),
                                 fmt_num(face["p90"]), fmt_num(face["p99"]), fmt_num(face["min"]),
                                 fmt_num(face["std"]), fmt_num(over["median"]),
                                 fmt_pct(lat["overhead_share"])])
            ratio = row["ratios"].get(batch, {})
            load = row["load"]
            load_s = (load["import_s"] or 0) + (load["load_s"] or 0)
            speed_rows.append([row["name"], batch, fmt_num(lat["throughput_faces_per_s"]),
                               fmt_num(lat["gflops"]), fmt_num(lat["gflops_best"]),
                               fmt_pct(lat["fraction_of_core_gemm_best"]),
                               fmt_ratio(ratio.get("speedup_vs_keras_predict")),
                               fmt_ratio(ratio.get("time_vs_fastest_fp32")),
                               fmt_num(load_s), fmt_num(load["first_call_ms"].get(batch)),
                               fmt_mb(row["memory"].get("peak_rss_bytes"))])
    return [
        ("Size", ["backend", "target", "heads", "file bytes", "gzip bytes", "param bytes",
                  "x paper 0.32 MB", "x paper per head"], size_rows),
        ("Latency per face (us; raw, harness overhead shown beside, not subtracted)",
         ["backend", "engine", "batch", "n", "median", "p90", "p99", "min", "std",
          "overhead us/call", "overhead share"], latency_rows),
        ("Throughput and efficiency",
         ["backend", "batch", "faces/s", "GFLOP/s", "best GFLOP/s", "best of 1-core GEMM",
          "speed-up vs predict",
          "time vs fastest fp32", "import+load s", "first call ms", "peak RSS MB"], speed_rows),
    ]


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
                   f"GFLOP/s (best {fmt_num(gemm['best_gflops'])}, n={gemm['n']}).")
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
               "model.predict see). Time vs fastest fp32: this time / the fastest fp32 row.")
    if any(r["memory"].get("shared_with") for r in report["results"]):
        out.append("Keras model call and model.predict run in one worker: one peak RSS.")
    for row in report["results"]:
        if row["status"] == "not-timed":
            out.append(f"{row['name']}: {row['note']}.")
        elif row["status"] == "failed":
            out.append(f"{row['name']}: FAILED: {row['error']}")
    return out


def _align(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells):
        # Names left-aligned, numbers right-aligned (the first two columns are names).
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def render_text(report: dict) -> str:
    """The terminal report: the three tables aligned, then the notes and the fingerprint."""
    lines = []
    for title, headers, rows in tables(report):
        lines += [title, *_align(headers, rows), ""]
    lines += [f"- {n}" for n in notes(report)]
    lines.append(f"- Machine: {one_line(report['fingerprint'])}")
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


def render_plot(report: dict) -> bytes:
    """PNG bytes: median latency per face per row and batch size with p10-p90 error bars
    (log scale: model.predict is orders of magnitude slower), and file size per artifact
    against the paper's one-head .h5."""
    import io

    from ssrconv._extras import require

    matplotlib = require("matplotlib", "plot", "ssrconv bench --plot")
    matplotlib.use("Agg")  # no display: render to memory
    import matplotlib.pyplot as plt

    results = report["results"]
    batches = [str(b) for b in report["settings"]["batches"]]
    timed = [r for r in results if r["latency"]]
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
    ax_lat.set_xlabel("median latency per face (us, log; bars p10-p90)")
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
    fig.suptitle(one_line(report["fingerprint"])[:150], fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()

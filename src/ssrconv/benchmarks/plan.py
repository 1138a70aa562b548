"""Row planning: the rows a bench run times (artifacts on their engines, the reference rows, the
native rows shown beside browser rows), each an :class:`Entry` that collects its measurements."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ssrconv.benchmarks.kinds import KERAS, REFERENCE


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


def _reference_inputs(label: str, weights) -> tuple[dict, list[str], str]:
    """(options, heads, row label) of a reference row: the default age-gender pair, or one
    weights file (its head read from its layers, its name added to ``label``)."""
    if weights is None:
        return {"task": "age-gender"}, ["age", "p_male"], label
    from ssrconv.assets import resolve
    from ssrconv.reference.weights import read_weights

    task = read_weights(resolve(weights).path).task
    return ({"task": task, f"{task}_weights": str(weights)},
            ["age"] if task == "age" else ["p_male"], f"{label} {Path(weights).name}")


def keras_entries(predict: bool = True, weights: str | os.PathLike | None = None) -> list[Entry]:
    """The Keras reference: model call, and model.predict (what most users time), sharing one
    worker process (same model; predict adds only Keras' per-call machinery). ``weights``: one
    weights file (its head read from its layers) instead of the default age-gender pair."""
    options, heads, label = _reference_inputs(KERAS.backend, weights)
    rows = [Entry(f"{label} (model call)", KERAS.backend, "keras-fp32", "fp32", mode="run",
                  options=options, worker_key=KERAS.backend, heads=heads)]
    if predict:
        rows.append(Entry(f"{label} (model.predict)", KERAS.backend, "keras-fp32", "fp32",
                          mode="predict", options=options, worker_key=KERAS.backend, heads=heads))
    return rows


def reference_entries(engine: str = "auto", predict: bool = True,
                      weights: str | os.PathLike | None = None) -> list[Entry]:
    """The reference rows on ``engine`` (:func:`ssrconv.reference.reference_engine`: "auto" is
    Keras when TensorFlow is installed, else the numpy engine): :func:`keras_entries`, or one
    row of the numpy reference (model call; it has no model.predict)."""
    from ssrconv.reference import reference_engine

    chosen = reference_engine(engine)
    if chosen == KERAS.backend:
        return keras_entries(predict=predict, weights=weights)
    options, heads, label = _reference_inputs(f"reference {chosen}", weights)
    return [Entry(label, REFERENCE.backend, f"reference-{chosen}", "fp32", mode="run",
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
    from ssrconv.targets import engines_for, get_engine

    if not engines:
        return [artifact_entry(artifact, engine)]
    rows = []
    for name in engines_for(artifact.format.family, engine, engines):
        entry = artifact_entry(artifact, name)
        why = get_engine(name).why_not_run(artifact.path)
        if why is not None:
            entry.timed, entry.note = False, f"not run: {why}"
        rows.append(entry)
    return rows

"""Export the reference to every requested target, atomically, each with a manifest.

For each artifact: convert into a hidden temporary path inside the output directory, read the
file back (I/O names, shapes, dtypes, quantization, ops), write the manifest to a temporary file,
then rename the model into place and the manifest after it. An exception, Ctrl-C or SIGTERM at
any point leaves the directory as it was (no half-written model, no manifest pointing at
nothing). An ``index.json`` lists the artifacts of the directory.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ssrconv._version import __version__
from ssrconv.options import ExportOptions
from ssrconv.targets import Target

MANIFEST_SCHEMA = "ssrconv.artifact/1"
INDEX_SCHEMA = "ssrconv.index/1"
INDEX_NAME = "index.json"


@dataclass(frozen=True)
class Artifact:
    """One exported file (or .mlpackage directory) and its manifest."""

    target: Target
    path: Path
    manifest_path: Path
    manifest: dict

    @property
    def bytes(self) -> int:
        return self.manifest["bytes"]

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]


def manifest_path_for(path: Path) -> Path:
    """Where the manifest of an artifact lives: ``<artifact file name>.json`` beside it."""
    return path.with_name(path.name + ".json")


def artifact_digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256) of a file, or of a directory package (files in sorted relative order,
    each contributing its relative path and contents)."""
    import hashlib

    if path.is_file():
        from ssrconv.reference.assets import sha256_of

        return path.stat().st_size, sha256_of(path)
    digest = hashlib.sha256()
    total = 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix().encode()
        digest.update(len(rel).to_bytes(4, "big") + rel)
        data = file.read_bytes()
        digest.update(len(data).to_bytes(8, "big") + data)
        total += len(data)
    return total, digest.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` onto ``final`` (a file or a package directory)."""
    if tmp.is_dir() and final.exists():
        # os.replace cannot replace a non-empty directory: move the old one aside first.
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _model_metadata(reference, task: str) -> dict[str, str]:
    from ssrconv.reference import weights_provenance
    from ssrconv.reference.preprocess import CONTRACT

    meta = {"ssrconv.version": __version__, "ssrconv.task": task,
            "ssrconv.preprocessing": json.dumps(CONTRACT, sort_keys=True),
            "ssrconv.outputs": "age: years (0..101); p_male: probability the face is male"}
    for head, prov in weights_provenance(reference).items():
        meta[f"ssrconv.weights.{head}"] = prov["name"]
        meta[f"ssrconv.weights.{head}.sha256"] = prov["sha256"]
    return meta


def export(options: ExportOptions | None = None, progress: Callable[[str], None] | None = None,
           **kwargs) -> list[Artifact]:
    """Export the reference SSR-Net to the targets of ``options`` (or ``ExportOptions(**kwargs)``).

    Returns the artifacts written, in target-table order. Raises SsrconvError subclasses for
    bad input, before any file is written.
    """
    from ssrconv.calibration import CalibrationSet
    from ssrconv.converters import converter_for
    from ssrconv.info import library_versions
    from ssrconv.reference import load_reference, weights_provenance
    from ssrconv.reference.model import with_named_outputs
    from ssrconv.reference.preprocess import CONTRACT

    options = options if options is not None else ExportOptions(**kwargs)
    say = progress or (lambda message: None)
    out_existed = options.out.exists()
    options.check_paths()
    tmp_paths: list[Path] = []
    artifacts: list[Artifact] = []
    try:
        say(f"loading the reference ({options.task})")
        reference = load_reference(options.task, options.age_weights, options.gender_weights)
        model = with_named_outputs(reference.model, options.task)
        calibration = None
        if any(t.precision == "int8" for t in options.targets):
            if options.calibration is not None:
                say(f"reading calibration faces from {options.calibration}")
                calibration = CalibrationSet.from_dir(options.calibration, options.calibration_limit)
            else:
                say("no --calibration: distilling data-free calibration inputs from the model's "
                    "BatchNorm statistics (ZeroQ)")
                calibration = CalibrationSet.distilled(model, progress=say)
        metadata = _model_metadata(reference, options.task)
        tools = library_versions()
        for number, target in enumerate(options.targets, start=1):
            final = options.out / target.filename(options.task)
            tmp = options.out / f".{final.name}.{uuid.uuid4().hex[:8]}.part{target.suffix}"
            tmp_paths.append(tmp)
            step = "calibrating and converting" if target.precision == "int8" else "converting"
            say(f"[{number}/{len(options.targets)}] {target.key}: {step} -> {final.name}")
            started = time.perf_counter()
            extra = converter_for(target.family).convert(model, target, options, tmp, calibration,
                                                         metadata)
            description = converter_for(target.family).describe(tmp)
            size, sha = artifact_digest(tmp)
            manifest = {
                "schema": MANIFEST_SCHEMA,
                "target": target.key, "family": target.family, "precision": target.precision,
                "description": target.description, "task": options.task,
                "file": final.name, "bytes": size, "sha256": sha,
                **description,
                **extra,
                "calibration": calibration.describe() if target.precision == "int8" else None,
                "weights": weights_provenance(reference),
                "preprocessing": CONTRACT,
                "parity_budget": target.budget.as_dict(),
                "tools": {"ssrconv": __version__, **tools},
                "seconds": round(time.perf_counter() - started, 3),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            manifest_final = manifest_path_for(final)
            _place(tmp, final)
            _write_json_atomic(manifest_final, manifest)
            artifacts.append(Artifact(target, final, manifest_final, manifest))
            say(f"      {final.name}: {size:,} bytes in {manifest['seconds']:.1f} s")
        _write_index(options.out, artifacts)
        return artifacts
    finally:
        for tmp in tmp_paths:
            if tmp.exists():
                _remove(tmp)
        if not out_existed and options.out.is_dir() and not any(options.out.iterdir()):
            options.out.rmdir()


def _write_index(out: Path, artifacts: list[Artifact]) -> None:
    """Merge this run's artifacts into ``index.json`` (entries whose files are gone are dropped)."""
    index_path = out / INDEX_NAME
    entries: dict[str, dict] = {}
    if index_path.is_file():
        try:
            for entry in json.loads(index_path.read_text()).get("artifacts", []):
                if (out / entry["file"]).exists() and (out / entry["manifest"]).is_file():
                    entries[entry["file"]] = entry
        except (ValueError, KeyError, TypeError, AttributeError):
            entries = {}  # an unreadable index is rebuilt from this run
    for a in artifacts:
        entries[a.path.name] = {"target": a.target.key, "task": a.manifest["task"],
                                "file": a.path.name, "manifest": a.manifest_path.name,
                                "bytes": a.bytes, "sha256": a.sha256}
    _write_json_atomic(index_path, {"schema": INDEX_SCHEMA, "ssrconv": __version__,
                                    "artifacts": sorted(entries.values(), key=lambda e: e["file"])})

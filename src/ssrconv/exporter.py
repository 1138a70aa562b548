"""Export the reference to every requested target, atomically, each with a manifest.

For each artifact: convert into a hidden temporary path inside the output directory, read the
file back (I/O names, shapes, dtypes, quantization, ops), write the manifest and the new
``index.json`` to temporary files, then rename the three into place. The renames happen while
holding an exclusive lock on the output directory (so a concurrent export into the same
directory cannot interleave its renames and index update with ours) and with SIGINT/SIGTERM
held back (so an interrupt lands before or after the commit, never between a model and its
manifest). An exception, a full disk, Ctrl-C or SIGTERM at any point leaves the directory as it
was (no half-written model, no temporary file, no manifest or index pointing at nothing).
``index.json`` lists the artifacts of the directory, rebuilt from the manifests on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ssrconv._version import __version__
from ssrconv.errors import ManifestError, SsrconvError
from ssrconv.options import ExportOptions
from ssrconv.targets import TARGETS, Target

MANIFEST_SCHEMA = "ssrconv.artifact/1"
INDEX_SCHEMA = "ssrconv.index/1"
INDEX_NAME = "index.json"
ARTIFACT_SUFFIXES = tuple(sorted({t.suffix for t in TARGETS.values()}))


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


def _write_json_tmp(path: Path, data: dict) -> Path:
    """Write ``data`` to a hidden temporary file beside ``path`` (renamed by the caller)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``directory`` itself (no lock file is left behind).

    Another ssrconv export committing into the same directory waits here, so two exports never
    interleave their renames or rebuild the index from each other's half-done state.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, the commit is still atomic per file
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back during a commit; a pending one is delivered on exit
    (and then raises KeyboardInterrupt through the CLI's handler) after the renames."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _plain_name(value) -> bool:
    """True for a file name inside a directory: no separators, no '..', no NUL."""
    return (isinstance(value, str) and value not in ("", ".", "..")
            and not any(c in value for c in "/\\\0"))


def _read_json(path: Path, what: str):
    """Parse a UTF-8 JSON file; ManifestError naming the file and what to do otherwise."""
    redo = "re-run ssrconv export into this directory"
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise ManifestError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: the {what} is not UTF-8 text; {redo}") from None
    except RecursionError:
        raise ManifestError(f"{path}: the {what} is nested too deeply to be ssrconv's; {redo}") from None
    except ValueError as err:
        raise ManifestError(f"{path}: the {what} is not valid JSON ({err}); {redo}") from None


# Fields readers rely on, and their types (each may also be absent, or null where noted).
_MANIFEST_FIELDS = {"target": (str,), "precision": (str, type(None)), "task": (str, type(None)),
                    "file": (str,), "sha256": (str,), "bytes": (int,), "weights": (dict,)}


def read_manifest(artifact: Path) -> dict | None:
    """The manifest beside ``artifact`` (None when there is none), its fields type-checked.

    ManifestError when it is unreadable, not JSON, not an object, has no ``target`` or has a
    field of the wrong type (readers index into it: a wrong type would surface as a TypeError).
    """
    path = manifest_path_for(Path(artifact))
    if not path.is_file():
        return None
    data = _read_json(path, "manifest")
    if not isinstance(data, dict) or "target" not in data:
        raise ManifestError(f"{path}: not an ssrconv manifest (no 'target'); re-run ssrconv export")
    for key, types in _MANIFEST_FIELDS.items():
        if key in data and (not isinstance(data[key], types) or isinstance(data[key], bool)):
            raise ManifestError(f"{path}: field {key!r} is a {type(data[key]).__name__}, not a "
                                f"{types[0].__name__}; re-run ssrconv export")
    for head, entry in data.get("weights", {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("name", ""), (str, type(None))):
            raise ManifestError(f"{path}: weights entry {head!r} is malformed; re-run ssrconv export")
    return data


def read_index(directory: Path) -> list[dict] | None:
    """The entries of ``directory/index.json`` (None when there is none).

    ManifestError when it is unreadable or malformed, including an entry whose ``file`` or
    ``manifest`` is not a plain name inside the directory (an index never points elsewhere).
    """
    path = Path(directory) / INDEX_NAME
    if not path.is_file():
        return None
    data = _read_json(path, "index")
    entries = data.get("artifacts") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ManifestError(f"{path}: not an ssrconv index (no 'artifacts' list); re-run "
                            "ssrconv export")
    for entry in entries:
        if not isinstance(entry, dict) or not all(_plain_name(entry.get(k)) for k in ("file", "manifest")):
            raise ManifestError(f"{path}: entry {str(entry)[:80]!r} does not name a file in this "
                                "directory; re-run ssrconv export")
    return entries


def manifest_matches(artifact: Path, manifest: dict) -> bool:
    """True when ``artifact`` on disk has the bytes and sha256 its manifest records."""
    return artifact.exists() and artifact_digest(artifact) == (manifest.get("bytes"),
                                                               manifest.get("sha256"))


def _index_entries(out: Path, new: dict[str, dict]) -> list[dict]:
    """Index entries for every artifact of ``out`` with a readable manifest, ``new`` (file name
    -> manifest, not yet renamed into place) taking precedence."""
    manifests = dict(new)
    for manifest_file in out.glob("*.json"):
        artifact = manifest_file.with_suffix("")
        if (artifact.name in manifests or artifact.suffix not in ARTIFACT_SUFFIXES
                or not artifact.exists()):
            continue
        try:
            manifest = read_manifest(artifact)
        except ManifestError:
            continue  # not ours to list; parity on that file reports the manifest itself
        if manifest is not None:
            manifests[artifact.name] = manifest
    return [{"target": m["target"], "task": m.get("task"), "file": name,
             "manifest": manifest_path_for(Path(name)).name, "bytes": m.get("bytes"),
             "sha256": m.get("sha256")}
            for name, m in sorted(manifests.items())]


def _commit(out: Path, tmp: Path, final: Path, manifest: dict) -> None:
    """Put a converted artifact, its manifest and the updated index into place, all or nothing.

    Everything that can run out of space is written first (manifest and index temporaries);
    then, under the directory lock with interrupts held, three renames.
    """
    manifest_tmp = _write_json_tmp(manifest_path_for(final), manifest)
    index_tmp = None
    try:
        with _locked(out), _signals_held():
            entries = _index_entries(out, {final.name: manifest})
            index_tmp = _write_json_tmp(out / INDEX_NAME, {"schema": INDEX_SCHEMA,
                                                           "ssrconv": __version__,
                                                           "artifacts": entries})
            _place(tmp, final)
            os.replace(manifest_tmp, manifest_path_for(final))
            os.replace(index_tmp, out / INDEX_NAME)
    finally:
        for leftover in (manifest_tmp, index_tmp):
            if leftover is not None:
                leftover.unlink(missing_ok=True)


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


# The libraries each family's converter imports (all in the ``export`` extra).
_CONVERTER_MODULES = {"onnx": ("tf2onnx", "onnx"), "tflite": (), "coreml": ("coremltools",)}


def _check_converters(options: ExportOptions) -> None:
    """MissingExtraError, before any work, when a converter this export needs is missing."""
    from ssrconv._extras import check

    modules = ["tensorflow", "keras"]
    for target in options.targets:
        modules += [m for m in _CONVERTER_MODULES.get(target.family, ()) if m not in modules]
    check(modules, "export", "ssrconv export")


def export(options: ExportOptions | None = None, progress: Callable[[str], None] | None = None,
           **kwargs) -> list[Artifact]:
    """Export the reference SSR-Net to the targets of ``options`` (or ``ExportOptions(**kwargs)``).

    Returns the artifacts written, in target-table order. Raises SsrconvError subclasses for
    bad input, before any file is written.
    """
    options = options if options is not None else ExportOptions(**kwargs)
    _check_converters(options)  # before anything imports Keras

    from ssrconv.calibration import CalibrationSet
    from ssrconv.converters import converter_for
    from ssrconv.info import library_versions
    from ssrconv.reference import load_reference, weights_provenance
    from ssrconv.reference.model import with_named_outputs
    from ssrconv.reference.preprocess import CONTRACT

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
            _commit(options.out, tmp, final, manifest)
            artifacts.append(Artifact(target, final, manifest_path_for(final), manifest))
            say(f"      {final.name}: {size:,} bytes in {manifest['seconds']:.1f} s")
        return artifacts
    except OSError as err:
        # A full disk, a read-only or vanished directory: one line naming what could not be
        # written; the finally below has removed every temporary file.
        where = err.filename or options.out
        raise SsrconvError(f"{where}: {err.strerror or err} (exporting into --out {options.out}); "
                           "free some space, check permissions or choose another --out") from None
    finally:
        for tmp in tmp_paths:
            if tmp.exists():
                _remove(tmp)
        if not out_existed and options.out.is_dir() and not any(options.out.iterdir()):
            options.out.rmdir()

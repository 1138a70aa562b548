"""The one read path: ``open_artifact(path) -> Artifact`` and the directory discovery parity,
eval, bench, predict and soak all use (docs/READ_PATH.md).

Nothing here trusts a manifest before the bytes on disk are shown to be the bytes it describes:
the artifact's size and sha256 are recomputed and compared with the manifest (and with the
index entry, when the directory has one), then the format's verifier checks the file's
structure, before any runtime is handed it. A file without a manifest (a user's own
``.tflite``) is "unmanaged": its precision is read from the file itself, never guessed from its
name. Weights files (``.h5``) are not artifacts: :func:`open_artifact` refuses them with a
pointer to what to do instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ssrconv.errors import InputError, IntegrityError, ManifestError, ModelFileError, clip
from ssrconv.targets import (
    BUDGET_OF_PRECISION,
    BUDGETS,
    TARGETS,
    WEIGHTS_SUFFIX,
    Budget,
    Format,
    Target,
    artifact_suffixes,
    engines_reading,
    format_of,
    get_engine,
)

MANIFEST_SCHEMA = "ssrconv.artifact/1"
INDEX_SCHEMA = "ssrconv.index/1"
INDEX_NAME = "index.json"
HEADS_OF_TASK = {"age": ("age",), "gender": ("p_male",), "age-gender": ("age", "p_male")}


class NotAnArtifactError(InputError):
    """The path is not an exported artifact (e.g. a weights file)."""


def manifest_path_for(path: Path) -> Path:
    """Where the manifest of an artifact lives: ``<artifact file name>.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def artifact_digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256) of a file, or of a directory package (files in sorted relative order,
    each contributing its relative path and contents)."""
    from ssrconv.assets import sha256_of

    path = Path(path)
    if path.is_file():
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

    ManifestError when it is unreadable, not JSON, not an object, has no ``target``/``sha256``
    or has a field of the wrong type (readers index into it: a wrong type would surface as a
    TypeError).
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
    for key in ("sha256", "bytes"):
        if key not in data:
            raise ManifestError(f"{path}: no {key!r}: the file cannot be verified; re-run ssrconv export")
    if data["target"] not in TARGETS:
        raise ManifestError(f"{path}: unknown target {data['target']!r} (this ssrconv knows "
                            f"{', '.join(TARGETS)}); re-run ssrconv export")
    for head, entry in data.get("weights", {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("name", ""), (str, type(None))) \
                or not isinstance(entry.get("sha256", ""), str):
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
            raise ManifestError(f"{path}: entry {clip(str(entry), 80)!r} does not name a file in this "
                                "directory; re-run ssrconv export")
    return entries


@dataclass(frozen=True)
class Artifact:
    """An exported model on disk, verified: its format, and (when managed) its manifest.

    ``target`` is the manifest's row (managed) or the row of the precision read from the file
    (unmanaged). ``weights`` names, per head, the weights (name, file, sha256) it was exported
    from (empty when unmanaged: the caller's reference weights apply).
    """

    path: Path
    format: Format
    target: Target
    manifest: dict | None
    bytes: int
    sha256: str
    index_entry: dict | None = field(default=None, compare=False)

    @property
    def managed(self) -> bool:
        return self.manifest is not None

    @property
    def manifest_path(self) -> Path:
        return manifest_path_for(self.path)

    @property
    def precision(self) -> str:
        return self.target.precision

    @property
    def budget_class(self) -> str:
        return self.target.budget_class

    def budget(self, budgets: dict[str, Budget] | None = None) -> Budget:
        return (budgets or BUDGETS)[self.budget_class]

    @property
    def task(self) -> str | None:
        return self.manifest.get("task") if self.manifest else None

    @property
    def heads(self) -> tuple[str, ...] | None:
        """The heads the manifest says the artifact has (None: unmanaged, ask the runtime)."""
        return HEADS_OF_TASK.get(self.task) if self.task else None

    @property
    def weights(self) -> dict[str, dict]:
        return dict(self.manifest.get("weights", {})) if self.manifest else {}

    @property
    def label(self) -> str:
        return self.path.name

    def runtime(self, engine: str | None = None, num_threads: int | None = None, **options):
        """Load the artifact on ``engine`` (default: its format's first engine); a one-line
        error when that engine does not read this format or is not installed."""
        chosen = self.format.engine if engine is None else get_engine(engine)
        if self.format.family not in chosen.reads:
            from ssrconv.errors import OptionsError

            readers = [e.name for e in engines_reading(self.format.family)]
            raise OptionsError(f"engine {chosen.name} does not read {self.format.suffix} files "
                               f"({self.label}); engines that do: {', '.join(readers)}")
        from ssrconv.runtimes.base import StaticBatchRuntime

        runtime = chosen.load(self.path, num_threads=num_threads, precision=self.precision,
                              **options)
        batch = self.format.static_batch(self.path)
        return runtime if batch is None else StaticBatchRuntime(runtime, batch)

    def describe(self) -> dict:
        """What a report says about the artifact."""
        return {"file": self.label, "target": self.target.key, "managed": self.managed,
                "bytes": self.bytes, "sha256": self.sha256, "budget_class": self.budget_class}


def _format_or_refuse(path: Path) -> Format:
    if path.suffix.lower() == WEIGHTS_SUFFIX:
        raise NotAnArtifactError(
            f"{path}: a weights file, not an exported artifact; export it first "
            f"(ssrconv export --weights {path} --out DIR), or use it as the reference "
            "(eval/predict/bench --model take weights too)")
    fmt = format_of(path)
    if fmt is None:
        raise ModelFileError(f"{path}: unknown artifact type {path.suffix or '(no suffix)'!r}; "
                             f"expected {', '.join(artifact_suffixes())}")
    return fmt


def open_artifact(path: str | os.PathLike, index_entry: dict | None = None) -> Artifact:
    """Open and verify one artifact.

    Order: the format from the table (a ``.h5`` is refused: weights are not artifacts); the
    manifest (type-checked); the bytes on disk against the manifest's bytes and sha256, and
    against ``index_entry`` when given (IntegrityError naming the file and both hashes: a
    replaced file or a torn commit is never trusted); the format's own structural verifier.
    """
    path = Path(path)
    fmt = _format_or_refuse(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or directory")
    if fmt.package != path.is_dir():
        kind = "a directory package" if fmt.package else "a file"
        raise ModelFileError(f"{path}: a {fmt.suffix} artifact is {kind}; this is not")
    manifest = read_manifest(path)
    size, sha = artifact_digest(path)
    if manifest is not None:
        if (size, sha) != (manifest["bytes"], manifest["sha256"]):
            raise IntegrityError(
                f"{path}: the bytes on disk (sha256 {sha[:16]}..., {size:,} bytes) are not the "
                f"ones its manifest records (sha256 {manifest['sha256'][:16]}..., "
                f"{manifest['bytes']:,} bytes): replaced or edited after export, or an "
                "interrupted export; re-run ssrconv export")
        if index_entry is not None and index_entry.get("sha256") not in (None, sha):
            raise IntegrityError(
                f"{path}: index.json records sha256 {str(index_entry['sha256'])[:16]}..., the "
                f"file and its manifest {sha[:16]}...: an interrupted export; re-run ssrconv export")
        target = TARGETS[manifest["target"]]
        if target.family != fmt.family:
            raise ManifestError(f"{manifest_path_for(path)}: target {target.key} is not a "
                                f"{fmt.suffix} file; re-run ssrconv export")
    fmt.reader().verify(path)
    if manifest is None:
        precision = fmt.reader().file_precision(path)
        target = TARGETS.get(f"{fmt.family}-{precision}") or _unlisted(fmt, precision)
    return Artifact(path, fmt, target, manifest, size, sha, index_entry)


def _unlisted(fmt: Format, precision: str) -> Target:
    """A Target for an unmanaged file whose precision the table does not export (e.g. an fp16
    .onnx made elsewhere): judged by that precision's budget class."""
    return Target(fmt.family, precision, BUDGET_OF_PRECISION.get(precision, "fp32"),
                  f"unmanaged {fmt.description} ({precision}, read from the file)")


@dataclass(frozen=True)
class Found:
    """One entry of a discovered directory: a path to open, or the reason it cannot be."""

    path: Path
    index_entry: dict | None = None
    problem: str | None = None

    def open(self) -> Artifact:
        """Open and verify; the discovery problem, if any, raised as an IntegrityError."""
        if self.problem:
            raise IntegrityError(f"{self.path}: {self.problem}")
        return open_artifact(self.path, self.index_entry)


def discover(path: str | os.PathLike) -> list[Found]:
    """The artifacts of an export directory, or the one artifact ``path`` names.

    With an ``index.json`` the index is the list; an artifact file in the directory that the
    index does not list (an export interrupted between its renames) and an index entry whose
    file is missing are reported as problems, not silently dropped. Without an index, every
    file with an artifact suffix. Nothing is opened here: :meth:`Found.open` verifies.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if not path.is_dir() or format_of(path) is not None or path.suffix.lower() == WEIGHTS_SUFFIX:
        return [Found(path)]
    on_disk = sorted(p for p in path.iterdir() if format_of(p) is not None and not p.name.startswith("."))
    entries = read_index(path)
    if entries is None:
        if not on_disk:
            raise InputError(f"{path}: no artifacts ({', '.join(artifact_suffixes())}) in this "
                             "directory; run ssrconv export --out DIR first")
        return [Found(p) for p in on_disk]
    found = []
    listed = set()
    for entry in entries:
        file = path / entry["file"]
        listed.add(entry["file"])
        problem = None if file.exists() else "listed in index.json but missing; re-run ssrconv export"
        found.append(Found(file, entry, problem))
    for extra in on_disk:
        if extra.name not in listed:
            found.append(Found(extra, None, "not listed in index.json (an interrupted export?); "
                                            "re-run ssrconv export into this directory"))
    if not found:
        raise InputError(f"{path}: index.json lists no artifacts; run ssrconv export --out DIR")
    return found


def open_all(path: str | os.PathLike) -> list[Artifact]:
    """Every artifact of ``path``, verified; the first failure raised (for commands that need
    all of them, e.g. bench). Parity opens each itself, to report every failure."""
    return [f.open() for f in discover(path)]


__all__ = ["Artifact", "Found", "INDEX_NAME", "INDEX_SCHEMA", "MANIFEST_SCHEMA",
           "NotAnArtifactError", "artifact_digest", "discover", "manifest_path_for",
           "open_all", "open_artifact", "read_index", "read_manifest"]

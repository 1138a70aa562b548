"""Export the reference to every requested target, atomically, each with a manifest.

For each artifact: convert into a hidden temporary path inside the output directory, read the
file back (I/O names, shapes, dtypes, quantization, ops), write the manifest and the new
``index.json`` to temporary files, then rename the three into place (:func:`_commit`,
docs/READ_PATH.md). The renames happen while holding an exclusive lock on the output directory (so
a concurrent export into the same directory cannot interleave its renames and index update with
ours) and with SIGINT/SIGTERM deferred for the whole process. An exception, a full disk, Ctrl-C or SIGTERM at any point leaves the directory as it
was (no half-written model, no temporary file, no manifest or index pointing at nothing).
``index.json`` lists the artifacts of the directory, rebuilt from the manifests on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from ssrconv._version import __version__
from ssrconv.artifacts import (
    INDEX_NAME,
    INDEX_SCHEMA,
    MANIFEST_SCHEMA,
    Artifact,
    artifact_digest,
    manifest_path_for,
    read_manifest,
)
from ssrconv.atomic import (CommitPause, deferred_signals, fsync_dir, fsync_path, place, remove_path,
                            temp_path, track_created_dir, write_temp)
from ssrconv.errors import ManifestError, SsrconvError
from ssrconv.options import ExportOptions, without_fast_only
from ssrconv.targets import CALIBRATED_PRECISIONS, format_of


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` itself (no lock file is left behind).

    Another ssrconv export committing into the same directory waits here, so two exports never
    interleave their renames or rebuild the index from each other's half-done state.
    POSIX: ``flock`` on the directory. Elsewhere (Windows) directories cannot be locked; each
    file's commit is still atomic, but two exports at once may each rebuild the index.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _index_entries(out: Path, new: dict[str, dict]) -> list[dict]:
    """Index entries for every artifact of ``out`` with a readable manifest, ``new`` (file name
    -> manifest, not yet renamed into place) taking precedence."""
    manifests = dict(new)
    for manifest_file in out.glob("*.json"):
        artifact = manifest_file.with_suffix("")
        if (artifact.name in manifests or format_of(artifact) is None or not artifact.exists()):
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
    """Put a converted artifact, its manifest and the updated index into place (docs/READ_PATH.md).

    Everything that can run out of space is written and fsynced first (the model, the manifest
    and index temporaries). Then, under the directory lock with SIGINT/SIGTERM deferred for the
    whole process, three renames in this order: the model, its manifest, the index, and the
    directory is fsynced. A crash between them leaves a model whose bytes its (old) manifest
    does not describe, or a manifest the index does not list: readers verify both
    (ssrconv.artifacts), so a torn commit is reported, never trusted.
    """
    fsync_path(tmp)
    manifest_tmp = write_temp(manifest_path_for(final), json.dumps(manifest, indent=2) + "\n")
    index_tmp = None
    try:
        with _locked(out), deferred_signals():
            entries = _index_entries(out, {final.name: manifest})
            index = {"schema": INDEX_SCHEMA, "ssrconv": __version__, "artifacts": entries}
            index_tmp = write_temp(out / INDEX_NAME, json.dumps(index, indent=2) + "\n")
            place(tmp, final)
            fsync_dir(out)
            CommitPause.at("model")
            place(manifest_tmp, manifest_path_for(final))
            fsync_dir(out)
            CommitPause.at("manifest")
            place(index_tmp, out / INDEX_NAME)
            fsync_dir(out)
            CommitPause.at("index")
    finally:
        for leftover in (manifest_tmp, index_tmp):
            if leftover is not None:
                remove_path(leftover)


def _model_metadata(reference, task: str) -> dict[str, str]:
    from ssrconv.reference import weights_provenance
    from ssrconv.reference.preprocess import contract_for

    meta = {"ssrconv.version": __version__, "ssrconv.task": task,
            "ssrconv.preprocessing": json.dumps(contract_for(reference.members), sort_keys=True),
            "ssrconv.outputs": "age: years (0..101); p_male: probability the face is male"}
    for head, prov in weights_provenance(reference).items():
        meta[f"ssrconv.weights.{head}"] = prov["name"]
        meta[f"ssrconv.weights.{head}.sha256"] = prov["sha256"]
    return meta


class _ExportGraphs:
    """The graph each target converts: the fused one of :mod:`ssrconv.graph` in the variant its
    row names (built once per variant and checked exact against the reference before any file
    is written), or the reference's own with ``--graph original`` (which variant each target
    converts: ``Target.variant``, from its row in :mod:`ssrconv.targets`). The int8 recipes
    (tflite_int8/onnx_int8) find their layers in either graph (int8_prep.recipe_layers)."""

    def __init__(self, model, options: ExportOptions, calibration, say, members: dict):
        from ssrconv.graph import fast_graph_blocker

        self.model, self.options, self.calibration, self.say = model, options, calibration, say
        self.members = members
        self.built: dict[str, object] = {}
        # The builder follows each member's spec; a model whose heads one graph cannot serve
        # (fast_graph_blocker) converts its reference graph layer for layer.
        blocker = None if options.graph == "original" else fast_graph_blocker(members)
        self.note = (None if blocker is None else
                     f"--graph fast cannot express this model ({blocker}); it converts its "
                     "reference graph layer for layer (--graph original)")
        if self.note:
            say(f"      {self.note}")
        # a model the fast graph cannot express converts its reference graph: as --graph
        # original, the rows only the fast graph makes are left out of `--to all` or refused
        self.targets, left_out = list(options.targets), list(options.left_out)
        if blocker is not None:
            self.targets, more = without_fast_only(
                self.targets, options.to, f"--graph fast cannot express this model ({blocker})")
            left_out += more
        for target in left_out:
            say(f"      {target.key} left out of --to all: integer-only, made from the fast "
                "graph only (--precision int8-mixed converts the original graph)")

    def for_target(self, target) -> tuple[str, str | None, object, str | None]:
        """("fast" or "original", the fast graph's variant or None, the Keras model, the note
        saying why a fast export converts the original graph, or None)."""
        if self.options.graph == "original" or self.note:
            return "original", None, self.model, self.note
        variant = target.variant
        if variant not in self.built:
            import numpy as np

            from ssrconv.graph.builder import build_export_graph, check_exact
            from ssrconv.reference.synthetic import synthetic_inputs

            fast = build_export_graph(self.model, self.options.task, variant, self.members)
            # Real faces when a calibration set was given, always seeded synthetic inputs.
            inputs = synthetic_inputs(96, seed=13)
            from ssrconv.calibration import REAL_KIND

            if self.calibration is not None and self.calibration.kind == REAL_KIND:
                inputs = np.concatenate([self.calibration.inputs[:200], inputs])
            diffs = check_exact(self.model, fast, inputs)
            self.say(f"      fast graph ({variant}) exact on {len(inputs)} inputs: "
                     + ", ".join(f"max |{k} diff| {v:.2g}" for k, v in diffs.items()))
            self.built[variant] = fast
        return "fast", variant, self.built[variant], None


def _check_converters(options: ExportOptions) -> None:
    """MissingExtraError, before any work, when a converter this export needs is missing (the
    modules and the extra of each format's row in :mod:`ssrconv.targets`)."""
    from ssrconv._extras import check

    check(["tensorflow", "keras"], "export", "ssrconv export")
    for fmt in dict.fromkeys(t.format for t in options.targets):
        check(list(fmt.converter_needs), fmt.extra, f"ssrconv export --to {fmt.family}")


def export(options: ExportOptions | None = None, progress: Callable[[str], None] | None = None,
           **kwargs) -> list[Artifact]:
    """Export the reference SSR-Net to the targets of ``options`` (or ``ExportOptions(**kwargs)``).

    Returns the artifacts written, in target-table order. Raises SsrconvError subclasses for
    bad input, before any file is written.
    """
    options = options if options is not None else ExportOptions(**kwargs)
    _check_converters(options)  # before anything imports Keras

    from ssrconv.calibration import CalibrationSet
    from ssrconv.info import library_versions
    from ssrconv.reference import load_reference, weights_provenance
    from ssrconv.reference.model import with_named_outputs
    from ssrconv.reference.preprocess import contract_for

    say = progress or (lambda message: None)
    out_existed = options.out.exists()
    options.check_paths()
    if not out_existed:
        track_created_dir(options.out)
    tmp_paths: list[Path] = []
    artifacts: list[Artifact] = []
    try:
        say(f"loading the reference ({options.task})")
        reference = load_reference(options.task, options.age_weights, options.gender_weights,
                                   options.arch)
        model = with_named_outputs(reference.model, options.task)
        contract = contract_for(reference.members)
        faces = None
        if (options.calibration is not None
                and any(t.precision in CALIBRATED_PRECISIONS for t in options.targets)):
            say(f"reading calibration faces from {options.calibration}")
            faces = CalibrationSet.from_dir(options.calibration, options.calibration_limit,
                                            kind=options.calibration_kind,
                                            crop_rule=contract["crop_rule"])
        distilled: dict[float, CalibrationSet] = {}  # by the targets' distill_output_weight

        def calibration_for(target) -> CalibrationSet | None:
            if target.precision not in CALIBRATED_PRECISIONS:
                return None
            if faces is not None:
                return faces
            weight = target.distill_output_weight
            if weight not in distilled:
                say("no --calibration: distilling data-free calibration inputs from the model's "
                    "BatchNorm statistics (ZeroQ)" + (", with output targets" if weight else ""))
                distilled[weight] = CalibrationSet.distilled(model, progress=say, cache=True,
                                                             output_weight=weight)
            return distilled[weight]

        metadata = _model_metadata(reference, options.task)
        export_graphs = _ExportGraphs(model, options, faces, say, reference.members)
        family = {head: m.describe() for head, m in reference.members.items()}
        tools = library_versions()
        for number, target in enumerate(export_graphs.targets, start=1):
            final = options.out / target.filename(options.task)
            tmp = temp_path(final, f".part{target.suffix}")
            tmp_paths.append(tmp)
            calibration = calibration_for(target)
            step = "calibrating and converting" if calibration is not None else "converting"
            say(f"[{number}/{len(export_graphs.targets)}] {target.key}: {step} -> {final.name}")
            started = time.perf_counter()
            graph, variant, graph_model, graph_note = export_graphs.for_target(target)
            extra = target.format.converter().convert(graph_model, target, options, tmp,
                                                      calibration, metadata)
            description = target.format.reader().describe(tmp)
            size, sha = artifact_digest(tmp)
            manifest = {
                "schema": MANIFEST_SCHEMA,
                "target": target.key, "family": target.family, "precision": target.precision,
                "description": target.description, "task": options.task,
                "file": final.name, "bytes": size, "sha256": sha,
                **description,
                **extra,
                "graph": graph,
                "batch": options.batch,  # None: variable
                "graph_variant": variant,
                "graph_note": graph_note,
                # The bundled browser app (converters/web_app) cuts faces by the margin rule only.
                "app_note": (f"the demo app crops by the margin rule; this model's contract is "
                             f"{contract['crop_rule']}: feed it aligned crops of your own"
                             if target.format.engine.in_browser and contract["crop_rule"] != "margin"
                             else None),
                "calibration": calibration.describe() if calibration is not None else None,
                "weights": weights_provenance(reference),
                "preprocessing": contract,
                "family": family,
                "parity_budget": target.budget.as_dict(),
                "tools": {"ssrconv": __version__, **tools},
                "seconds": round(time.perf_counter() - started, 3),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            _commit(options.out, tmp, final, manifest)
            artifacts.append(Artifact(final, target.format, target, manifest, size, sha))
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
                remove_path(tmp)
        if not out_existed and options.out.is_dir() and not any(options.out.iterdir()):
            options.out.rmdir()

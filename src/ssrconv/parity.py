"""Parity: run an artifact on its own runtime and compare it with the Keras reference.

Inputs are real faces (the budgets are judged on them, in years of age and gender agreement)
plus a seeded set of synthetic inputs (reported, to show behaviour off the data manifold).
Every statistic is collected for every artifact; :func:`check` raises :class:`ParityError`
holding the full report when any budget is broken, and the CLI decides what is fatal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ssrconv.assets import find_weights
from ssrconv.errors import MissingExtraError, SsrconvError
from ssrconv.targets import BUDGETS, Budget, engines_for, format_of, get_engine
from ssrconv.reference.preprocess import crop_rule_of


class ParityError(SsrconvError):
    """At least one artifact broke its budget; ``report`` holds every result."""

    def __init__(self, report: "ParityReport"):
        self.report = report
        broken = [f"{r.artifact}: {'; '.join(r.violations)}" for r in report.results if not r.passed]
        super().__init__("parity budget broken: " + " | ".join(broken))


@dataclass
class HeadStats:
    """Absolute differences of one head against the reference."""

    max_abs: float
    mean_abs: float
    p99_abs: float
    cosine: float
    agreement: float | None = None  # gender only: fraction with the same p > 0.5 label
    disagreements: int | None = None  # gender only: how many faces got the other label
    faces: int = 0


STAGE_FACES = 64  # the stage tensors are compared on the first faces, at most this many


@dataclass
class ParityResult:
    artifact: str
    target: str
    engine: str
    budget: dict
    faces: int
    synthetic: int
    real: dict[str, HeadStats]
    synthetic_stats: dict[str, HeadStats]
    violations: list[str] = field(default_factory=list)
    stages: dict[str, float] | None = None  # stage tensor -> max |diff| on the first faces
    stages_note: str = ""
    stages_engine: str = ""  # what computed the stage tensors (may differ from ``engine``)
    managed: bool = True
    sha256: str = ""
    weights: dict[str, str] = field(default_factory=dict)  # the reference's weights per head
    member: str = ""  # the SSR-Net family member of each head ("age: wayen820-mxnet, ...")
    crop_rule: str = ""  # the contract's crop rule the faces were cut by
    error: str | None = None  # the artifact could not be verified, loaded or run
    not_run: str | None = None  # this (artifact, engine) pair was not run, and why (reported)
    missing_extra: str | None = None  # not run because its engine is not installed: the extra
    platform: str = ""  # where it ran (linux/amd64, linux/arm64: ssrconv.platforms)
    machine: str = ""  # platform.machine() of the process that ran it
    emulated: bool = False  # under QEMU: numerics of the platform's kernels, never its speed


    @property
    def passed(self) -> bool:
        return not self.violations


@dataclass
class ParityReport:
    faces_dir: str
    results: list[ParityResult]
    reference_engine: str = ""  # what computed the reference: keras, numpy-float32, ...
    # platform name -> machine, CPU features, emulated, runtime versions (ssrconv.platforms)
    platforms: dict[str, dict] = field(default_factory=dict)
    stage_faces: int = STAGE_FACES  # the stage tensors were compared on this many first faces

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def unchecked(self) -> dict[str, str]:
        """Artifacts that no row checked because none of their engines is installed here:
        artifact -> the extra that brings one (``parity --allow-missing-runtimes`` accepts them)."""
        ran = {r.artifact for r in self.results if not r.not_run}
        return {r.artifact: r.missing_extra for r in self.results
                if r.missing_extra and r.artifact not in ran}

    def as_dict(self) -> dict:
        return {"faces_dir": self.faces_dir, "reference_engine": self.reference_engine,
                "passed": self.passed, "unchecked": self.unchecked(), "platforms": self.platforms,
                "results": [{**asdict(r), "passed": r.passed} for r in self.results]}


def head_stats(got: np.ndarray, want: np.ndarray, head: str) -> HeadStats:
    """Difference statistics of ``got`` against ``want`` (float64 arithmetic)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    diff = np.abs(got - want)
    gender = head == "p_male"
    if not np.all(np.isfinite(got)):
        return HeadStats(float("inf"), float("inf"), float("inf"), float("nan"),
                         0.0 if gender else None, len(got) if gender else None, len(got))
    norm = np.linalg.norm(got) * np.linalg.norm(want)
    cosine = float(got @ want / norm) if norm > 0 else float("nan")
    differ = int(np.sum((got > 0.5) != (want > 0.5))) if gender else None
    agreement = 1 - differ / len(got) if gender else None
    return HeadStats(float(diff.max()), float(diff.mean()), float(np.percentile(diff, 99)),
                     cosine, agreement, differ, len(got))


def violations(stats: dict[str, HeadStats], budget: Budget) -> list[str]:
    """Every broken budget line, naming the statistic, the measured value and the limit."""
    broken = []
    age = stats.get("age")
    if age is not None:
        for name, value, limit in (("max age diff", age.max_abs, budget.max_age),
                                   ("mean age diff", age.mean_abs, budget.mean_age),
                                   ("p99 age diff", age.p99_abs, budget.p99_age)):
            if limit is not None and not value <= limit:
                broken.append(f"{name} {value:.4g} y > {limit:g} y")
    gender = stats.get("p_male")
    if gender is not None:
        if budget.max_p_male is not None and not gender.max_abs <= budget.max_p_male:
            broken.append(f"max P(male) diff {gender.max_abs:.3g} > {budget.max_p_male:g}")
        floor = budget.min_gender_agreement
        if floor is not None and not gender.agreement >= floor:
            why = f"{gender.disagreements} of {gender.faces} faces differ"
            if floor < 1 and gender.faces < 1 / (1 - floor):  # a single borderline face decides
                why += f"; {floor:.0%} allows none on fewer than {round(1 / (1 - floor))} faces"
            broken.append(f"gender agreement {gender.agreement:.2%} < {floor:.0%} ({why})")
    return broken


def parse_budget_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Budget]:
    """``["int8.mean_age=0.2", ...]`` -> the budget table with those values replaced."""
    table = dict(BUDGETS)
    for item in items:
        try:
            key, value = item.split("=", 1)
            klass, stat = key.split(".", 1)
            table[klass] = replace(table[klass], **{stat: float(value)})
        except (ValueError, KeyError, TypeError):
            fields = ", ".join(Budget.__dataclass_fields__)
            raise SsrconvError(f"--budget {item!r}: expected CLASS.STAT=VALUE with CLASS in "
                               f"{', '.join(BUDGETS)} and STAT in {fields}") from None
    return table



class References:
    """Reference runtimes and outputs, one per weights combination, built on first use.

    A managed artifact is compared with the weights its manifest names, found by sha256
    (:func:`ssrconv.assets.find_weights`); an unmanaged one with ``age_weights``/
    ``gender_weights`` (default: the registry defaults).
    """

    def __init__(self, age_weights=None, gender_weights=None, candidates=(), engine: str = "auto"):
        self.defaults = {"age": age_weights, "gender": gender_weights}
        self.candidates = tuple(candidates)
        self.engine = engine  # see ssrconv.reference.load_reference_runtime
        self.runtimes: dict[tuple, object] = {}
        self.cache: dict[tuple, dict[str, np.ndarray]] = {}

    def weights_for(self, artifact) -> tuple:
        chosen = dict(self.defaults)
        for head, entry in artifact.weights.items():
            chosen[head] = find_weights(head, entry, self.candidates)
        return chosen["age"], chosen["gender"]

    def runtime(self, weights: tuple):
        from ssrconv.reference import load_reference_runtime

        if weights not in self.runtimes:
            age, gender = weights
            self.runtimes[weights] = load_reference_runtime(
                "age-gender", age_weights=age, gender_weights=gender, engine=self.engine)
        return self.runtimes[weights]

    def outputs(self, weights: tuple, inputs: np.ndarray, key: str) -> dict[str, np.ndarray]:
        if (weights, key) not in self.cache:
            self.cache[(weights, key)] = run_batched(self.runtime(weights), inputs)
        return self.cache[(weights, key)]


def stage_differences(runtime, reference, inputs: np.ndarray) -> tuple[dict[str, float] | None, str]:
    """Max |diff| of every stage tensor (probabilities, deltas, local deltas) against the
    reference, or (None, why) when the runtime cannot expose them."""
    from ssrconv.stages import StagesUnavailable, stage_specs

    specs = stage_specs(runtime.heads)
    both = set(runtime.heads) == {"age", "p_male"}
    try:
        got = runtime.stage_outputs(inputs, specs)
    except StagesUnavailable as err:
        return None, str(err)
    # The reference is the two-head model: its layers always carry the head prefix.
    ref_specs = specs if both else stage_specs(("age", "p_male"))
    want = reference.stage_outputs(inputs, ref_specs)
    return {s.key: float(np.max(np.abs(got[s.key].astype(np.float64) - want[s.key])))
            for s in specs}, ""


def _failed(path: Path, reason: str, target: str = "-", engine: str = "-") -> ParityResult:
    return ParityResult(artifact=path.name, target=target, engine=engine, budget={}, faces=0,
                        synthetic=0, real={}, synthetic_stats={}, violations=[reason],
                        error=reason)


def check(items, faces: np.ndarray, faces_dir: str = "", synthetic: int = 64, seed: int = 0,
          budgets: dict[str, Budget] | None = None, age_weights=None, gender_weights=None,
          weights_candidates=(), engine: str | None = None, engines=(), progress=None,
          raise_on_failure: bool = True, reference_engine: str = "auto",
          platforms=(), faces_for=None, stage_faces: int = STAGE_FACES) -> ParityReport:
    """Compare every artifact of ``items`` (paths, or :class:`ssrconv.artifacts.Found` from
    :func:`ssrconv.artifacts.discover`) with the reference built from its own weights.

    Each artifact is opened and verified (bytes against its manifest) before anything trusts
    it; one that fails to verify, load or run becomes a failed row with its reason and the
    others are still measured. ``engines`` (``["all"]`` or names) runs each artifact on every
    listed engine that reads its format, one row per pair; a pair that cannot run here (engine
    not installed, a file the engine refuses by design) is a reported "not run" row, not a
    silent skip. ``platforms`` (names, see :mod:`ssrconv.platforms`; default: this machine's)
    runs every pair on each platform, one row per (artifact, engine, platform), the rows of a
    pair side by side; another instruction set runs in a worker process (emulated on this
    machine: :mod:`ssrconv.runtimes.remote`), judged against the same host reference and
    budgets. Raises ParityError when any row failed (after all of them),
    unless ``raise_on_failure`` is False. ``reference_engine``: "auto" (Keras when TensorFlow
    is installed, else numpy), "keras", "numpy", "numpy-float64". ``faces_for(crop_rule)``,
    when given, returns the real faces cut by an artifact's crop rule (its manifest's
    contract: margin crop or 5-point alignment); else ``faces`` serve every artifact.
    ``stage_faces``: the stage tensors are compared on that many of the first faces (a second
    pass through each artifact; fewer keeps an emulated run short).
    """
    import contextlib

    from ssrconv.artifacts import Found
    from ssrconv.platforms import host_platform, machine_info, resolve
    from ssrconv.reference.synthetic import synthetic_inputs

    budgets = budgets or BUDGETS
    say = progress or (lambda message: None)
    synth = synthetic_inputs(synthetic, seed) if synthetic else np.empty((0, 64, 64, 3), np.float32)
    references = References(age_weights, gender_weights, weights_candidates, reference_engine)
    places = [resolve(name) for name in dict.fromkeys(platforms or [host_platform()])]
    results = []
    with contextlib.ExitStack() as stack:
        workers = {p.name: stack.enter_context(_start_worker(p, say)) for p in places if not p.host}
        described = {p.name: _platform_entry(p, workers.get(p.name), machine_info) for p in places}
        for number, item in enumerate(items, start=1):
            found = item if isinstance(item, Found) else Found(Path(item))
            try:
                artifact = found.open()
            except MissingExtraError as err:
                # Reading this format's facts needs its runtime's library: nothing can check it here.
                fmt = format_of(found.path)
                results.append(_not_installed(found.path.name, "-", (engine or fmt.engine.name),
                                              str(err), _extra_in(str(err))))
                say(f"[{number}/{len(items)}] {found.path.name}: not run: {err}")
                continue
            except SsrconvError as err:
                results.append(_failed(found.path, str(err)))
                say(f"[{number}/{len(items)}] {found.path.name}: FAILED: {err}")
                continue
            for name in engines_for(artifact.format.family, engine, engines):
                chosen = get_engine(name or artifact.format.engine.name)
                for place in places:
                    worker = workers.get(place.name)
                    where = {"platform": place.name, "machine": described[place.name]["machine"],
                             "emulated": place.emulated}
                    on = f" on {place.name}" if len(places) > 1 or not place.host else ""
                    why, missing = _why_not_run(artifact, chosen, worker, bool(engines))
                    if why:
                        results.append(replace(_not_installed(
                            artifact.label, artifact.target.key, chosen.name, why, missing), **where))
                        say(f"[{number}/{len(items)}] {artifact.label} on {chosen.name}{on}: "
                            f"not run: {why}")
                        continue
                    try:
                        rule = crop_rule_of((artifact.manifest or {}).get("preprocessing"))
                        own_faces = faces_for(rule) if faces_for is not None else faces
                        result = _check_one(artifact, own_faces, synth, budgets, references, name,
                                            worker, number, len(items), say, on, stage_faces)
                        result.crop_rule = rule
                    except SsrconvError as err:
                        result = _failed(found.path, str(err), target=artifact.target.key,
                                         engine=chosen.name)
                        say(f"[{number}/{len(items)}] {found.path.name}{on}: FAILED: {err}")
                    results.append(replace(result, **where))
    engines = sorted({r.engine for r in references.runtimes.values()})
    report = ParityReport(faces_dir=faces_dir, results=results,
                          reference_engine=", ".join(engines), platforms=described,
                          stage_faces=min(stage_faces, len(faces)))
    if raise_on_failure and not report.passed:
        raise ParityError(report)
    return report


def _why_not_run(artifact, chosen, worker, refusals: bool) -> tuple[str | None, str | None]:
    """(why the pair is not run, the extra that would bring its engine), or (None, None)."""
    if worker is not None:
        if not worker.engines.get(chosen.name):
            return (f"engine {chosen.name} has no runtime in the {worker.platform.name} root "
                    "filesystem (no aarch64 Linux wheel, or not installed by make arm64)"), None
        why = chosen.refuses(artifact.path, worker.versions)
        # a refusal by design (the host's engine refuses too) follows --engines as here; one
        # only the platform's runtime version makes (LiteRT 1.4 on aarch64) is that platform's
        # runtime lacking, as a missing runtime: a not-run row either way
        platform_only = why is not None and chosen.refuses(artifact.path) is None
        return (why if refusals or platform_only else None), None
    if artifact.format.family not in chosen.reads:
        return None, None  # loading it says why, as a failed row
    why = chosen.why_not_run(artifact.path, refusals=refusals)
    return why, (None if not why or chosen.installed() else (chosen.extra or "all"))


def _start_worker(place, say):
    from ssrconv.platforms import describe_features
    from ssrconv.runtimes.remote import Worker

    say(f"starting the {place.name} worker (emulated: QEMU in {place.root}) ...")
    worker = Worker(place)
    say(f"{place.name}: {worker.info['machine']}, Python {worker.info['python']}, emulated by "
        f"QEMU; CPU features {describe_features(worker.info)}")
    return worker


def _platform_entry(place, worker, machine_info) -> dict:
    """What the report says about a platform: machine, key CPU features, how it ran."""
    if worker is None:
        info, versions = machine_info(), {}
        runner = "this process (native)"
    else:
        info, versions = worker.info, worker.versions
        runner = f"QEMU user-mode emulation (binfmt_misc qemu-aarch64), root filesystem {place.root}"
    return {"machine": info["machine"], "emulated": place.emulated, "host": place.host,
            "runner": runner, "python": info["python"], "key_features": info["key_features"],
            "features": info["features"], "features_source": info["features_source"],
            "versions": {k: v for k, v in versions.items() if v}}


def _not_installed(label: str, target: str, engine: str, why: str,
                   missing_extra: str | None) -> ParityResult:
    return ParityResult(artifact=label, target=target, engine=engine, budget={}, faces=0,
                        synthetic=0, real={}, synthetic_stats={}, not_run=why,
                        missing_extra=missing_extra)


def _extra_in(message: str) -> str:
    """The extra a MissingExtraError's message names (``pip install 'ssrconv[X]'``), or the
    message's own install command when no extra brings the module."""
    import re

    found = re.search(r"ssrconv\[([\w,-]+)\]", message)
    return found.group(1) if found else message.rsplit(": ", 1)[-1]


def _check_one(artifact, faces, synth, budgets, references, engine, worker, number, total, say,
               on="", stage_faces=STAGE_FACES) -> ParityResult:
    budget = artifact.budget(budgets)
    weights = references.weights_for(artifact)
    if worker is None:
        runtime = artifact.runtime(engine=engine)
    else:
        runtime = worker.runtime(artifact.path, engine)
    with runtime:  # closed before the next engine starts
        return _measure(artifact, runtime, faces, synth, budget, weights, references, number,
                        total, say, on, stage_faces)


def _measure(artifact, runtime, faces, synth, budget, weights, references, number, total,
             say, on="", stage_faces=STAGE_FACES) -> ParityResult:
    managed = "" if artifact.managed else ", unmanaged: precision read from the file"
    say(f"[{number}/{total}] {artifact.label} on {runtime.engine}{on} ({artifact.budget_class} "
        f"budget{managed})")
    real_ref = references.outputs(weights, faces, "real")
    real_got = run_batched(runtime, faces)
    real = {h: head_stats(real_got[h], real_ref[h], h) for h in runtime.heads}
    synth_stats = {}
    if len(synth):
        synth_ref = references.outputs(weights, synth, "synthetic")
        synth_got = run_batched(runtime, synth)
        synth_stats = {h: head_stats(synth_got[h], synth_ref[h], h) for h in runtime.heads}
    stages, stages_note = stage_differences(runtime, references.runtime(weights),
                                            faces[:stage_faces])
    result = ParityResult(artifact=artifact.label, target=artifact.target.key,
                          engine=runtime.engine, budget=budget.as_dict(), faces=len(faces),
                          synthetic=len(synth), real=real, synthetic_stats=synth_stats,
                          violations=violations(real, budget), stages=stages,
                          stages_note=stages_note,
                          stages_engine=runtime.stage_engine or runtime.engine,
                          managed=artifact.managed,
                          sha256=artifact.sha256,
                          weights={"age": str(weights[0] or "age-wiki"),
                                   "gender": str(weights[1] or "gender-wiki")},
                          member=_members_label(artifact))
    say(f"      {'ok' if result.passed else 'BROKEN: ' + '; '.join(result.violations)}")
    return result


def _members_label(artifact) -> str:
    """The family member of each head the artifact was exported from (manifest ``family``)."""
    family = (artifact.manifest or {}).get("family") or {}
    heads = [h for h in ("age", "gender") if h in family]
    if not heads:
        return "original" if artifact.managed else "-"
    return ", ".join(f"{h}: {family[h].get('member', '?')}" for h in heads)


def run_batched(runtime, inputs: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    """Run ``inputs`` through ``runtime`` in batches of ``batch``."""
    parts = [runtime.run(inputs[i:i + batch]) for i in range(0, len(inputs), batch)]
    return {h: np.concatenate([p[h] for p in parts]) for h in runtime.heads}



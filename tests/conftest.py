"""Shared fixtures. Real weights and faces come from the environment, never from a fixed path.

``SSRCONV_ASSETS`` names the directory holding the published weights, ``SSRCONV_FACES`` the
UTKFace-style labelled chips, ``SSRCONV_IMAGES`` the sample photographs, ``SSRCONV_PORTS`` the
weights published by SSR-Net's ports (shared/ports). Outside CI a missing
variable skips the tests that need it (with the reason); in CI (``CI=true``) it fails them.

The suite shares its expensive work (issue 24): one ``--to all`` export (``export_dir``; the MXNet
port's pair has one too, ``mxnet_export_dir``), one export factory for everything else
(``exported``), one Keras reference per task and weights
(``keras_reference``, ``references``), one numpy reference per engine (``numpy_references``) and
one in-process CLI runner (``cli``). A new test asks these fixtures instead of exporting,
building a reference or starting ``ssrconv`` in a subprocess of its own; it keeps its own export
or subprocess only when that is what it tests (the exporter itself, atomicity, signals, process
isolation, a fresh process's output).

``make test`` runs the suite on two pytest-xdist workers. The exports are made once per run, not
once per worker: ``_made_once`` builds each in a directory both workers share, under a file lock,
and the worker that comes second waits for it and reads the same files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

# One BLAS thread per process: `make test` runs two workers on two cores, and OpenBLAS's default
# (a thread per core) in each of them spends its time spinning on the other's cores: an int8
# export calibrated on the dev faces took 77 CPU-s with it, 37 with one thread (the same file).
# Set before any test imports numpy; the xdist workers and the tests' subprocesses inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

SHARED_EXPORTS = ("export_dir", "exported", "mxnet_export_dir")


def pytest_configure(config):
    """``SSRCONV_CPUTIME_DIR=DIR``: each test phase's CPU seconds, saved in DIR (tests/cputime.py)."""
    if os.environ.get("SSRCONV_CPUTIME_DIR"):
        from cputime import CpuTimes

        config.pluginmanager.register(CpuTimes(os.environ["SSRCONV_CPUTIME_DIR"]), "cputime")


def pytest_collection_modifyitems(config, items):
    """On pytest-xdist workers (``make test``): the tests that need the shared exports first,
    the slow ones at the front (the arm64 rows wait for ``--to all``, then run for minutes in
    QEMU), then the tests that need no export. ``--dist worksteal`` hands each worker one
    contiguous half of this order, so one worker starts making the exports while the other runs
    tests that need none, instead of both waiting on the same export. The sort is stable and
    the same in every worker (xdist requires identical collections)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def needs_exports(item) -> bool:
        return any(name in getattr(item, "fixturenames", ()) for name in SHARED_EXPORTS)

    items.sort(key=lambda item: (not needs_exports(item),
                                 not (needs_exports(item) and item.get_closest_marker("slow"))))


def _need_dir(variable: str) -> Path:
    value = os.environ.get(variable)
    if value and Path(value).is_dir():
        return Path(value)
    message = f"{variable} is not set to a directory (see README, 'Two commands')"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must provide it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    return _need_dir("SSRCONV_ASSETS")


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    return _need_dir("SSRCONV_FACES")


@pytest.fixture(scope="session")
def images_dir() -> Path:
    return _need_dir("SSRCONV_IMAGES")


@pytest.fixture(scope="session")
def ports_dir() -> Path:
    """The ports' published weights (shared/ports: the MXNet and PyTorch ports, MegaAge .h5)."""
    return _need_dir("SSRCONV_PORTS")


@pytest.fixture(scope="session")
def faces(faces_dir):
    """All labelled chips of SSRCONV_FACES, prepared by the one preprocessing contract."""
    from ssrconv.reference.preprocess import load_faces

    return load_faces(faces_dir)


@pytest.fixture(scope="session")
def references(assets_dir):
    """``references(task="age-gender", age_weights=None, gender_weights=None) -> KerasRuntime``:
    the Keras reference of ``task`` with those weights (registry names; None: age-wiki,
    gender-wiki), built once per task and weights per session. Its ``.reference`` is the
    :class:`ssrconv.reference.Reference` (the Keras model and its weights' provenance). Tests
    must not change its model's weights (they build their own for that)."""
    from ssrconv.assets import DEFAULT_AGE_WEIGHTS, DEFAULT_GENDER_WEIGHTS
    from ssrconv.loading import load_runtime

    built = {}

    def get(task: str = "age-gender", age_weights: str | None = None,
            gender_weights: str | None = None):
        age = (age_weights or DEFAULT_AGE_WEIGHTS) if task != "gender" else None
        gender = (gender_weights or DEFAULT_GENDER_WEIGHTS) if task != "age" else None
        if (task, age, gender) not in built:
            built[task, age, gender] = load_runtime(backend="keras", task=task, age_weights=age,
                                                    gender_weights=gender)
        return built[task, age, gender]

    return get


@pytest.fixture(scope="session")
def keras_reference(references):
    """The default Keras reference (age-gender) as a runtime: what ``load_runtime(backend="keras")``
    returns, built once per session."""
    return references("age-gender")


@pytest.fixture(scope="session")
def reference_age_gender(keras_reference):
    """The default reference (age-wiki + gender-wiki) in one model: the session Keras
    reference's :class:`ssrconv.reference.Reference`."""
    return keras_reference.reference


@pytest.fixture(scope="session")
def numpy_references(assets_dir):
    """``numpy_references(engine="numpy-float32") -> NumpyReference``: the default reference
    (age-gender) on a numpy engine ("numpy-float32" or "numpy-float64"), loaded once per engine
    per session."""
    from ssrconv.reference import load_reference_runtime

    loaded = {}

    def get(engine: str = "numpy-float32"):
        if engine not in loaded:
            loaded[engine] = load_reference_runtime("age-gender", engine=engine)
        return loaded[engine]

    return get


@pytest.fixture
def isolated_assets(tmp_path, monkeypatch):
    """An empty mirror and cache, and no network: nothing resolves unless the test puts it there."""
    mirror = tmp_path / "mirror"
    cache = tmp_path / "cache"
    mirror.mkdir()
    monkeypatch.setenv("SSRCONV_ASSETS", str(mirror))
    monkeypatch.setenv("SSRCONV_CACHE", str(cache))
    monkeypatch.setenv("SSRCONV_MIRROR_URL", "http://127.0.0.1:9/")  # discard port: refused
    return mirror, cache


def _made_once(tmp_path_factory, name: str, make) -> Path:
    """``make(out)`` run once per test run for ``name``, whichever worker asks first; returns
    ``out``. Under pytest-xdist the directory is in the run's temporary root, which every worker
    shares (each worker's own root is a subdirectory of it); a worker that finds another one
    making it waits on the lock. A ``make`` that failed leaves no ``.done`` file: the next worker
    to ask starts again from an empty directory (and fails the same way)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    shared = root / "made-once"
    shared.mkdir(exist_ok=True)
    out, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            make(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def made_once(tmp_path_factory):
    """``made_once(name, make) -> Path``: ``make(out)`` run once per test run for ``name`` (the
    xdist workers share the directory ``out``; see ``_made_once``). For a test module's own
    expensive result that several of its tests read (save it under ``out``)."""
    return lambda name, make: _made_once(tmp_path_factory, name, make)


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory, assets_dir, faces_dir):
    """``ssrconv export --to all`` of the default age-gender reference, done once per run (the
    xdist workers share it; int8 calibrated on SSRCONV_FACES). Read only: a test that changes
    files copies them first."""
    from ssrconv.exporter import export

    def make(out):
        export(to=("all",), calibration=faces_dir, out=out / "all")

    return _made_once(tmp_path_factory, "export-all", make) / "all"


@pytest.fixture(scope="session")
def mxnet_export_dir(tmp_path_factory, ports_dir, faces_dir):
    """``ssrconv export --to all`` of the MXNet port's age and gender pair (shared/ports), done
    once per run (int8 calibrated on SSRCONV_FACES, cut by the pair's 5-point alignment). Read
    only."""
    from ssrconv.exporter import export

    pair = ports_dir / "wayen820-mxnet"

    def make(out):
        export(to=("all",), task="age-gender", calibration=faces_dir, out=out / "all",
               age_weights=str(pair / "ssr2_megaage_1_1/model-0000.params"),
               gender_weights=str(pair / "ssr2_imdb_gender_1_1/model-0000.params"))

    return _made_once(tmp_path_factory, "export-all-mxnet", make) / "all"


@pytest.fixture(scope="session")
def exported(request, tmp_path_factory, assets_dir, faces_dir):
    """``exported(key, **options) -> Artifact``: the target ``key`` (a row of the target table,
    e.g. "tflite-fp32") exported from the default weights with ``ssrconv.exporter.export``
    options (``task``, ``graph``, ``batch``, ``calibration``...), once per run per key and
    options, opened and verified (``.path``, ``.manifest``, ``.target``...). Read only: a test
    that changes files copies them first.

    An int8 or int16x8 target without ``calibration`` is calibrated on SSRCONV_FACES, as in
    ``export_dir``.
    When the options are the ``--to all`` export's and a selected test needs ``export_dir``
    anyway, the artifact is that export's file (the same converter, options and bytes), so no
    row is converted twice; otherwise it is exported alone into a directory of its own, and
    what the export said is kept (``export_progress``).
    """
    from ssrconv.artifacts import open_artifact
    from ssrconv.exporter import export
    from ssrconv.options import ExportOptions
    from ssrconv.targets import CALIBRATED_PRECISIONS, EXPORTED_BY_ALL, TARGETS

    # Asked for only when a row of it is wanted: a worker that needs other rows does not wait
    # while the other worker makes the --to all export (minutes, under its lock).
    all_wanted = any("export_dir" in item.fixturenames for item in request.session.items)
    made: dict[tuple, object] = {}

    def export_one(key: str, **options):
        target = TARGETS[key]
        if target.precision in CALIBRATED_PRECISIONS:
            options.setdefault("calibration", faces_dir)
        fields = ExportOptions(to=(target.family,), precision=(target.precision,), **options)
        as_in_all = {"calibration": faces_dir} if target.precision in CALIBRATED_PRECISIONS else {}
        default = ExportOptions(to=(target.family,), precision=(target.precision,), **as_in_all)
        memo = (key, tuple(sorted(options.items())))
        if memo not in made:
            if all_wanted and key in EXPORTED_BY_ALL and fields == default:
                path = request.getfixturevalue("export_dir") / target.filename(fields.task)
            else:
                def make(out):
                    said = []
                    (artifact,) = export(dataclasses.replace(fields, out=out / "out"),
                                         progress=said.append)
                    (out / "artifact").write_text(artifact.path.name)
                    (out / "progress.txt").write_text("".join(f"{line}\n" for line in said))

                digest = hashlib.sha256(repr(memo).encode()).hexdigest()[:16]
                out = _made_once(tmp_path_factory, f"exported-{key}-{digest}", make)
                path = out / "out" / (out / "artifact").read_text()
            made[memo] = open_artifact(path)
        return made[memo]

    return export_one


@pytest.fixture(scope="session")
def export_progress():
    """``export_progress(artifact) -> str``: the progress lines (what ``ssrconv export`` prints
    on stderr) of the export that wrote ``artifact``, an ``exported`` artifact exported alone
    (not one of the ``--to all`` export's files)."""
    return lambda artifact: (artifact.path.parent.parent / "progress.txt").read_text()


@pytest.fixture(scope="session")
def parity_inputs(faces):
    """The parity inputs: the 300 real faces of SSRCONV_FACES, then 64 seeded synthetic ones."""
    import numpy as np

    from ssrconv.reference.synthetic import synthetic_inputs

    return np.concatenate([faces.inputs, synthetic_inputs(64)])


@pytest.fixture(scope="session")
def golden(tmp_path_factory, assets_dir, parity_inputs):
    """``golden(name) -> float64 array``: the independent oracle (tests/golden_numpy.py, the
    original JSON graph) with registry weights ``name`` on every row of ``parity_inputs``,
    computed once per weights file and run (each row is computed on its own: slice the rows you
    need). A pure-numpy float64 forward pass of 364 inputs takes tens of seconds, so the
    workers share it as a saved array."""
    import numpy as np

    from golden_assets import golden_outputs

    computed = {}

    def get(name: str):
        if name not in computed:
            def make(out):
                np.save(out / "golden.npy", golden_outputs(assets_dir, name, parity_inputs))

            saved = _made_once(tmp_path_factory, f"golden-{name}", make) / "golden.npy"
            computed[name] = np.load(saved, allow_pickle=False)
        return computed[name]

    return get


@pytest.fixture(scope="session")
def reference_outputs(faces, keras_reference):
    """The Keras reference's ages and P(male) on every face of SSRCONV_FACES, computed once."""
    return keras_reference.run(faces.inputs)


@pytest.fixture(scope="session")
def budget_check(faces, reference_outputs):
    """``check(runtime, budget_class) -> (violations, stats)``: ``runtime`` on every face against
    the reference, judged by the project's budget (ssrconv.parity, the same as the CLI)."""
    from ssrconv.parity import head_stats, run_batched, violations
    from ssrconv.targets import BUDGETS

    def check(runtime, budget_class):
        got = run_batched(runtime, faces.inputs)
        stats = {h: head_stats(got[h], reference_outputs[h], h) for h in runtime.heads}
        return violations(stats, BUDGETS[budget_class]), stats

    return check


@pytest.fixture(scope="session")
def stage_drift(faces, keras_reference):
    """``drift(path, n=8) -> {stage tensor: max |diff|}``: the artifact at ``path`` on its own
    engine against the reference, on the first ``n`` faces (ssrconv.parity.stage_differences);
    fails when the 18 stage tensors are not all found."""
    from ssrconv.parity import stage_differences
    from ssrconv.loading import load_runtime

    def drift(path, n=8):
        stages, note = stage_differences(load_runtime(path), keras_reference, faces.inputs[:n])
        assert stages is not None and len(stages) == 18, note
        return stages

    return drift


@dataclass
class CliResult:
    """What ``ssrconv ARGS`` ended with: its exit code and everything it wrote."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _as_a_fresh_process():
    """Inside the block, warnings and log records reach stderr as they do in a fresh
    ``ssrconv`` process (Python's default warning filters, logging's last-resort handler), not
    pytest's collectors; the signal handlers and the working directory are restored after."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    cwd = os.getcwd()
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                         ResourceWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        warnings.showwarning = _print_warning
        root.handlers = []
        try:
            yield
        finally:
            root.handlers = handlers
            for signum, handler in signals.items():
                if handler is not None:  # None: set outside Python, cannot be put back
                    signal.signal(signum, handler)
            os.chdir(cwd)


def _print_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@pytest.fixture
def cli(capfd):
    """``cli(*args, cwd=None) -> CliResult``: ``ssrconv ARGS`` run in this process by the console
    script's own entry point (``ssrconv.cli.main``: exit codes, one-line errors), its stdout and
    stderr captured at the file descriptors, so a library's native output counts as it would in
    a terminal. A few seconds cheaper per call than a subprocess (no Python start, no TensorFlow
    import). Tests about signals, process isolation or the installed script use a subprocess."""
    from ssrconv.cli import main

    def run(*args, cwd=None) -> CliResult:
        capfd.readouterr()  # what the test printed before is not the command's output
        with _as_a_fresh_process():
            if cwd is not None:
                os.chdir(cwd)
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as done:
                code = 0 if done.code is None else done.code
        out, err = capfd.readouterr()
        return CliResult(code, out, err)

    return run

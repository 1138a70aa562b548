"""Shared fixtures. Real weights and faces come from the environment, never from a fixed path.

``SSRCONV_ASSETS`` names the directory holding the published weights, ``SSRCONV_FACES`` the
UTKFace-style labelled chips, ``SSRCONV_IMAGES`` the sample photographs. Outside CI a missing
variable skips the tests that need it (with the reason); in CI (``CI=true``) it fails them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _need_dir(variable: str) -> Path:
    value = os.environ.get(variable)
    if value and Path(value).is_dir():
        return Path(value)
    message = f"{variable} is not set to a directory (see README, 'Running the tests')"
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
def faces(faces_dir):
    """All labelled chips of SSRCONV_FACES, prepared by the one preprocessing contract."""
    from ssrconv.reference.preprocess import load_faces

    return load_faces(faces_dir)


@pytest.fixture(scope="session")
def reference_age_gender(assets_dir):
    """The default reference (age-wiki + gender-wiki) in one model."""
    from ssrconv.reference import load_reference

    return load_reference("age-gender")


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


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory, assets_dir, faces_dir):
    """``ssrconv export --to all`` of the default age-gender reference, done once per session
    (int8 calibrated on SSRCONV_FACES)."""
    from ssrconv.exporter import export

    out = tmp_path_factory.mktemp("export") / "all"
    export(to=("all",), calibration=faces_dir, out=out)
    return out


@pytest.fixture(scope="session")
def reference_outputs(faces):
    """The Keras reference's ages and P(male) on every face of SSRCONV_FACES, computed once."""
    from ssrconv.loading import load_runtime

    return load_runtime(backend="keras").run(faces.inputs)


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
def stage_drift(faces):
    """``drift(path, n=8) -> {stage tensor: max |diff|}``: the artifact at ``path`` on its own
    engine against the reference, on the first ``n`` faces (ssrconv.parity.stage_differences);
    fails when the 18 stage tensors are not all found."""
    from ssrconv.parity import stage_differences
    from ssrconv.loading import load_runtime

    def drift(path, n=8):
        stages, note = stage_differences(load_runtime(path), load_runtime(backend="keras"),
                                         faces.inputs[:n])
        assert stages is not None and len(stages) == 18, note
        return stages

    return drift

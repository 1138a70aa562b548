"""The independent oracle (golden_numpy, driven by the original JSON graph) run on a registry
weights file: shared by test_golden and test_numpy_engine. Kept out of golden_numpy itself,
which imports no product code."""

from __future__ import annotations

import golden_numpy

from ssrconv.assets import ASSETS

# The gender .h5 names its stage layers pred_stage1..3 where the original graph has pred_age_stage.
GENDER_RENAME = {f"pred_age_stage{k}": f"pred_stage{k}" for k in (1, 2, 3)}


def golden_outputs(assets_dir, name, batch, return_all=False):
    """golden_numpy.forward of registry weights ``name`` on ``batch`` (float64)."""
    asset = ASSETS[name]
    V = 101.0 if asset.kind == "age" else 1.0
    rename = GENDER_RENAME if asset.kind == "gender" else None
    return golden_numpy.forward(assets_dir / ASSETS["original-config"].filename,
                                assets_dir / asset.filename, batch, V, rename, return_all)

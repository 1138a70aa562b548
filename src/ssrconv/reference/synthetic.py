"""Seeded synthetic inputs shaped like the model's faces (64x64 BGR float32 0..255): what parity
reports beside real faces, and what exports check their graphs on, off the data manifold."""

from __future__ import annotations

import numpy as np


def synthetic_inputs(n: int, seed: int = 0) -> np.ndarray:
    """Seeded synthetic faces-shaped inputs: uniform noise, smooth gradients, flat fields."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 64, 64, 3), np.float32)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out[i] = rng.uniform(0, 255, (64, 64, 3))
        elif kind == 1:
            a, b, c = rng.uniform(-1, 1, 3)
            base = 127.5 + 127.5 * np.tanh(a * xx + b * yy + c)
            out[i] = np.clip(base[..., None] + rng.normal(0, 10, (64, 64, 3)), 0, 255)
        else:
            out[i] = rng.uniform(0, 255, (1, 1, 3))
    return out

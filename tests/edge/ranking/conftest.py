"""Fixtures shared by the ranking tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edge.ranking.stage2 import FEATURES


def _random_stage2_weights(seed: int = 3, hidden: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    F = len(FEATURES)
    f32 = np.float32
    return {"mean": rng.normal(0, 0.1, F).astype(f32), "inv_std": rng.uniform(0.5, 2, F).astype(f32),
            "w1": rng.normal(0, 0.5, (F, hidden)).astype(f32), "b1": rng.normal(0, 0.1, hidden).astype(f32),
            "wl": rng.normal(0, 1.0, F).astype(f32), "w2": rng.normal(0, 1.0, hidden).astype(f32)}


@pytest.fixture
def stage2_weights() -> Callable[..., dict[str, np.ndarray]]:
    """``(seed=3, hidden=8) -> one stage-2 weight set``: seeded random numbers of the shapes ``stage2.npz``
    holds, so a re-ranking visibly differs from stage 1's and a wrong feature or formula changes the answer."""
    return _random_stage2_weights

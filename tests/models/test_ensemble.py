"""Seed ensemble (models/ensemble.py): the one graph's outputs and the merged side weights are the draws' means."""

from __future__ import annotations

import numpy as np
import pytest

from models.ensemble import inference_model, merge_weights
from models.train import ATTRS
from models.train import inference_model as single_model

pytest.importorskip("tensorflow")

V, D, C, H = 40, 8, 12, 16


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.3, shape).astype(np.float32)

    w = {"in_table": r(V + 1, D), "out_table": r(V, D), "out_bias": r(V), "rep_item": r(2, V),
         "tower1_kernel": r(2 * D + C, H), "tower1_bias": r(H), "tower2_kernel": r(H, H // 2),
         "tower2_bias": r(H // 2), "user_kernel": r(H // 2, D), "user_bias": r(D), "gate_kernel": r(H // 2, 1),
         "gate_bias": r(1), "session_out_kernel": r(D, V), "wide_kernel": r(C, V), "cooc_w": r(3),
         "repeat_mlp1_kernel": r(8, 16), "repeat_mlp1_bias": r(16), "repeat_mlp2_kernel": r(16, 1),
         "repeat_mlp2_bias": r(1), "repeat_linear_kernel": r(8, 1), "repeat_linear_bias": np.zeros(1, np.float32),
         "heat_log": np.linspace(0, 1, V, dtype=np.float32), "cooc_idx": np.arange(V * 3).reshape(V, 3) % V,
         "cooc_val": np.full((V, 3), 0.5, np.float32)}
    for k in ATTRS:
        w[f"attr_out_{k}"], w[f"attr_b_{k}"] = r(5, D), r(5)
    return w


def _inputs(seed: int) -> list[np.ndarray]:
    from edge.ranking.features import HIST_LEN, SESSION_LEN

    rng = np.random.default_rng(seed)
    return [rng.integers(0, V + 1, (1, HIST_LEN)).astype(np.int32), rng.random((1, HIST_LEN)).astype(np.float32),
            rng.integers(0, V + 1, (1, SESSION_LEN)).astype(np.int32), rng.random((1, SESSION_LEN)).astype(np.float32),
            rng.random((1, C)).astype(np.float32)]


def _repeat_logit(w: dict[str, np.ndarray], x: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The node's repeat logit f (``Ranker._invoke``) minus its value at an all-zero row."""
    def f(xx: np.ndarray) -> np.ndarray:
        return (np.maximum(xx @ w["repeat_mlp1_kernel"] + w["repeat_mlp1_bias"], 0) @ w["repeat_mlp2_kernel"][:, 0]
                + w["repeat_mlp2_bias"][0] + xx @ w["repeat_linear_kernel"][:, 0] + w["repeat_linear_bias"][0])
    return f(x) - f(np.zeros((1, x.shape[1]), np.float32)) + w["rep_item"][0, items] + x[:, 1] * w["rep_item"][1, items]


def test_graph_outputs_are_the_draws_means() -> None:
    ws = [_weights(s) for s in (1, 2, 3)]
    x = _inputs(0)
    singles = [single_model(w, C)(x) for w in ws]
    scores, user, gate = (np.asarray(t) for t in inference_model(ws, C)(x))
    assert np.allclose(scores, np.mean([np.asarray(s[0]) for s in singles], axis=0), atol=1e-5)
    assert np.allclose(user, np.asarray(singles[0][1]), atol=1e-6)  # draw 0's user vector (new items)
    assert np.allclose(gate, np.mean([np.asarray(s[2]) for s in singles], axis=0), atol=1e-6)


def test_merged_side_weights_average_the_linear_terms() -> None:
    ws = [_weights(s) for s in (1, 2)]
    m = merge_weights(ws)
    for k in ("out_bias", "wide_kernel", "cooc_w"):
        assert np.allclose(m[k], (ws[0][k] + ws[1][k]) / 2, atol=1e-6)
    x = np.random.default_rng(5).random((7, 8)).astype(np.float32)
    items = np.arange(7)
    mean = (_repeat_logit(ws[0], x, items) + _repeat_logit(ws[1], x, items)) / 2
    assert np.allclose(_repeat_logit(m, x, items), mean, atol=1e-5)
    assert m["out_table"] is ws[0]["out_table"] and m["attr_out_cat"] is ws[0]["attr_out_cat"]


def test_draws_of_different_data_are_refused() -> None:
    a, b = _weights(1), _weights(2)
    b["cooc_val"] = b["cooc_val"] * 0.5
    with pytest.raises(ValueError, match="cooc_val"):
        merge_weights([a, b])

"""The shared feature code (training and node): repeat rows by hand, co-occurrence and heat terms."""

from __future__ import annotations

import math

import numpy as np

from edge.ranking.features import (
    REPEAT_FEATURES,
    REPEAT_FEATURES_V2,
    cooc_scores,
    heat_log,
    repeat_features,
    repeat_matrix,
)


def test_repeat_rows_by_hand() -> None:
    # baskets on days 0, 10, 20, 30; item 7 in all four, item 3 in the first only, item 5 in the last
    # two; request on day 40
    t = np.array([0, 0, 10, 20, 30, 30, 20], np.float64)
    idx = np.array([7, 3, 7, 7, 7, 5, 5], np.int64)
    rep = repeat_features(idx, t, 40.0)
    rows = dict(zip(rep.items.tolist(), repeat_matrix(rep), strict=True))
    assert REPEAT_FEATURES == 10 and rows[7].shape == (10,)
    # item 7: 4 of 4 baskets, last bought 10 days ago, every 10 days: in last basket, due ratio 11/11
    r7 = rows[7]
    assert r7[0] == 1.0
    assert math.isclose(r7[1], 6.0 + math.log(1.0), abs_tol=1e-6)
    assert math.isclose(r7[2], math.exp(-10 / 21), rel_tol=1e-6)
    assert r7[4] == 1.0 and r7[5] == 1.0
    assert math.isclose(r7[6], 0.0, abs_tol=1e-6)
    # item 3: one basket (day 0): no interval, not in the last basket
    r3 = rows[3]
    assert r3[4] == 0.0 and r3[5] == 0.0 and r3[6] == 0.0
    # item 5: days 20 and 30 → interval 10, 10 days since: due 0; in the last basket
    assert rows[5][5] == 1.0 and math.isclose(rows[5][6], 0.0, abs_tol=1e-6) and rows[5][4] == 1.0
    # trips: 4 baskets over 40 days → ln(1 + 4 / (40 / 7)), the same on every row
    assert all(math.isclose(r[7], math.log1p(4 / (40 / 7)), rel_tol=1e-6) for r in rows.values())
    # v4: in one of the last 3 baskets (days 10, 20, 30), ln(1 + baskets in the last 28 days (days 20, 30))
    assert rows[7][8] == 1.0 and rows[5][8] == 1.0 and rows[3][8] == 0.0
    assert math.isclose(rows[7][9], math.log(3), rel_tol=1e-6) and math.isclose(rows[5][9], math.log(3), rel_tol=1e-6)
    assert rows[3][9] == 0.0


def test_due_ratio_sign_and_clip() -> None:
    t = np.array([0.0, 2.0], np.float64)  # every 2 days
    idx = np.array([1, 1], np.int64)
    overdue = repeat_matrix(repeat_features(idx, t, 2.0 + 200.0))[0, 6]
    just = repeat_matrix(repeat_features(idx, t, 2.0))[0, 6]
    assert overdue == 3.0  # clipped
    assert math.isclose(just, math.log(1 / 3), rel_tol=1e-6)


def test_first_columns_unchanged_for_older_models() -> None:
    """Models trained before v3 read the first REPEAT_FEATURES_V2 columns; their meaning is fixed."""
    t = np.array([0, 5, 5, 9], np.float64)
    idx = np.array([2, 2, 4, 4], np.int64)
    rep = repeat_features(idx, t, 12.0)
    m = repeat_matrix(rep)[:, :REPEAT_FEATURES_V2]
    share = np.array([2 / 3, 2 / 3])
    assert np.allclose(m[:, 0], 1.0)
    assert np.allclose(m[:, 1], 6.0 + np.log(share))
    assert np.allclose(m[:, 2], np.exp(-np.array([7.0, 3.0]) / 21))


def test_cooc_scores_match_a_dense_sum() -> None:
    rng = np.random.default_rng(0)
    V, K = 50, 6
    nb_idx = rng.integers(0, V, (V, K))
    nb_val = rng.random((V, K)).astype(np.float32)
    dense = np.zeros((V, V), np.float64)
    for i in range(V):
        for k in range(K):
            dense[i, nb_idx[i, k]] += nb_val[i, k]
    items = np.array([3, 17, 3, 40])
    w = np.array([0.5, 0.25, 1.0, 2.0], np.float32)
    got = cooc_scores(nb_idx, nb_val, items, w, V)
    want = (w[:, None] * dense[items]).sum(axis=0)
    assert got.shape == (V,) and np.allclose(got, want, atol=1e-5)
    assert not cooc_scores(nb_idx, nb_val, items[:0], w[:0], V).any()


def test_heat_log() -> None:
    assert np.allclose(heat_log(np.array([0.0, 1.0, -3.0, 99.0])), [0.0, math.log(2), 0.0, math.log(100)])


def test_new_columns_match_a_plain_loop_with_truncation() -> None:
    """In-last / interval / due / trips / last-3 / 28-day count against a per-item Python loop, also past
    MAX_REPEAT_ITEMS
    (the kept items' rows must still be their own: the cached per-visit columns are re-indexed)."""
    rng = np.random.default_rng(3)
    for n_items in (40, 400):
        n = 1500
        t = np.sort(rng.integers(0, 200, n)).astype(np.float64)
        idx = rng.integers(0, n_items, n)
        now = 230.0
        rep = repeat_features(idx, t, now)
        m = repeat_matrix(rep)
        baskets = np.unique(t)
        for row, item in zip(m, rep.items.tolist(), strict=True):
            days = np.unique(t[idx == item])
            assert row[4] == float(days[-1] == baskets[-1])
            if len(days) >= 2:
                iv = (days[-1] - days[0]) / (len(days) - 1)
                want = min(max(math.log((now - days[-1] + 1) / (iv + 1)), -3.0), 3.0)
                assert row[5] == 1.0 and math.isclose(row[6], want, rel_tol=1e-5, abs_tol=1e-6)
            else:
                assert row[5] == 0.0 and row[6] == 0.0
            assert math.isclose(row[7], math.log1p(len(baskets) / ((now - baskets[0]) / 7)), rel_tol=1e-6)
            assert row[8] == float(days[-1] >= baskets[-3])
            assert math.isclose(row[9], math.log1p(int((days > now - 28).sum())), rel_tol=1e-6)
        assert len(rep.items) == min(n_items, 256)

"""Stage 2 with the store's weekly promotion plan (``RecRequest.promotions``, v9): the two optional columns.

A release whose ``stage2.npz`` lists ``FEATURES + PROMO_FEATURES`` reads the plan; a release without them
(the shipped v5) ignores it and answers exactly as before (the golden-answer test guards the rest).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge.ranking import ModelError, Ranker, RecRequest, RerankConfig
from edge.ranking.ranker import DEFAULT_MODEL_DIR
from edge.ranking.stage2 import FEATURES, PROMO_FEATURES, Stage2, forward, promo_columns

NAMES = FEATURES + PROMO_FEATURES
POOL = 60
Weights = Callable[..., dict[str, np.ndarray]]  # the ``stage2_weights`` fixture (conftest.py)
Npz = Callable[..., bytes]  # ``stage2_npz`` (conftest.py)
Release = Callable[..., Path]  # ``stage2_release`` (conftest.py)
Request = Callable[[Ranker, list[int], list[int]], RecRequest]  # ``stage2_request`` (conftest.py)


def _promo_weights(stage2_weights: Weights) -> dict[str, np.ndarray]:
    """Seeded random weights for FEATURES plus large ones on the two promotion columns (so a plan visibly
    re-ranks)."""
    rng = np.random.default_rng(11)
    p = stage2_weights()
    H = p["w1"].shape[1]
    f32 = np.float32
    return {"mean": np.r_[p["mean"], [0.1, 0.1]].astype(f32), "inv_std": np.r_[p["inv_std"], [2.0, 2.0]].astype(f32),
            "w1": np.r_[p["w1"], rng.normal(0, 0.5, (2, H))].astype(f32), "b1": p["b1"],
            "wl": np.r_[p["wl"], [3.0, 2.0]].astype(f32), "w2": p["w2"]}


def _plan(r: Ranker, req: RecRequest) -> dict[str, str]:
    """Display / mailer / both on items spread over the stage-1 pool, plus values the node must ignore."""
    s = r.scores(req) + r._tie
    order = np.argsort(-s, kind="stable")[:POOL].tolist()
    voc = r.vocabulary
    plan = {voc[i]: ("display", "mailer", "both")[j % 3] for j, i in enumerate(order[5::4])}
    plan["NOT-A-SKU"] = "both"
    plan[voc[order[1]]] = "shelf talker"  # unknown kind: not promoted
    return plan


def test_promotion_columns_are_the_plan(tmp_path: Path, stage2_weights: Weights, stage2_request: Request) -> None:
    r = Ranker.load(DEFAULT_MODEL_DIR)
    feat = Stage2.for_features(r, POOL, promo=True)
    assert feat.promo and feat.n_features == len(NAMES)
    req = stage2_request(r, [5, 17], [3, 40, 77, 123])
    plan = _plan(r, req)
    scores, _, rep, _, st = r._invoke(req)
    scores = scores + r._tie
    pool, X = feat.features(scores, rep, list(st.last), r._heat, promotions=plan)
    base = Stage2.for_features(r, POOL)
    pool0, X0 = base.features(scores, rep, list(st.last), r._heat)
    np.testing.assert_array_equal(pool, pool0)
    np.testing.assert_array_equal(X[:, :len(FEATURES)], X0)  # the v5 columns are untouched
    kinds = {"display": (1, 0), "mailer": (0, 1), "both": (1, 1)}
    for q, i in enumerate(pool.tolist()):
        assert tuple(X[q, len(FEATURES):]) == kinds.get(plan.get(r.vocabulary[i], ""), (0, 0))
    assert X[:, len(FEATURES):].sum() > 10
    # no plan (or an empty one): zeros
    for none in (None, {}):
        _, Xn = feat.features(scores, rep, list(st.last), r._heat, promotions=none)
        assert not Xn[:, len(FEATURES):].any()
    # one conversion per plan object (the node's store cache hands the same mapping to a week's requests)
    assert feat._promo_cols(plan) is feat._promo_cols(plan)
    assert feat._promo_cols(dict(plan)) is not feat._promo_cols(plan)
    cols = promo_columns(plan, r._index, r.V)
    assert cols.shape == (r.V + 1, 2) and not cols[r.V].any()


def test_node_answers_with_the_plan_as_trained(tmp_path: Path, stage2_weights: Weights, stage2_npz: Npz,
                                               stage2_release: Release, stage2_request: Request) -> None:
    params = _promo_weights(stage2_weights)
    r2 = Ranker.load(stage2_release(tmp_path, stage2_npz(params, NAMES)), rerank=RerankConfig(diversity=0.0,
                                                                                              repeat_cap=10**9))
    assert r2._stage2 is not None and r2._stage2.promo
    r1 = Ranker.load(DEFAULT_MODEL_DIR, rerank=RerankConfig(diversity=0.0, repeat_cap=10**9))
    feat = Stage2.for_features(r1, POOL, promo=True)
    moved = 0
    for session, hist in (([5, 17], [3, 40, 77, 123]), ([], [8, 9, 10]), ([2500, 31, 4000], [])):
        base = stage2_request(r1, session, hist)
        plan = _plan(r1, base)
        req = RecRequest(history=base.history, session=base.session, store_id=base.store_id, when=base.when,
                         k=10, promotions=plan)
        scores, _, rep, _, st = r1._invoke(req)
        scores = scores + r1._tie
        pool, X = feat.features(scores, rep, list(st.last), r1._heat, promotions=plan)
        s2 = forward(params, X)
        want = [r1.vocabulary[i] for i in pool[np.argsort(-s2, kind="stable")][:10].tolist()]
        got = [x.sku for x in r2.recommend(req)]
        assert got == want
        moved += got != [x.sku for x in r2.recommend(base)]  # the same request without its plan
    assert moved >= 2


def test_a_release_without_promotion_columns_ignores_the_plan(tmp_path: Path, stage2_weights: Weights,
                                                              stage2_npz: Npz, stage2_release: Release,
                                                              stage2_request: Request) -> None:
    """A stage 2 without the columns (v5, or any release trained with --no-stage2-promotions): bit-identical answers
    and scores with a plan. (The shipped v7 has them: test_the_shipped_release_reads_the_plan.)"""
    for path in (stage2_release(tmp_path, stage2_npz(stage2_weights(), FEATURES)),):
        r = Ranker.load(path, rerank=RerankConfig(diversity=0.0, repeat_cap=10**9))
        assert r._stage2 is None or not r._stage2.promo
        for session, hist in (([5, 17], [3, 40, 77, 123]), ([], [8, 9, 10])):
            base = stage2_request(r, session, hist)
            req = RecRequest(history=base.history, session=base.session, store_id=base.store_id, when=base.when,
                             k=10, promotions=_plan(r, base))
            a, b = r.recommend(base), r.recommend(req)
            assert [(x.sku, x.score, x.reason) for x in a] == [(x.sku, x.score, x.reason) for x in b]


def test_other_feature_lists_are_refused(tmp_path: Path, stage2_weights: Weights, stage2_npz: Npz,
                                         stage2_release: Release) -> None:
    p = _promo_weights(stage2_weights)
    with pytest.raises(ModelError, match="on_display"):
        Ranker.load(stage2_release(tmp_path, stage2_npz(p, (*FEATURES, "in_mailer", "on_display"))))


def test_the_shipped_release_reads_the_plan(stage2_request: Request) -> None:
    """The bundled 2026.12.01-v7 was trained with the promotion columns: a plan changes some answers, and a request
    without one is served as if nothing were promoted."""
    r = Ranker.load(DEFAULT_MODEL_DIR, rerank=RerankConfig(diversity=0.0, repeat_cap=10**9))
    assert r._stage2 is not None and r._stage2.promo
    moved = 0
    for session, hist in (([5, 17], [3, 40, 77, 123]), ([], [8, 9, 10]), ([2500, 31, 4000], [])):
        base = stage2_request(r, session, hist)
        req = RecRequest(history=base.history, session=base.session, store_id=base.store_id, when=base.when,
                         k=10, promotions=_plan(r, base))
        moved += [x.sku for x in r.recommend(base)] != [x.sku for x in r.recommend(req)]
    assert moved >= 1

"""The learned second stage on the node: loading (with and without stage2.npz) and its scores.

Uses the shipped release (real int8 .tflite, side file without stage 2) and attaches stage-2
weights the way ``models/stage2.py`` does; the weights here are seeded random numbers, so the
re-ranking visibly differs from stage 1's and a wrong feature or formula changes the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge.ranking import ModelError, Ranker, RecRequest, RerankConfig
from edge.ranking.ranker import DEFAULT_MODEL_DIR
from edge.ranking.stage2 import FEATURES, Stage2, forward

T0 = 1_700_000_000.0
POOL = 60
Weights = Callable[..., dict[str, np.ndarray]]  # the ``stage2_weights`` fixture (conftest.py)
Npz = Callable[..., bytes]  # ``stage2_npz`` (conftest.py)
Release = Callable[..., Path]  # ``stage2_release`` (conftest.py)
Request = Callable[[Ranker, list[int], list[int]], RecRequest]  # ``stage2_request`` (conftest.py)


def test_release_without_stage2_loads_and_serves_stage1(tmp_path: Path, stage2_release: Release,
                                                        stage2_request: Request) -> None:
    r = Ranker.load(stage2_release(tmp_path, None), rerank=RerankConfig(diversity=0.0))
    assert r._stage2 is None
    req = stage2_request(r, [5, 17], [3, 40, 77, 123])
    recs = r.recommend(req)
    s1 = r.scores(req) + r._tie
    excl = {r._index[s] for s in req.session}
    want = [i for i in np.argsort(-s1, kind="stable").tolist() if i not in excl][:10]
    assert [r.vocabulary[i] for i in want] == [x.sku for x in recs]


def test_node_stage2_scores_equal_the_training_function(tmp_path: Path, stage2_weights: Weights, stage2_npz: Npz,
                                                        stage2_release: Release, stage2_request: Request) -> None:
    params = stage2_weights()
    r2 = Ranker.load(stage2_release(tmp_path, stage2_npz(params)), rerank=RerankConfig(diversity=0.0, repeat_cap=10**9))
    assert r2._stage2 is not None and r2._stage2.pool == POOL
    r1 = Ranker.load(DEFAULT_MODEL_DIR, rerank=RerankConfig(diversity=0.0, repeat_cap=10**9))
    feat = Stage2.for_features(r1, POOL)
    changed = 0
    for session, hist in (([5, 17], [3, 40, 77, 123]), ([], [8, 9, 10]), ([2500, 31, 4000], []), ([], [])):
        req = stage2_request(r1, session, hist)
        if not req.history and not req.session:
            req = RecRequest(store_id="367", when=T0, k=10)
        scores, _, rep, _, st = r1._invoke(req)
        scores = scores + r1._tie
        pool, X = feat.features(scores, rep, list(st.last), r1._heat)
        assert len(pool) == POOL and not set(pool.tolist()) & {r1._index[s] for s in req.session}
        assert X.shape == (POOL, len(FEATURES)) and np.isfinite(X).all()
        s2 = forward({k: v for k, v in params.items()}, X)
        want = pool[np.argsort(-s2, kind="stable")][:10]
        recs = r2.recommend(req)
        if not req.session and not req.history:  # a cold shopper without picks: stage 1 as it was
            assert [x.sku for x in recs] == [x.sku for x in r1.recommend(req)]
            continue
        assert [x.sku for x in recs] == [r1.vocabulary[i] for i in want.tolist()]
        # returned scores are stage-2 scores up to one shift per request
        got = np.array([x.score for x in recs])
        np.testing.assert_allclose(got - got[0], s2[np.argsort(-s2, kind="stable")][:10] - s2.max(), atol=2e-4)
        changed += [x.sku for x in recs] != [x.sku for x in r1.recommend(req)]
    assert changed >= 2  # random weights re-rank: the test would not notice a no-op hook otherwise


def test_features_are_the_documented_numbers(tmp_path: Path, stage2_request: Request) -> None:
    r = Ranker.load(DEFAULT_MODEL_DIR)
    feat = Stage2.for_features(r, POOL)
    req = stage2_request(r, [5, 17], [3, 40, 77, 123])
    scores, _, rep, _, st = r._invoke(req)
    scores = scores + r._tie
    pool, X = feat.features(scores, rep, list(st.last), r._heat)
    col = {n: j for j, n in enumerate(FEATURES)}
    assert (np.diff(scores[pool]) <= 0).all()  # best first
    np.testing.assert_allclose(X[:, col["s1_rel"]], scores[pool] - scores[pool[0]], atol=1e-6)
    np.testing.assert_allclose(X[:, col["log_pop"]], np.log1p(r.popularity[pool]), rtol=1e-6)
    sess = [r._index[s] for s in req.session]
    for q in range(0, POOL, 7):
        i = int(pool[q])
        vals = [float(r._nb_val[s][r._nb_idx[s] == i].sum()) for s in sess]
        assert np.isclose(X[q, col["sess_cooc_sum"]], sum(vals), atol=1e-5)
        assert np.isclose(X[q, col["sess_cooc_max"]], max(vals), atol=1e-5)
        assert X[q, col["rep0"]] == (1.0 if i in set(rep.items.tolist()) else 0.0)
        assert np.isclose(X[q, col["cat_sess"]], np.mean([r.category[s] == r.category[i] for s in sess]))
    # the shared scratch vectors are left clean for the next request
    assert not feat._sum.any() and not feat._max.any() and not feat._hist.any() and not feat._mask.any()


def test_bad_stage2_files_are_refused(tmp_path: Path, stage2_weights: Weights, stage2_npz: Npz,
                                      stage2_release: Release) -> None:
    data = stage2_npz(stage2_weights())
    with pytest.raises(ModelError, match=r"sha256 mismatch for stage2\.npz"):
        Ranker.load(stage2_release(tmp_path / "a", data, digest="0" * 64))
    with pytest.raises(ModelError, match="stage-2 features"):
        Ranker.load(stage2_release(tmp_path / "b", stage2_npz(stage2_weights(), FEATURES[::-1])))
    p = stage2_weights()
    p["w2"] = p["w2"][:3]
    with pytest.raises(ModelError, match="s_w2"):
        Ranker.load(stage2_release(tmp_path / "c", stage2_npz(p)))
    d = stage2_release(tmp_path / "d", data)
    (d / "stage2.npz").unlink()
    with pytest.raises(ModelError, match=r"stage-2 file .* not found"):
        Ranker.load(d)


def test_a_missing_weight_set_leaves_those_requests_to_stage1(tmp_path: Path, stage2_weights: Weights,
                                                              stage2_npz: Npz, stage2_release: Release,
                                                              stage2_request: Request) -> None:
    r2 = Ranker.load(stage2_release(tmp_path, stage2_npz(stage2_weights(), prefixes="s")),
                     rerank=RerankConfig(diversity=0.0))
    r1 = Ranker.load(stage2_release(tmp_path / "s1", None), rerank=RerankConfig(diversity=0.0))
    assert r2._stage2 is not None and r2._stage2.sets[False] is None
    warm = stage2_request(r1, [], [3, 40, 77, 123])
    assert [x.sku for x in r2.recommend(warm)] == [x.sku for x in r1.recommend(warm)]
    picked = stage2_request(r1, [5, 17], [3, 40, 77, 123])
    assert [x.sku for x in r2.recommend(picked)] != [x.sku for x in r1.recommend(picked)]


def test_stage2_sees_picks_appended_while_the_request_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          stage2_weights: Weights,
                                                          stage2_npz: Npz, stage2_release: Release,
                                                          stage2_request: Request) -> None:
    """An append-only session that grows between the model call and the re-ranking is derived again; stage 2
    must re-rank with that state (its picks), not the stale one the stage-1 scores were made with."""
    params = stage2_weights()
    r2 = Ranker.load(stage2_release(tmp_path, stage2_npz(params)), rerank=RerankConfig(diversity=0.0, repeat_cap=10**9))
    r1 = Ranker.load(DEFAULT_MODEL_DIR, rerank=RerankConfig(diversity=0.0, repeat_cap=10**9))
    voc = r1.vocabulary
    base = stage2_request(r1, [5, 17], [3, 40, 77, 123])
    scores, _, rep, _, _ = r1._invoke(base)  # stage 1 ran on the two picks
    scores = scores + r1._tie
    feat = Stage2.for_features(r1, POOL)

    def top10(picks: list[int]) -> list[str]:
        pool, X = feat.features(scores, rep, picks, r1._heat)
        order = pool[np.argsort(-forward(params, X), kind="stable")].tolist()
        return [voc[i] for i in order if i not in picks][:10]

    # a late pick whose features change the answer (the stale picks would give another list)
    late = next(i for i in (900, 31, 2500, 4000, 77, 123) if top10([5, 17, i]) != top10([5, 17]))
    want = top10([5, 17, late])
    session = list(base.session)
    req = RecRequest(history=base.history, session=session, store_id="367", when=base.when, k=10,
                     session_id="grows", session_append_only=True)
    invoke = r2._invoke

    def invoke_then_pick(q: RecRequest, *rest: object) -> tuple:  # type: ignore[type-arg]
        out = invoke(q, *rest)  # type: ignore[arg-type]
        session.append(voc[late])  # the shopper picks while the model ran
        return out

    monkeypatch.setattr(r2, "_invoke", invoke_then_pick)
    assert [x.sku for x in r2.recommend(req)] == want


def test_stage2_takes_stage1s_repeat_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          stage2_weights: Weights, stage2_npz: Npz, stage2_release: Release,
                                          stage2_request: Request) -> None:
    """``recommend`` hands stage 2 the repeat rows ``_invoke`` made for the same request (instead of stage 2
    making them again); the feature matrix is bit for bit the one made without them."""
    r2 = Ranker.load(stage2_release(tmp_path, stage2_npz(stage2_weights())), rerank=RerankConfig(diversity=0.0,
                                                                                                 repeat_cap=10**9))
    assert r2._stage2 is not None
    s2 = r2._stage2
    seen: list[bool] = []
    features = s2.features

    def spy(scores: np.ndarray, rep: object, latest: list[int], heat: object,
            repeat_rows: np.ndarray | None = None, subset: object = None, **kw: object
            ) -> tuple[np.ndarray, np.ndarray]:
        seen.append(repeat_rows is not None)
        pool, X = features(scores, rep, latest, heat, repeat_rows, subset=subset, **kw)  # type: ignore[arg-type]
        pool0, X0 = features(scores, rep, latest, heat, subset=subset, **kw)  # type: ignore[arg-type]
        assert np.array_equal(pool, pool0) and X.tobytes() == X0.tobytes()
        return pool, X

    monkeypatch.setattr(s2, "features", spy)
    for session, hist in (([5, 17], [3, 40, 77, 123]), ([], [8, 9, 10]), ([2500, 31, 4000], list(range(50, 130)))):
        r2.recommend(stage2_request(r2, session, hist))
    assert seen == [True, True, True]
    r2.recommend(stage2_request(r2, [5], []))  # no history: no repeat rows
    assert seen[-1] is False


def test_second_stage_false_serves_stage1_alone(tmp_path: Path, stage2_weights: Weights, stage2_npz: Npz,
                                                stage2_release: Release, stage2_request: Request) -> None:
    """``RecRequest(second_stage=False)`` (the recommend room's overload guard) gives exactly what the same
    release without its stage 2 gives; the default request still gets stage 2."""
    import dataclasses

    r2 = Ranker.load(DEFAULT_MODEL_DIR, rerank=RerankConfig(diversity=0.0))
    r1 = Ranker.load(stage2_release(tmp_path, None), rerank=RerankConfig(diversity=0.0))
    if r2._stage2 is None:
        r2 = Ranker.load(stage2_release(tmp_path / "s2", stage2_npz(stage2_weights())),
                         rerank=RerankConfig(diversity=0.0))
    for session, hist in (([5, 17], [3, 40, 77, 123]), ([2500, 31, 4000], [])):
        req = stage2_request(r1, session, hist)
        assert r2.recommend(dataclasses.replace(req, second_stage=False)) == r1.recommend(req)
        assert r2.recommend(req) != r1.recommend(req)


def test_excluded_and_suppressed_items_stay_out_of_the_stage2_pool(tmp_path: Path, stage2_weights: Weights,
                                                                   stage2_npz: Npz, stage2_release: Release,
                                                                   stage2_request: Request) -> None:
    """The re-ranking after stage 2 drops excluded and suppressed skus anyway: they are left out of stage 2's
    pool (which then holds ``pool`` items that can be shown). With nothing excluded beyond the picks the pool,
    features and answers are what they were (the picks were out of the pool already)."""
    r = Ranker.load(stage2_release(tmp_path, stage2_npz(stage2_weights())), rerank=RerankConfig(diversity=0.0,
                                                                                                repeat_cap=10**9))
    s2 = r._stage2
    assert s2 is not None
    req = stage2_request(r, [5, 17], [3, 40, 77, 123])
    scores, _, rep, _, st = r._invoke(req)
    scores = scores + r._tie
    latest = list(st.last)
    pool0, X0 = s2.features(scores, rep, latest, r._heat)
    picks = np.array([r._index[s] for s in req.session] + [-1], np.int64)  # -1: a sku outside the vocabulary
    pool1, X1 = s2.features(scores, rep, latest, r._heat, drop=picks)
    assert np.array_equal(pool0, pool1) and X0.tobytes() == X1.tobytes()
    # exclude two of the pool's best, suppress a third: all three out, the pool refilled from below
    ex = pool0[[0, 3]]
    block = np.zeros(r.V, bool)
    block[pool0[5]] = True
    pool2, X2 = s2.features(scores, rep, latest, r._heat, drop=ex, block=block)
    assert len(pool2) == POOL and not set(pool2.tolist()) & {int(ex[0]), int(ex[1]), int(pool0[5])}
    assert pool2.tolist() == [i for i in pool0.tolist() if i not in {int(ex[0]), int(ex[1]), int(pool0[5])}] + \
        pool2.tolist()[POOL - 3:]
    assert (np.diff(scores[pool2]) <= 0).all() and float(X2[0, 0]) == 0.0  # s1_rel relative to the pool's best
    # through recommend: the same answers as before for a request without exclusions; with them, no excluded sku
    want = [x.sku for x in r.recommend(req)]
    s2.features = lambda *a, **kw: Stage2.features(s2, *a, **{**kw, "drop": None,
                                                              "block": None})  # type: ignore[method-assign]
    assert [x.sku for x in r.recommend(req)] == want
    del s2.features
    req_ex = RecRequest(history=req.history, session=req.session, store_id="367", when=req.when, k=10,
                        exclude=[r.vocabulary[int(i)] for i in ex])
    got = [x.sku for x in r.recommend(req_ex)]
    assert not set(got) & {r.vocabulary[int(i)] for i in ex}

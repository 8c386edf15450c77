"""Stage 2 on the catalogue pool (``rerank.catalogue_only``): it re-ranks the best of the store's catalogue.

The fast path scores only the catalogue's items (``Ranker._pool_scoring``) and hands stage 2 those scores
(``Stage2.features``' ``subset``). The plain reference here scores stage 1 on the whole vocabulary,
restricts it to the catalogue (everything else far below), takes stage 2's pool from the catalogue with the
training feature function, applies ``forward`` and the documented shift, and re-ranks: the features, the
pool, the answers and the scores must be the same numbers. The weights are seeded random numbers attached
to the shipped release (as in ``test_stage2.py``), so a wrong feature or pool changes the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.ranking import Ranker, RecRequest, RerankConfig
from edge.ranking.features import SESSION_LEN
from edge.ranking.stage2 import Stage2, forward

T0 = 1_700_000_000.0
DAY = 86400.0
POOL = 60
Weights = Callable[..., dict[str, np.ndarray]]  # the ``stage2_weights`` fixture (conftest.py)
Npz = Callable[..., bytes]  # ``stage2_npz`` (conftest.py)
Release = Callable[..., Path]  # ``stage2_release`` (conftest.py)
FAR = np.float32(-1e30)  # outside the catalogue: below every catalogue score, so never in the pool


def _catalogue(r: Ranker, rng: np.random.Generator, size: int = 350) -> np.ndarray:
    """Popular-leaning items (a store sells what sells) plus random ones, ascending vocabulary indices."""
    V = len(r.vocabulary)
    p = r.popularity.astype(np.float64) + 1.0
    p /= p.sum()
    a = rng.choice(V, size // 2, replace=False, p=p)
    b = rng.choice(V, size, replace=False)
    return np.unique(np.concatenate([a, b]))[:size]


def _requests(r: Ranker, cat: np.ndarray, rng: np.random.Generator) -> list[RecRequest]:
    """Shoppers with and without history, picks in and outside the catalogue, sessions up to 12 picks
    (more than SESSION_LEN), a repeated pick."""
    V = len(r.vocabulary)
    voc = r.vocabulary
    out = []
    for i in range(24):
        inside = rng.choice(cat, 6, replace=False)
        outside = rng.choice(V, 6, replace=False)
        own = np.concatenate([inside[:3], outside[:3]]) if i % 3 else outside
        nb = 0 if i % 4 == 0 else int(rng.integers(1, 25))
        hist = [(voc[j], T0 + b * 6 * DAY, 1.0) for b in range(nb) for j in rng.choice(own, 3, replace=False)]
        picks = [int(x) for x in rng.permutation(np.concatenate([inside[3:], outside[3:]]))]
        if i % 6 == 5:
            picks = picks + picks[:2] + [int(x) for x in rng.choice(cat, 6, replace=False)]
        n = [0, 1, 3, len(picks)][i % 4]
        out.append(RecRequest(history=hist, session=[voc[j] for j in picks[:n]], store_id="367",
                              when=T0 + 200 * DAY + i * 60, k=10,
                              profile={"age": "45-54"} if i % 2 else None))
    return out


def _latest(r: Ranker, session: list[str]) -> list[int]:
    """The latest SESSION_LEN distinct picks (by last occurrence), oldest first: what stage 2 reads."""
    last: dict[int, None] = {}
    for s in session:
        i = r._index.get(s)
        if i is not None:
            last.pop(i, None)
            last[i] = None
    return list(last)[-SESSION_LEN:]


@pytest.mark.parametrize("seed", [3, 11])
def test_catalogue_stage2_equals_the_plain_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     seed: int, stage2_weights: Weights,
                                                     stage2_npz: Npz, stage2_release: Release) -> None:
    sets = {"s": stage2_weights(seed), "n": stage2_weights(seed + 1)}
    rel = stage2_release(tmp_path, stage2_npz(sets))
    cfg = {"diversity": 0.0, "repeat_cap": 10**9}
    fast = Ranker.load(rel, rerank=RerankConfig(**cfg))
    ref = Ranker.load(rel, rerank=RerankConfig(**cfg))
    assert fast._stage2 is not None and fast._stage2.pool == POOL
    rng = np.random.default_rng(seed)
    cat = _catalogue(fast, rng)
    skus = [{"sku": fast.vocabulary[i]} for i in cat.tolist()]
    fast.set_products(skus, catalogue_only=True)
    feat = Stage2.for_features(ref, POOL)

    seen: list[tuple[np.ndarray, np.ndarray]] = []
    orig = Stage2.features

    def spy(self: Stage2, *a: Any, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        res = orig(self, *a, **kw)
        if self is fast._stage2:
            seen.append(res)
        return res

    monkeypatch.setattr(Stage2, "features", spy)
    in_cat = np.zeros(len(fast.vocabulary), bool)
    in_cat[cat] = True
    reranked = 0
    for req in _requests(fast, cat, rng):
        seen.clear()
        got = fast.recommend(req)
        assert fast._pool_scoring() is not None  # the pool path with stage 2 loaded
        # plain reference: stage 1 on the whole vocabulary, then the catalogue only
        s1 = ref.scores(req) + ref._tie
        scores = np.where(in_cat, s1, FAR).astype(np.float32)
        latest = _latest(ref, req.session)
        params = sets["s"] if latest else (sets["n"] if req.history else None)
        if params is not None:
            _, _, rep, _, _ = ref._invoke(req)
            pool, X = feat.features(scores, rep, latest, ref._heat)
            assert in_cat[pool].all() and not set(pool.tolist()) & set(latest)
            assert len(pool) == POOL
            # the fast path's pool (positions in the catalogue) and features are the same numbers
            assert len(seen) == 1
            fpool, fX = seen[0]
            np.testing.assert_array_equal(cat[fpool], pool)
            np.testing.assert_array_equal(fX, X)
            s2 = forward(params, X)
            floor = scores[pool[-1]]
            s2 -= s2.min()
            s2 += floor
            s2 += 1e-3
            scores[pool] = s2
        else:
            assert not seen  # a cold shopper without picks: stage 1 alone
        excl = {fast._index[s] for s in req.session if s in fast._index}
        order = [i for i in cat[np.argsort(-scores[cat], kind="stable")].tolist() if i not in excl][:10]
        assert [x.sku for x in got] == [fast.vocabulary[i] for i in order]
        assert [x.score for x in got] == [round(float(scores[i]), 4) for i in order]
        s1_order = [i for i in cat[np.argsort(-s1[cat], kind="stable")].tolist() if i not in excl][:10]
        reranked += order != s1_order
    assert reranked >= 5  # the random weights re-rank: a no-op stage 2 would not pass


def test_without_catalogue_only_stage2_keeps_the_whole_vocabulary(tmp_path: Path, stage2_weights: Weights,
                                                                  stage2_npz: Npz, stage2_release: Release) -> None:
    """A catalogue given but ``catalogue_only`` off: stage 2's pool is the vocabulary's best, as before."""
    sets = {"s": stage2_weights(5), "n": stage2_weights(6)}
    rel = stage2_release(tmp_path, stage2_npz(sets))
    r = Ranker.load(rel, rerank=RerankConfig(diversity=0.0, repeat_cap=10**9))
    plain = Ranker.load(rel, rerank=RerankConfig(diversity=0.0, repeat_cap=10**9))
    rng = np.random.default_rng(5)
    cat = _catalogue(r, rng)
    r.set_products([{"sku": r.vocabulary[i]} for i in cat.tolist()], catalogue_only=False)
    assert r._pool_scoring() is None
    for req in _requests(r, cat, rng):
        assert r.recommend_tuples(req) == plain.recommend_tuples(req)

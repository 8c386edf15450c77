"""The optimised scoring path against a plain, from-scratch reference, with the real shipped model.

``Ranker._invoke`` memoises the context input, the wide path and the co-occurrence session part, quantizes
with precomputed buffers, reuses per-visit history structures and adds the node-side terms sparsely. The
reference below does none of that: it rebuilds every feature with the plain functions of
``edge.ranking.features`` on a separate interpreter, adds every term as a dense [V] vector in float64, and
must agree with the fast path on every score (to float32 rounding) and on the order of the best items, over a
few hundred random requests (warm and cold shoppers, profiles, growing sessions with unknown skus, repeated
contexts and visits, so the memos are hit as well as missed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edge.ranking import Ranker, RecRequest
from edge.ranking.features import (
    HIST_LEN,
    SESSION_LEN,
    cooc_scores,
    history_inputs,
    repeat_features,
    repeat_matrix,
    session_inputs,
)
from edge.ranking.ranker import make_interpreter

T0 = 1_700_000_000.0
DAY = 86400.0


def _quantize(values: np.ndarray, q: tuple[float, int], dtype: Any) -> np.ndarray:
    scale, zp = q
    if np.dtype(dtype) != np.int8:
        return values.astype(dtype)
    return np.clip(np.rint(values.astype(np.float32) / np.float32(scale)) + zp, -128, 127).astype(np.int8)


class PlainScorer:
    """Scores a request from scratch: no caches, no memos, dense vectors, float64 sums."""

    def __init__(self, r: Ranker) -> None:
        assert r.path is not None
        self.r = r
        self.it = make_interpreter(r.path.read_bytes())
        self.it.allocate_tensors()
        self.inputs = {}
        for d in self.it.get_input_details():
            for n in ("hist_items", "hist_weights", "session_items", "session_weights", "context"):
                if d["name"] == n or d["name"].endswith(f"_{n}:0") or d["name"].startswith(f"serving_default_{n}"):
                    self.inputs[n] = d

    def scores(self, req: RecRequest) -> np.ndarray:
        r = self.r
        t, hour, wd = r._when(req.when)
        idx = np.array([r._index.get(s, -1) for s, _, _ in req.history], np.int64)
        td = np.array([float(w) / DAY for _, w, _ in req.history], np.float64)
        rep = repeat_features(idx, td, t / DAY)
        picks = [r._index[s] for s in req.session if s in r._index]
        hi, hw = np.zeros(HIST_LEN, np.int32), np.zeros(HIST_LEN, np.float32)
        si, sw = np.zeros(SESSION_LEN, np.int32), np.zeros(SESSION_LEN, np.float32)
        history_inputs(rep, hi, hw)
        ns = session_inputs(picks, si, sw)
        ctx = np.zeros(r.context_spec.size, np.float32)
        # a release with ``rerank.cold_profile: false`` leaves the demographics out for a shopper without history
        prof = req.profile if getattr(r, "cold_profile", True) or rep.n_baskets > 0 else None
        r.context_spec.encode(ctx, hour, wd, req.store_id, prof, rep.n_baskets, ns)
        for name, v in (("hist_items", hi), ("hist_weights", hw), ("session_items", si),
                        ("session_weights", sw), ("context", ctx)):
            d = self.inputs[name]
            val = v if v.dtype == np.int32 else _quantize(v, d["quantization"], d["dtype"])
            self.it.set_tensor(d["index"], val[None, :].astype(d["dtype"]))
        self.it.invoke()

        def out(o: dict[str, Any]) -> np.ndarray:
            x = self.it.get_tensor(o["index"])[0].astype(np.float64)
            scale, zp = o["quantization"]
            return (x - zp) * scale if scale else x

        s = out(r._out_scores)
        gate = float(out(r._out_gate)[0])
        warm = rep.n_baskets > 0
        if r._wide_q is not None and r._wide_scale is not None:
            s += (ctx.astype(np.float64) * r._wide_scale) @ r._wide_q.astype(np.float64)
        if r._out_bias is not None:
            s += r._out_bias
        if r._heat is not None and r._heat_w is not None:
            s += (float(r._heat_w[0]) + (float(r._heat_w[1]) if warm else 0.0)) * r._heat
        if not warm and r.cold_pop_blend:
            s += r.cold_pop_blend * np.log1p(r.popularity.astype(np.float64))
        if r._nb_idx is not None and r._nb_val is not None and r._cooc_w is not None:
            nh = min(len(rep.items), HIST_LEN)
            cw = r._cooc_w if (nh or r._cooc_w_cold is None) else r._cooc_w_cold
            V = r.V
            s += cooc_scores(r._nb_idx, r._nb_val, si[:ns] - 1, sw[:ns] * cw[0], V)
            s += cooc_scores(r._nb_idx, r._nb_val, hi[:nh] - 1, hw[:nh] * cw[1], V)
            if ns and nh and cw[2] and cw[0]:
                bought = np.zeros(V, bool)
                bought[rep.items] = True
                s += bought * cooc_scores(r._nb_idx, r._nb_val, si[:ns] - 1, sw[:ns] * cw[2], V)
        if len(rep.items):
            m = repeat_matrix(rep).astype(np.float64)
            rm = m[:, : r._rep_f]
            f = (np.maximum(rm @ r._rw1 + r._rb1, 0.0) @ r._rw2 + r._rb2 + rm @ r._rwl + r._rbl
                 + rm[:, 0] * r._ritem[0, rep.items] + rm[:, 1] * r._ritem[1, rep.items])
            s[rep.items] += gate * (f - r._rep0)
            if r.repeat_blend is not None:
                s[rep.items] += m[:, : len(r.repeat_blend)] @ r.repeat_blend
        return s


def _requests(r: Ranker, n_visits: int, seed: int) -> list[RecRequest]:
    """Visits of 1-12 requests each with a growing session (as the node sends them), some repeated."""
    voc = r.vocabulary
    rng = np.random.default_rng(seed)
    p = r.popularity.astype(np.float64) + 1.0
    p /= p.sum()
    profiles: list[dict[str, Any] | None] = [
        None, {"age": "45-54", "income": "50-74K", "household_size": "2", "kids_count": "0"},
        {"age": "19-24", "marital_status": "Married", "kids_count": 3, "homeowner": "?"}]
    out = []
    for v in range(n_visits):
        nb = int(rng.choice([0, 0, 1, 4, 30, 90]))
        own = rng.choice(len(voc), int(rng.integers(3, 300)), replace=False, p=p)
        hist = tuple((voc[j] if rng.random() > 0.03 else "NOT-A-SKU", T0 + b * 4 * DAY, 1.0)
                     for b in range(nb) for j in rng.choice(own, min(len(own), int(rng.integers(1, 25))),
                                                            replace=False))
        session: list[str] = []
        for step in range(int(rng.integers(1, 13))):
            session.append(voc[int(rng.choice(len(voc), p=p))] if rng.random() > 0.05 else "UNKNOWN-PICK")
            out.append(RecRequest(history=hist, session=session, session_append_only=True,
                                  store_id=["367", None, "999"][v % 3], profile=profiles[v % 3],
                                  when=T0 + (nb + 1) * 4 * DAY + (v % 5) * 3600 + step * 60,
                                  k=int(rng.integers(1, 15)), session_id=f"visit-{v}"))
    return out


@pytest.fixture(scope="module")
def ranker() -> Ranker:
    return Ranker.load()


def test_fast_scores_match_the_plain_reference(ranker: Ranker) -> None:
    plain = PlainScorer(ranker)
    reqs = _requests(ranker, 60, seed=21)
    assert len(reqs) >= 300
    worst = 0.0
    for q in reqs:
        fast = ranker.scores(q).astype(np.float64)
        ref = plain.scores(q)
        err = np.abs(fast - ref)
        worst = max(worst, float(err.max()))
        assert np.all(err <= 1e-5 * np.maximum(1.0, np.abs(ref))), q.session_id
        # the same best items in the same order (the tie-break term as recommend adds it)
        tie = ranker._tie.astype(np.float64)
        a = np.argsort(-(fast + tie), kind="stable")[:50]
        b = np.argsort(-(ref + tie), kind="stable")[:50]
        assert np.array_equal(a, b), q.session_id
    assert worst > 0.0  # float32 against float64: the comparison is not vacuous
    assert ranker._ctx_memo and ranker._cooc_memo and ranker._hist_cache  # the memos were exercised


def test_recommend_matches_a_ranker_without_memos() -> None:
    """The same requests through a ranker whose memos are emptied and whose input tensors are all set again
    before each request (every lookup a miss) and through one that keeps them (inputs equal to the last
    request's are not copied in again): equal answers, scores and counters."""
    warm, cold = Ranker.load(), Ranker.load()
    for q in _requests(warm, 60, seed=22):
        cold._ctx_memo.clear()
        cold._wide_memo.clear()
        cold._cooc_memo.clear()
        cold._share_memo.clear()
        cold._hist_cache.clear()
        cold._excl_memo.clear()
        cold._capped_np.clear()
        cold._fed.clear()  # every input tensor set again
        assert warm.recommend(q) == cold.recommend(q), q.session_id
    assert warm.stats == cold.stats

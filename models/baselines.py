"""Baselines in the same harness: global / recent (last 14 training days) / store popularity, GP-TopFreq,
item-kNN co-occurrence, implicit ALS, TIFU-KNN and the seed article's naive user-based CF (filters purchased items).

All work on product codes of ``Prepared``; count-based ones rank every product
sold in training, the matrix ones rank the model's vocabulary (top 10k).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from edge.ranking.features import HEAT_WEEKS
from models.data import Prepared
from models.dataset import Problem, basket_times

log = logging.getLogger("shelfcast.models.baselines")


def _topk(scores: np.ndarray, k: int, exclude: set[int], ids: np.ndarray | None = None) -> list[int]:
    m = min(len(scores), k + len(exclude) + 5)
    top = np.argpartition(-scores, m - 1)[:m]
    top = top[np.lexsort((top, -scores[top]))]
    out: list[int] = []
    for i in top:
        c = int(ids[i]) if ids is not None else int(i)
        if c in exclude:
            continue
        out.append(c)
        if len(out) == k:
            break
    return out


class Context:
    """Training-period matrices shared by the baselines."""

    def __init__(self, prep: Prepared, train_last_week: int) -> None:
        a = prep.a
        self.prep = prep
        self.P = len(prep.meta["skus"])
        self.vocab = a["vocab"]
        self.V = len(self.vocab)
        self.vocab_of = a["vocab_of"]
        bt = basket_times(prep)
        self.line_t = bt
        train = (a["week"] <= train_last_week) & ~a["hh_holdout"][a["hh"]]
        self.train = train
        # distinct (basket, product) pairs in training
        key = np.unique(a["basket"][train] * self.P + a["pcode"][train])
        b, p = key // self.P, key % self.P
        self.pop = np.bincount(p, minlength=self.P).astype(np.float64)
        # basket -> household / store
        hh_of_b = np.zeros(int(a["basket"].max()) + 1, np.int64)
        hh_of_b[a["basket"]] = a["hh"]
        st_of_b = np.zeros_like(hh_of_b)
        st_of_b[a["basket"]] = a["store"]
        H = int(a["hh"].max()) + 1
        S = int(a["store"].max()) + 1
        ones = np.ones(len(b))
        self.user_counts = sp.csr_matrix((ones, (hh_of_b[b], p)), shape=(H, self.P))
        self.store_counts = sp.csr_matrix((ones, (st_of_b[b], p)), shape=(S, self.P))
        # vocab-level basket matrix for co-occurrence
        vp = self.vocab_of[p]
        keep = vp >= 0
        bb, bidx = np.unique(b[keep], return_inverse=True)
        self.basket_item = sp.csr_matrix((np.ones(keep.sum()), (bidx, vp[keep])), shape=(len(bb), self.V))
        self.basket_hh = hh_of_b[bb]
        self.basket_t = np.zeros(len(bb))
        bt_of_b = np.zeros(len(hh_of_b))
        bt_of_b[a["basket"]] = bt
        self.basket_t = bt_of_b[bb]
        self.user_vocab = self.user_counts[:, self.vocab].tocsr()
        self.H = H
        # distinct baskets per product in the last HEAT_WEEKS training weeks (what a node knows at test start)
        wk_of_b = np.zeros(len(hh_of_b), np.int64)
        wk_of_b[a["basket"]] = a["week"]
        recent = wk_of_b[b] > train_last_week - HEAT_WEEKS
        self.recent_pop = np.bincount(p[recent], minlength=self.P).astype(np.float64)


class GlobalPop:
    name = "global_pop"

    def __init__(self, c: Context) -> None:
        self.c = c

    def recommend(self, pr: Problem, k: int, exclude: set[int]) -> list[int]:
        return _topk(self.c.pop, k, exclude)


class RecentPop:
    """Global popularity of the last 14 days of the training weeks (item sales heat alone), ties by
    all-time popularity: what the model's heat term can buy on its own."""

    name = "recent_pop"

    def __init__(self, c: Context) -> None:
        self.c = c
        self._scores = c.recent_pop + c.pop / (c.pop.max() + 1)

    def recommend(self, pr: Problem, k: int, exclude: set[int]) -> list[int]:
        return _topk(self._scores, k, exclude)


class StorePop:
    name = "store_pop"

    def __init__(self, c: Context) -> None:
        self.c = c

    def recommend(self, pr: Problem, k: int, exclude: set[int]) -> list[int]:
        s = int(self.c.prep.a["store"][pr.basket_line])
        row = self.c.store_counts.getrow(s).toarray()[0]
        return _topk(row * 1e6 + self.c.pop, k, exclude)


class GPTopFreq:
    """Personal top frequency (distinct baskets), ties and fill by global popularity."""

    name = "gp_topfreq"

    def __init__(self, c: Context) -> None:
        self.c = c
        self._pop = c.pop / (c.pop.max() + 1)

    def recommend(self, pr: Problem, k: int, exclude: set[int]) -> list[int]:
        if len(pr.hist_lines) == 0:
            return _topk(self.c.pop, k, exclude)
        row = self.c.user_counts.getrow(pr.hh)
        scores = self._pop.copy()
        scores[row.indices] += row.data
        return _topk(scores, k, exclude)


class ItemKNN:
    """Co-occurrence (cosine) kNN: queries with the reveals when there are any, else the history."""

    name = "item_knn"

    def __init__(self, c: Context, neighbours: int = 100) -> None:
        self.c = c
        X = c.basket_item
        co = (X.T @ X).tocsr().astype(np.float32)
        d = np.sqrt(co.diagonal()) + 1e-9
        co = sp.diags(1 / d) @ co @ sp.diags(1 / d)
        co.setdiag(0)
        co.eliminate_zeros()
        co = co.tocsr()
        # keep top-n neighbours per row
        rows, cols, vals = [], [], []
        for i in range(co.shape[0]):
            s, e = co.indptr[i], co.indptr[i + 1]
            if e - s > neighbours:
                sel = np.argpartition(-co.data[s:e], neighbours - 1)[:neighbours] + s
            else:
                sel = np.arange(s, e)
            rows.append(np.full(len(sel), i))
            cols.append(co.indices[sel])
            vals.append(co.data[sel])
        self.sim = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                 shape=co.shape)
        self._pop = (c.pop[c.vocab] / (c.pop.max() + 1)).astype(np.float32) * 1e-3

    def recommend(self, pr: Problem, k: int, exclude: set[int]) -> list[int]:
        c = self.c
        if pr.session:
            q = [c.vocab_of[p] for p in pr.session]
            q = [int(i) for i in q if i >= 0]
            w = np.ones(len(q), np.float32)
        elif len(pr.hist_lines):
            row = c.user_vocab.getrow(pr.hh)
            q, w = row.indices.tolist(), row.data.astype(np.float32)
        else:
            q, w = [], np.zeros(0, np.float32)
        scores = self._pop.copy()
        if q:
            qv = sp.csr_matrix((w, (np.zeros(len(q), int), q)), shape=(1, c.V))
            scores += (qv @ self.sim).toarray().ravel().astype(np.float32)
        return _topk(scores, k, exclude, c.vocab)


class ALS:
    """implicit ALS on household × vocab item basket counts (bm25 weighted)."""

    name = "als"

    def __init__(self, c: Context, factors: int = 64, iterations: int = 15, seed: int = 0) -> None:
        from implicit.als import AlternatingLeastSquares
        from implicit.nearest_neighbours import bm25_weight

        self.c = c
        self.ui = c.user_vocab.astype(np.float32).tocsr()
        weighted = bm25_weight(self.ui, K1=100, B=0.8).tocsr().astype(np.float32)
        self.model = AlternatingLeastSquares(factors=factors, iterations=iterations, regularization=0.05,
                                             random_state=seed, num_threads=1)
        self.model.fit(weighted, show_progress=False)
        self.weighted = weighted

    def recommend(self, pr: Problem, k: int, exclude: set[int]) -> list[int]:
        c = self.c
        m = self.model
        if pr.session:
            q = [int(c.vocab_of[p]) for p in pr.session if c.vocab_of[p] >= 0]
            if not q:
                return GlobalPop(c).recommend(pr, k, exclude)
            items = sp.csr_matrix((np.ones(len(q), np.float32), (np.zeros(len(q), int), q)), shape=(1, c.V))
            if len(pr.hist_lines):
                items = items + self.weighted[pr.hh]
            uf = m.recalculate_user(0, items)
        elif len(pr.hist_lines):
            uf = m.user_factors[pr.hh]
        else:
            return GlobalPop(c).recommend(pr, k, exclude)
        uf = np.asarray(uf).ravel()
        scores = np.asarray(m.item_factors) @ uf
        return _topk(scores, k, exclude, c.vocab)


class TIFUKNN:
    """TIFU-KNN (Hu et al. 2020): time-decayed grouped basket vectors + user kNN."""

    name = "tifu_knn"

    def __init__(self, c: Context, group: int = 7, rb: float = 0.9, rg: float = 0.7, neighbours: int = 300,
                 alpha: float = 0.7) -> None:
        self.c = c
        self.alpha, self.nn = alpha, neighbours
        X = c.basket_item.tocsr()
        order = np.lexsort((c.basket_t, c.basket_hh))
        hh_sorted = c.basket_hh[order]
        bounds = np.searchsorted(hh_sorted, np.arange(c.H + 1))
        U = np.zeros((c.H, c.V), np.float32)
        for h in range(c.H):
            lo, hi = bounds[h], bounds[h + 1]
            if hi == lo:
                continue
            bs = order[lo:hi]
            n = len(bs)
            groups = [bs[max(0, e - group): e] for e in range(n, 0, -group)][::-1]
            vec = np.zeros(c.V, np.float32)
            G = len(groups)
            for gi, g in enumerate(groups):
                m = len(g)
                wts = rb ** (m - 1 - np.arange(m))
                gv = np.asarray(X[g].T @ wts).ravel() / m
                vec += (rg ** (G - 1 - gi)) * gv
            U[h] = vec / G
        self.U = U
        norms = np.linalg.norm(U, axis=1) + 1e-9
        self.Un = U / norms[:, None]
        self._pop = (c.pop[c.vocab] / (c.pop.max() + 1)).astype(np.float32) * 1e-4

    def recommend(self, pr: Problem, k: int, exclude: set[int]) -> list[int]:
        c = self.c
        if len(pr.hist_lines) == 0:
            return _topk(c.pop, k, exclude)
        u = self.U[pr.hh]
        sims = self.Un @ self.Un[pr.hh]
        sims[pr.hh] = -1
        nn = min(self.nn, len(sims) - 1)
        nb = np.argpartition(-sims, nn - 1)[:nn]
        scores = self.alpha * u + (1 - self.alpha) * self.U[nb].mean(axis=0) + self._pop
        return _topk(scores, k, exclude, c.vocab)


class NaiveUserCF:
    """The seed article's user-based CF: cosine neighbours, then drop everything already purchased."""

    name = "user_cf_naive"

    def __init__(self, c: Context, neighbours: int = 50) -> None:
        self.c = c
        B = (c.user_vocab > 0).astype(np.float32).tocsr()
        self.B = B
        n = np.sqrt(np.asarray(B.sum(axis=1)).ravel()) + 1e-9
        self.Bn = sp.diags(1 / n) @ B
        self.nn = neighbours

    def recommend(self, pr: Problem, k: int, exclude: set[int]) -> list[int]:
        c = self.c
        if len(pr.hist_lines) == 0:
            return _topk(c.pop, k, exclude)
        sims = np.asarray((self.Bn @ self.Bn[pr.hh].T).todense()).ravel()
        sims[pr.hh] = -1
        nn = min(self.nn, len(sims) - 1)
        nb = np.argpartition(-sims, nn - 1)[:nn]
        scores = np.asarray(self.B[nb].T @ sims[nb]).ravel()
        bought = self.B[pr.hh].indices
        scores[bought] = -np.inf
        return _topk(scores, k, exclude, c.vocab)


def build_all(c: Context, include: tuple[str, ...] | None = None, seed: int = 0) -> list[Any]:
    out: list[Any] = []
    makers: list[tuple[str, Any]] = [
        ("global_pop", lambda: GlobalPop(c)), ("recent_pop", lambda: RecentPop(c)), ("store_pop", lambda: StorePop(c)),
        ("gp_topfreq", lambda: GPTopFreq(c)), ("item_knn", lambda: ItemKNN(c)),
        ("als", lambda: ALS(c, seed=seed)), ("tifu_knn", lambda: TIFUKNN(c)),
        ("user_cf_naive", lambda: NaiveUserCF(c)),
    ]
    for name, make in makers:
        if include is not None and name not in include:
            continue
        try:
            out.append(make())
        except ImportError as exc:
            log.warning("baseline %s skipped: %s", name, exc)
    return out

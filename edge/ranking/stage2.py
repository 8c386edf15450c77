"""The learned second stage (re-ranker) over the stage-1 model's candidate pool.

Stage 1 (the int8 graph plus the node-side float terms in ``ranker.py``) scores the whole
vocabulary; stage 2 re-scores its best ``pool`` candidates (the shopper's just-picked items
left out) with a tiny MLP over per-candidate features that stage 1 mixes only linearly or not at
all: the stage-1 score and rank, the 10 repeat columns, co-occurrence with the session (sum and max)
and with the history, popularity, heat, the candidate category's share in the history and in the
session, embedding similarity to the session, and the shopper's history / session size.

It is trained offline (``models/stage2.py``) on stage-1 scores of baskets stage 1 never saw
(the standard two-stage recipe) with a listwise softmax loss on the basket's items in the pool.
The weights ship in the release as ``stage2.npz`` (listed in the manifest with its sha256); a
release without it is served by stage 1 alone.

Cost on the node: ~20 small numpy calls and two [pool, F] x [F, H] matmuls per request.
The functions here are the ones training uses (``features``, ``forward``): the node computes the
numbers the weights were fitted on.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge.ranking.features import HIST_LEN, REPEAT_FEATURES, SESSION_LEN, RepeatFeatures, repeat_matrix

__all__ = ["FEATURES", "Stage2", "forward", "load_stage2"]

# column names of the feature matrix, in order (the manifest lists them; a mismatch is refused)
FEATURES: tuple[str, ...] = (
    "s1_rel",  # stage-1 score minus the pool's best
    "log_rank",  # ln(1 + stage-1 rank in the pool)
    *(f"rep{j}" for j in range(REPEAT_FEATURES)),  # features.repeat_matrix row, 0 for items never bought
    "sess_cooc_sum",  # Σ cosine co-occurrence with the session's picks (stored top-K neighbours)
    "sess_cooc_max",
    "hist_cooc",  # Σ decayed-share-weighted co-occurrence with the top history items
    "log_pop",  # ln(1 + training popularity)
    "heat",  # ln(1 + baskets in the last 14 days), as the node knows it
    "cat_hist",  # share of the history (decayed) in the candidate's category
    "cat_sess",  # share of the session's picks in the candidate's category
    "emb_sess",  # max cosine of the item directions with the session's picks
    "log_baskets",  # ln(1 + history baskets) of the shopper
    "log_session",  # ln(1 + distinct picks used)
)
F = len(FEATURES)


WEIGHTS = ("mean", "inv_std", "w1", "b1", "wl", "w2")


def _weights(params: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray] | None:
    """One weight set (float32, shapes checked) or None if the file has none under ``prefix``."""
    if f"{prefix}w1" not in params:
        return None
    p = {k: np.asarray(params[prefix + k], np.float32) for k in WEIGHTS}
    H = p["w1"].shape[1] if p["w1"].ndim == 2 else -1
    want = {"mean": (F,), "inv_std": (F,), "w1": (F, H), "b1": (H,), "wl": (F,), "w2": (H,)}
    for k, shape in want.items():
        if p[k].shape != shape:
            raise ValueError(f"stage-2 weight {prefix}{k} has shape {list(p[k].shape)}, expected {list(shape)}")
    return p


def forward(params: Mapping[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Stage-2 scores [P] (float32) for a feature matrix [P, F]: linear + one ReLU layer on
    standardised features. The one implementation (training evaluates it too)."""
    xn = (X - params["mean"]) * params["inv_std"]
    h = xn @ params["w1"]
    h += params["b1"]
    np.maximum(h, 0.0, out=h)
    out: np.ndarray = xn @ params["wl"] + h @ params["w2"]
    return out


def _best(scores: np.ndarray, m: int) -> np.ndarray:
    """Indices of the ``m`` largest scores (unordered). A threshold from a strided sample keeps a few hundred
    items, the exact partition runs on those (a partition of all 10,000 cost ~60 µs a call); every item
    above the threshold is kept, so the set is the same as ``argpartition(-scores, m - 1)[:m]``."""
    n = len(scores)
    if m >= n:
        return np.arange(n)
    if 16 * m < n:
        sample = scores[::16]
        q = len(sample) - 1 - min(len(sample) - 1, 2 * m // 16 + 8)
        cand = np.flatnonzero(scores >= np.partition(sample, q)[q])
        if len(cand) >= m:
            return cand[np.argpartition(-scores[cand], m - 1)[:m]]
    return np.argpartition(-scores, m - 1)[:m]


class Stage2:
    """Stage-2 weights bound to one ranker's side data; ``rescore`` edits the stage-1 scores in place."""

    def __init__(self, params: Mapping[str, np.ndarray], ranker: Any) -> None:
        names = tuple(str(x) for x in np.asarray(params["features"]).tolist())
        if names != FEATURES:
            raise ValueError(f"stage-2 features {list(names)} are not this node's {list(FEATURES)}")
        # one weight set for requests with picks in the session (prefix ``s_``), one for requests without
        # picks from shoppers with a history (``n_``); a missing set leaves those requests to stage 1
        self.sets: dict[bool, dict[str, np.ndarray] | None] = {
            True: _weights(params, "s_"), False: _weights(params, "n_")}
        if self.sets[True] is None and self.sets[False] is None:
            raise ValueError("stage-2 file has no weight set (s_* or n_*)")
        self.pool = int(np.asarray(params["pool"]))
        V = ranker.V
        if ranker._nb_idx is None:
            raise ValueError("stage 2 needs the co-occurrence table of a v3+ side file")
        self._nb_idx: np.ndarray = ranker._nb_idx
        self._nb_val: np.ndarray = ranker._nb_val
        self._cat = ranker.category
        self._ncat = int(self._cat.max()) + 1
        self._logpop = np.log1p(np.asarray(ranker.popularity, np.float32))
        self._emb = ranker.item_emb
        self._pos = np.full(V, -1, np.intp)
        self._mask = np.zeros(V, bool)
        self._sum = np.zeros(V, np.float32)
        self._max = np.zeros(V, np.float32)
        self._lock = threading.Lock()  # the scratch vectors above are shared between requests

    @classmethod
    def for_features(cls, ranker: Any, pool: int) -> Stage2:
        """Zero weights: only ``features`` is used (collecting training lists, tests)."""
        z = {"features": np.asarray(FEATURES), "pool": np.asarray(pool), "n_mean": np.zeros(F),
             "n_inv_std": np.ones(F), "n_w1": np.zeros((F, 1)), "n_b1": np.zeros(1), "n_wl": np.zeros(F),
             "n_w2": np.zeros(1)}
        return cls(z, ranker)

    def features(self, scores: np.ndarray, rep: RepeatFeatures, latest: Sequence[int],
                 heat: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(pool, X): the best ``pool`` vocabulary items by ``scores`` (just-picked items left out), best
        first, and their feature matrix [pool, F] (float32)."""
        sess = np.asarray(latest[-SESSION_LEN:], np.intp)
        ns = len(sess)
        top = _best(scores, self.pool + ns)
        top = top[np.argsort(-scores[top], kind="stable")]
        if ns:
            with self._lock:
                mask = self._mask
                mask[sess] = True
                top = top[~mask[top]]
                mask[sess] = False
        pool = top[: self.pool]
        P = len(pool)
        X = np.zeros((P, F), np.float32)
        s = scores[pool]
        X[:, 0] = s - s[0]
        X[:, 1] = np.log1p(np.arange(P, dtype=np.float32))
        n = len(rep.items)
        with self._lock:
            if n:
                pos = self._pos
                pos[rep.items] = np.arange(n)
                rp = pos[pool]
                pos[rep.items] = -1
                own = rp >= 0
                if own.any():
                    X[own, 2:2 + REPEAT_FEATURES] = repeat_matrix(rep)[rp[own]]
            c = 2 + REPEAT_FEATURES
            if ns:
                nb = self._nb_idx[sess].ravel()
                nv = self._nb_val[sess].ravel()
                np.add.at(self._sum, nb, nv)
                np.maximum.at(self._max, nb, nv)
                X[:, c] = self._sum[pool]
                X[:, c + 1] = self._max[pool]
                self._sum[nb] = 0.0
                self._max[nb] = 0.0
            if n:
                k = min(n, HIST_LEN)
                top_h = np.argpartition(-rep.decayed, k - 1)[:k] if n > k else np.arange(n)
                w = rep.decayed[top_h].astype(np.float32)
                w /= max(float(w.sum()), 1e-12)
                hi = rep.items[top_h]
                nb = self._nb_idx[hi].ravel()
                np.add.at(self._sum, nb, (self._nb_val[hi] * w[:, None]).ravel())
                X[:, c + 2] = self._sum[pool]
                self._sum[nb] = 0.0
        X[:, c + 3] = self._logpop[pool]
        if heat is not None:
            X[:, c + 4] = heat[pool]
        pc = self._cat[pool]
        if n:
            ch = np.bincount(self._cat[rep.items], weights=rep.decayed, minlength=self._ncat)
            X[:, c + 5] = ch[pc] / max(float(ch.sum()), 1e-12)
        if ns:
            cs = np.bincount(self._cat[sess], minlength=self._ncat)
            X[:, c + 6] = cs[pc] / ns
            X[:, c + 7] = (self._emb[pool] @ self._emb[sess].T).max(axis=1)
        X[:, c + 8] = np.log1p(rep.n_baskets)
        X[:, c + 9] = np.log1p(ns)
        return pool, X

    def rescore(self, scores: np.ndarray, rep: RepeatFeatures, latest: Sequence[int],
                heat: np.ndarray | None) -> None:
        """Replace the pool's stage-1 scores by stage-2 scores shifted above every item outside the pool
        (so the re-ranking after this sees the pool first, in stage-2 order)."""
        # with picks: ``s_``; without picks but with a history: ``n_``; a cold shopper without picks: stage 1
        params = self.sets[True] if len(latest) else (self.sets[False] if rep.n_baskets else None)
        if params is None:
            return
        pool, X = self.features(scores, rep, latest, heat)
        if not len(pool):
            return
        s2 = forward(params, X)
        floor = scores[pool[-1]]  # the pool's lowest stage-1 score >= every score outside the pool
        scores[pool] = s2 - s2.min() + floor + 1e-3


def load_stage2(data: bytes, ranker: Any) -> Stage2:
    """A ``Stage2`` from the bytes of a release's ``stage2.npz``."""
    with np.load(io.BytesIO(data)) as z:
        params = {k: z[k] for k in z.files}
    return Stage2(params, ranker)

"""The learned second stage (re-ranker) over the stage-1 model's candidate pool.

Stage 1 (the int8 graph plus the node-side float terms in ``ranker.py``) scores the whole
vocabulary; stage 2 re-scores its best ``pool`` candidates (the shopper's just-picked items, the
request's excluded skus and suppressed items left out: the re-ranking would drop them) with a
tiny MLP over per-candidate features that stage 1 mixes only linearly or not at all: the stage-1
score and rank, the 10 repeat columns, co-occurrence with the session (sum and max) and with the
history, popularity, heat, the candidate category's share in the history and in the session,
embedding similarity to the session, and the shopper's history / session size; optionally (v9, when the
release's ``stage2.npz`` lists them) the store's promotion plan for the week from ``RecRequest.promotions``
(``PROMO_FEATURES``: on display, in the mailer).

With ``rerank.catalogue_only`` (the node serving a store's catalogue) stage 1 scores the catalogue's items
only and stage 2 re-ranks the best ``pool`` of those (the items that can be shown: candidate generation is
what the store sells), so the pool-relative features ``s1_rel`` (score minus the pool's best) and
``log_rank`` are relative to the catalogue's pool there, not the vocabulary's; every other feature is the
item's own and the same. Training and requests without a catalogue use the whole vocabulary's pool.

It is trained offline (``models/stage2.py``) on stage-1 scores of baskets stage 1 never saw
(the standard two-stage recipe) with a listwise softmax loss on the basket's items in the pool.
The weights ship in the release as ``stage2.npz`` (listed in the manifest with its sha256); a
release without it is served by stage 1 alone.

Cost on the node: ~50 small numpy calls and two [pool, F] x [F, H] matmuls per request (~90 µs in a
tight loop, ~115 µs inside ``recommend`` with cold caches; the model card has the measurements).
The functions here are the ones training uses (``features``, ``forward``): the node computes the
numbers the weights were fitted on.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge.ranking.features import (
    HIST_LEN,
    REPEAT_FEATURES,
    SESSION_LEN,
    RepeatFeatures,
    repeat_matrix,
    repeat_template,
    sample_threshold,
    top_m,
)

__all__ = ["FEATURES", "PROMO_FEATURES", "Stage2", "forward", "load_stage2", "promo_columns"]

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
# optional columns (v9): the store's promotion plan for the request's week (``RecRequest.promotions``: sku ->
# "display", "mailer" or "both"). A release whose stage2.npz lists them gets them appended after ``FEATURES``;
# a release without them (v5) is served exactly as before (the columns are never made)
PROMO_FEATURES: tuple[str, ...] = (
    "on_display",  # 1 if the item is on an in-store display this week in this store ("display" / "both")
    "in_mailer",  # 1 if it is in this week's mailer ("mailer" / "both")
)
PROMO_KINDS: dict[str, tuple[float, float]] = {"display": (1.0, 0.0), "mailer": (0.0, 1.0), "both": (1.0, 1.0)}
PROMO_PLANS = 4  # promotion mappings whose [V, 2] columns (``Stage2._promo_cols``) are kept


WEIGHTS = ("mean", "inv_std", "w1", "b1", "wl", "w2")


def promo_columns(promotions: Mapping[str, str], index: Mapping[str, int], V: int) -> np.ndarray:
    """[V + 1, 2] float32 (``on_display``, ``in_mailer``) of a promotion plan (sku -> "display" / "mailer" /
    "both"; other values and skus outside the vocabulary are ignored). Row V stays 0. Training and the node
    both make the columns here."""
    cols = np.zeros((V + 1, 2), np.float32)
    get, kinds = index.get, PROMO_KINDS
    for sku, kind in promotions.items():
        i = get(sku, -1)
        v = kinds.get(kind)
        if i >= 0 and v is not None:
            cols[i] = v
    return cols


def _weights(params: Mapping[str, np.ndarray], prefix: str, F: int = F) -> dict[str, np.ndarray] | None:
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
    xn = X - params["mean"]
    xn *= params["inv_std"]  # in place: the same products as ``(X - mean) * inv_std``
    h = xn @ params["w1"]
    h += params["b1"]
    np.maximum(h, 0.0, out=h)
    out: np.ndarray = xn @ params["wl"]
    out += h @ params["w2"]
    return out


VISITS = 128  # visits whose history-structure lookups (``Stage2._visit``) are kept (ranker.HIST_CACHE_VISITS)
SESS_MEMO = 64  # pick lists whose session columns (``Stage2.features``) are kept (~4 kB each in pool mode)


class Stage2:
    """Stage-2 weights bound to one ranker's side data; ``rescore`` edits the stage-1 scores in place.

    ``features`` is the one feature function (training calls it too); its cost is per numpy call, so it is
    written for few of them (the model card has the numbers): one gather of the static columns, three
    scratch vectors for the co-occurrence sums, and per-visit lookups that depend only on the history's
    structure, not on the request time (keyed by the identity of ``rep.items`` / ``rep.share``, so another
    history misses). Its numbers are bit-identical to the earlier, plainer version's (checked on 980
    requests); the time-dependent history columns (repeat, decayed shares) are computed per request."""

    def __init__(self, params: Mapping[str, np.ndarray], ranker: Any) -> None:
        names = tuple(str(x) for x in np.asarray(params["features"]).tolist())
        if names not in (FEATURES, FEATURES + PROMO_FEATURES):
            raise ValueError(f"stage-2 features {list(names)} are not this node's {list(FEATURES)} "
                             f"(optionally + {list(PROMO_FEATURES)})")
        # the promotion columns: only for a release trained with them (else X is exactly the v5 matrix)
        self.promo = names != FEATURES
        self.n_features = len(names)
        # one weight set for requests with picks in the session (prefix ``s_``), one for requests without
        # picks from shoppers with a history (``n_``); a missing set leaves those requests to stage 1
        self.sets: dict[bool, dict[str, np.ndarray] | None] = {
            True: _weights(params, "s_", self.n_features), False: _weights(params, "n_", self.n_features)}
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
        self._V = V
        self._mask = np.zeros(V, bool)
        # session sum, session max, history sum: zero between calls; 1-d (a fancy-index reset of [V, 3] rows cost
        # ~10x more than of a 1-d vector)
        self._sum = np.zeros(V, np.float32)
        self._max = np.zeros(V, np.float32)
        self._hist = np.zeros(V, np.float32)
        self._static: tuple[Any, np.ndarray] | None = None  # (heat it was made with, [V, 2] log_pop and heat)
        self._log_rank: dict[int, np.ndarray] = {}
        self._log1p: dict[int, float] = {}
        self._visits: dict[tuple[int, int], tuple[Any, ...]] = {}
        self._index: Mapping[str, int] = ranker._index
        self._promo: dict[int, tuple[Mapping[str, str], np.ndarray]] = {}  # id(plan) -> (plan, [V + 1, 2])
        # pick list bytes -> (subset it was made for or None, co-occurrence sums / maxima at the subset's items
        # (pool mode), the picks' embedding rows, the picks' category shares); see ``features``
        self._sess_memo: dict[bytes, tuple[Any, ...]] = {}
        self._lock = threading.Lock()  # the scratch vectors above are shared between requests

    @classmethod
    def for_features(cls, ranker: Any, pool: int, promo: bool = False) -> Stage2:
        """Zero weights: only ``features`` is used (collecting training lists, tests); ``promo``: with the
        promotion columns."""
        names = FEATURES + PROMO_FEATURES if promo else FEATURES
        nf = len(names)
        z = {"features": np.asarray(names), "pool": np.asarray(pool), "n_mean": np.zeros(nf),
             "n_inv_std": np.ones(nf), "n_w1": np.zeros((nf, 1)), "n_b1": np.zeros(1), "n_wl": np.zeros(nf),
             "n_w2": np.zeros(1)}
        return cls(z, ranker)

    def _promo_cols(self, plan: Mapping[str, str]) -> np.ndarray:
        """``promo_columns`` of ``plan``, made once per plan object (the store cache hands the same mapping to
        every request of the week; keyed by identity, the entry holds the plan so its id is not reused). A
        plan must not be edited in place: a new week's plan is a new mapping."""
        ent = self._promo.get(id(plan))
        if ent is not None and ent[0] is plan:
            return ent[1]
        cols = promo_columns(plan, self._index, self._V)
        with self._lock:
            if len(self._promo) >= PROMO_PLANS:
                self._promo.pop(next(iter(self._promo)))
            self._promo[id(plan)] = (plan, cols)
        return cols

    def _static_cols(self, heat: np.ndarray | None) -> np.ndarray:
        """[V, 2] float32: ``log_pop`` and ``heat`` (0 without heat), one gather for both (8 bytes an item: a
        cold cache line holds the pair). Rebuilt when the ranker's heat array is replaced (``set_item_heat``
        makes a new one)."""
        ent = self._static
        if ent is None or ent[0] is not heat:
            m = np.zeros((self._V, 2), np.float32)
            m[:, 0] = self._logpop
            if heat is not None:
                m[:, 1] = heat
            self._static = ent = (heat, m)
        return ent[1]

    def _lp(self, n: int) -> float:
        """``np.log1p(n)`` (memoised: the same float)."""
        v = self._log1p.get(n)
        if v is None:
            v = self._log1p[n] = float(np.log1p(n))
        return v

    def _visit(self, rep: RepeatFeatures) -> tuple[Any, ...]:
        """What depends on the history's items only (not on the request time), made once per visit: the
        position (``n`` for other items) of every vocabulary item among ``rep.items``, a zero-padded
        [n + 1, REPEAT_FEATURES] buffer, ``repeat_template``, the items' categories, and for at most HIST_LEN
        items their neighbour indices / values. Keyed by the arrays' identity (a visit's requests share the
        parsed history structure; an entry holds them, so an id is not reused while it lives)."""
        key = (id(rep.items), id(rep.share))
        ent = self._visits.get(key)
        if ent is not None and ent[0] is rep.items and ent[1] is rep.share:
            return ent
        n = len(rep.items)
        pos = np.full(self._V, n, np.int32)  # 40 kB a visit
        pos[rep.items] = np.arange(n)
        buf = np.zeros((n + 1, REPEAT_FEATURES), np.float32)
        small = n <= HIST_LEN
        nbh = self._nb_idx[rep.items].ravel() if small else None
        nvh = self._nb_val[rep.items] if small else None
        ent = (rep.items, rep.share, pos, buf, repeat_template(rep), self._cat[rep.items], nbh, nvh)
        if len(self._visits) >= VISITS:
            self._visits.pop(next(iter(self._visits)))
        self._visits[key] = ent
        return ent

    def _pool(self, scores: np.ndarray, sess: np.ndarray, block: np.ndarray | None = None,
              left_out: list[np.ndarray] | None = None) -> np.ndarray:
        """The best ``pool`` positions of ``scores`` minus the picks ``sess`` (positions too; the caller may
        add the request's other exclusions) and minus the positions ``block`` (a bool mask over ``scores``:
        suppressed items) marks, best first.
        Usually: a threshold from a strided sample (``features.sample_threshold``), the picks cleared from the
        mask of the items above it, a partition of those few hundred; else ``top_m`` of all scores. The same
        items in the same order as ``top_m(scores, pool + len(sess))`` sorted, picks dropped, cut to ``pool``
        (up to exact ties).

        ``left_out``: a list that gets, when the threshold path made the pool, the positions of ``sess`` and
        ``block`` it left out although they reached the threshold (distinct): every item outside the pool that
        scores above the pool's lowest score is one of them (``Ranker._candidate_order`` uses this)."""
        m, n, ns = self.pool, len(scores), len(sess)
        if 16 * (m + ns) < n:
            above = scores >= sample_threshold(scores, m + ns)
            out: list[int] = []
            if ns:
                if left_out is not None:
                    out = sess.take(above.take(sess).nonzero()[0]).tolist()
                above[sess] = False
            cand = above.nonzero()[0]
            if block is not None:
                bm = block.take(cand)
                if left_out is not None:
                    out += cand.take(bm.nonzero()[0]).tolist()
                cand = cand[~bm]
            if len(cand) >= m:  # partition the few hundred, sort the best m (negation is exact: the same keys)
                v = -scores.take(cand)
                best = v.argpartition(m - 1)[:m]
                if left_out is not None:
                    left_out.append(np.array(list(dict.fromkeys(out)), np.intp))  # a pick may be in drop too
                return cand.take(best.take(v.take(best).argsort(kind="stable")))
        hidden = block is not None and bool(block.any())
        if block is not None and hidden:  # rare path (a thin threshold): the blocked ones out first
            scores = np.where(block, -np.inf, scores)
        top = top_m(scores, m + ns)
        top = top.take((-scores.take(top)).argsort(kind="stable"))
        drop = None if block is None else block.take(top)  # blocked or picked: one mask, the same order kept
        if ns:
            with self._lock:
                mask = self._mask
                mask[sess] = True
                picked = mask.take(top)
                mask[sess] = False
            drop = picked if drop is None else drop | picked
        kept = top if drop is None else top[~drop]
        if left_out is not None and not hidden:
            # everything outside ``top`` scores at most its last, so at most the pool's last: the left-out
            # items above that are the ones of ``top`` dropped here (distinct: ``top`` is)
            left_out.append(top[:0] if drop is None else top[drop])
        return kept[:m]

    def features(self, scores: np.ndarray, rep: RepeatFeatures, latest: Sequence[int],
                 heat: np.ndarray | None, repeat_rows: np.ndarray | None = None,
                 subset: tuple[np.ndarray, np.ndarray] | None = None, drop: np.ndarray | None = None,
                 block: np.ndarray | None = None,
                 hist_rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 left_out: list[np.ndarray] | None = None, promotions: Mapping[str, str] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(pool, X): the best ``pool`` vocabulary items by ``scores`` (just-picked items left out), best
        first, and their feature matrix [pool, F] (float32). Array methods (``take``, ``argsort``) instead of
        ``np.*`` wrappers and fancy indexing: the same numbers, ~1 µs less a call. ``repeat_rows``:
        ``features.repeat_matrix`` of ``rep`` if the caller made it already (the ranker's stage 1 does).

        ``subset`` = (idx, pos): ``scores`` are those of the vocabulary items ``idx`` only (the ranker's
        catalogue pool, ``catalogue_only``), ``pos`` [V + 1] their positions in it (-1 outside). The pool is
        then the best of those items and is returned as positions in ``scores``; ``s1_rel`` and ``log_rank``
        are relative to that pool (the catalogue's best), every other column is the item's own. Without it
        (training, requests without a catalogue) positions and vocabulary indices are the same.

        ``hist_rows`` = (top, nb, rows): for a history of more than HIST_LEN items, what the ranker's stage 1
        gathered already: ``(-rep.decayed).argpartition(HIST_LEN - 1)[:HIST_LEN]`` (``history_inputs``), the
        neighbour indices of those items raveled and their neighbour values [HIST_LEN, K] (the same arrays this
        would gather). ``left_out``: passed to ``_pool``. ``promotions``: the store's plan for the request's week
        (sku -> "display" / "mailer" / "both"); read only when the weights have the promotion columns (absent
        plan: zeros)."""
        sess = np.asarray(latest[-SESSION_LEN:], np.intp)
        ns = len(sess)
        # what the re-ranking after stage 2 drops anyway stays out of its pool: ``drop`` (vocabulary indices of
        # the request's excluded skus, -1 for unknown ones) and ``block`` (a [V] mask of suppressed items)
        out = sess if drop is None or not len(drop) else np.concatenate((sess, drop[drop >= 0]))
        if subset is None:
            pool = items = self._pool(scores, out, block, left_out)
        else:
            idx, where = subset
            sp = where.take(out)  # the picks outside the subset cannot be in its pool
            pool = self._pool(scores, sp[sp >= 0] if len(out) else sp, None if block is None else block.take(idx),
                              left_out)
            items = idx.take(pool)
        c = 2 + REPEAT_FEATURES
        n = len(rep.items)
        P = len(pool)
        if not P:  # everything picked, excluded or blocked (a small store catalogue): nothing to re-rank
            return pool, np.zeros((0, self.n_features), np.float32)
        with self._lock:
            X = np.zeros((P, self.n_features), np.float32)
            X[:, c + 3:c + 5] = self._static_cols(heat).take(items, 0)  # log_pop, heat
            s = scores.take(pool)
            np.subtract(s, s[0], out=X[:, 0])
            lr = self._log_rank.get(P)
            if lr is None:
                lr = self._log_rank[P] = np.log1p(np.arange(P, dtype=np.float32))
            X[:, 1] = lr
            sm = None
            if ns:
                # what depends on the picks only, kept for the last few pick lists (a shelf's visit comes back
                # to the same ones): in pool mode the co-occurrence sums and maxima at the subset's items
                skey = sess.tobytes()
                sm = self._sess_memo.get(skey)
                if sm is not None and sm[0] is not (None if subset is None else subset[0]):
                    sm = None
                if sm is not None and sm[1] is not None and sm[2] is not None:
                    X[:, c] = sm[1].take(pool)  # pool = positions in the subset
                    X[:, c + 1] = sm[2].take(pool)
                else:
                    nb = self._nb_idx.take(sess, 0).ravel()
                    nv = self._nb_val.take(sess, 0).ravel()
                    np.add.at(self._sum, nb, nv)
                    np.maximum.at(self._max, nb, nv)
                    X[:, c] = self._sum.take(items)
                    X[:, c + 1] = self._max.take(items)
                    sub_sum = sub_max = None
                    if subset is not None:
                        sub_sum, sub_max = self._sum.take(subset[0]), self._max.take(subset[0])
                    self._sum[nb] = 0.0
                    self._max[nb] = 0.0
                    emb_s = self._emb.take(sess, 0)
                    cat_s = np.bincount(self._cat.take(sess), minlength=self._ncat) / ns
                    sm = (None if subset is None else subset[0], sub_sum, sub_max, emb_s, cat_s)
                    if len(self._sess_memo) >= SESS_MEMO:
                        self._sess_memo.pop(next(iter(self._sess_memo)))
                    self._sess_memo[skey] = sm
            if n:
                _, _, pos, buf, tmpl, cat_h, nbh, nvh = self._visit(rep)
                buf[:n] = repeat_matrix(rep, tmpl) if repeat_rows is None else repeat_rows
                X[:, 2:c] = buf.take(pos.take(items), 0)  # row n is zeros: items never bought
                if nbh is not None and nvh is not None:  # at most HIST_LEN items: all of them, in order
                    w = rep.decayed.astype(np.float32)
                    w /= max(float(w.sum()), 1e-12)
                    hb, hv = nbh, (nvh * w[:, None]).ravel()
                elif hist_rows is not None:  # stage 1's: the same items and rows
                    top_h, hb, rows = hist_rows
                    w = rep.decayed.take(top_h).astype(np.float32, copy=False)  # a copy once, float32
                    w /= max(float(np.add.reduce(w)), 1e-12)  # ``w.sum()`` without its wrapper
                    hv = (rows * w[:, None]).ravel()
                else:
                    k = min(n, HIST_LEN)
                    top_h = (-rep.decayed).argpartition(k - 1)[:k]
                    w = rep.decayed.take(top_h).astype(np.float32, copy=False)  # a copy once, float32
                    w /= max(float(w.sum()), 1e-12)
                    hi = rep.items.take(top_h)
                    hb, hv = self._nb_idx.take(hi, 0).ravel(), (self._nb_val.take(hi, 0) * w[:, None]).ravel()
                np.add.at(self._hist, hb, hv)
                X[:, c + 2] = self._hist.take(items)
                self._hist[hb] = 0.0
        if n or ns:
            # category shares of the history and of the session per category (float64, as the quotients were
            # before the gather: elementwise, the same numbers), then one gather for both columns
            shares = np.zeros((self._ncat, 2))
            if n:
                ch = np.bincount(cat_h, weights=rep.decayed, minlength=self._ncat)
                np.divide(ch, max(float(np.add.reduce(ch)), 1e-12), out=shares[:, 0])
            if sm is not None:  # the session's category shares (counts / ns, float64) and pick embeddings
                shares[:, 1] = sm[4]
            X[:, c + 5:c + 7] = shares.take(self._cat.take(items), 0)
            if sm is not None:
                # [ns, P] and max over the first axis: the same dot products as [P, ns], ~3x cheaper to reduce
                X[:, c + 7] = np.maximum.reduce(sm[3] @ self._emb.take(items, 0).T, 0)  # .max(0)
        X[:, c + 8] = self._lp(rep.n_baskets)
        X[:, c + 9] = self._lp(ns)
        if self.promo and promotions:
            X[:, F:] = self._promo_cols(promotions).take(items, 0)
        return pool, X

    def rescore(self, scores: np.ndarray, rep: RepeatFeatures, latest: Sequence[int],
                heat: np.ndarray | None, repeat_rows: np.ndarray | None = None,
                subset: tuple[np.ndarray, np.ndarray] | None = None, drop: np.ndarray | None = None,
                block: np.ndarray | None = None,
                hist_rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                promotions: Mapping[str, str] | None = None) -> tuple[np.ndarray, np.ndarray, float] | None:
        """Replace the pool's stage-1 scores by stage-2 scores shifted above every item outside the pool
        (so the re-ranking after this sees the pool first, in stage-2 order). ``subset``: ``scores`` are
        those of these items only (``features``); the pool is then the best of them. ``drop`` / ``block``:
        excluded / suppressed items, left out of the pool (``features``) so it holds items that can be shown;
        without them (nothing excluded, no rules) the pool and scores are what they were. ``promotions``: the
        store's plan for the week (used only by weights with the promotion columns).

        Returns (pool, left out, lowest new score) when ``_pool`` reported its left-out items: the pool (positions
        in ``scores``), the excluded / blocked items ``_pool`` left out although they scored as high as the ones
        it kept, and the pool's lowest stage-2 score when it is above every stage-1 score left in the pool's
        place (the pool's lowest stage-1 score): then every item scoring at least that is in the pool or left
        out (``Ranker._candidate_order`` takes its candidates from those few). Else None."""
        # with picks: ``s_``; without picks but with a history: ``n_``; a cold shopper without picks: stage 1
        params = self.sets[True] if len(latest) else (self.sets[False] if rep.n_baskets else None)
        if params is None:
            return None
        left_out: list[np.ndarray] = []
        pool, X = self.features(scores, rep, latest, heat, repeat_rows, subset=subset, drop=drop, block=block,
                                hist_rows=hist_rows, left_out=left_out, promotions=promotions)
        if not len(pool):
            return None
        s2 = forward(params, X)
        floor = scores[pool[-1]]  # the pool's lowest stage-1 score >= every score outside the pool
        # ``s2.min()`` without its wrapper; in place, in the order of ``s2 - s2.min() + floor + 1e-3``: the same
        # numbers
        s2 -= np.minimum.reduce(s2)
        s2 += floor
        s2 += 1e-3
        scores.put(pool, s2)
        if left_out:
            low = float(np.minimum.reduce(s2))
            if low > float(floor):
                return pool, left_out[0], low
        return None


def load_stage2(data: bytes, ranker: Any) -> Stage2:
    """A ``Stage2`` from the bytes of a release's ``stage2.npz``."""
    with np.load(io.BytesIO(data)) as z:
        params = {k: z[k] for k in z.files}
    return Stage2(params, ranker)

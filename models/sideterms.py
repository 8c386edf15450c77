"""Tables for the node-side scoring terms: item sales heat and item-item basket co-occurrence.

Both are computed from training lines only (weeks <= the training split's last week, households
that are not held out), so neither the validation nor the test weeks leak into them:

- heat: per week ``w``, distinct baskets per vocab item in weeks ``w - 2`` and ``w - 1`` (the 14
  days before the week; what a store node knows from its own event stream). A training example
  uses its week's table; the node ships the table "after the last training week" (the heat known
  when the model is exported) and may refresh it (``Ranker.set_item_heat``).
- co-occurrence: cosine of the vocab items' basket columns, top-K neighbours per item (the
  ``item_knn`` baseline's measure, sparse so the node adds it for a few query items in ~20 µs).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from edge.ranking.features import HEAT_WEEKS
from models.data import Prepared

COOC_K = 24


def _train_pairs(prep: Prepared, last_week: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (basket, vocab item) pairs of training lines, with the basket's week."""
    a = prep.a
    keep = (a["week"] <= last_week) & ~a["hh_holdout"][a["hh"]]
    vi = a["vocab_of"][a["pcode"][keep]]
    b = a["basket"][keep]
    wk = a["week"][keep].astype(np.int64)
    ok = vi >= 0
    V = prep.vocab_size
    key, first = np.unique(b[ok] * V + vi[ok], return_index=True)
    return key // V, key % V, wk[ok][first]


def weekly_counts(prep: Prepared, last_week: int) -> np.ndarray:
    """[last_week + 1, V] distinct baskets per vocab item and week (row 0 unused)."""
    _, item, wk = _train_pairs(prep, last_week)
    V = prep.vocab_size
    out = np.zeros((last_week + 1) * V, np.float64)
    np.add.at(out, wk * V + item, 1.0)
    return out.reshape(last_week + 1, V)


def heat_tables(prep: Prepared, last_week: int) -> np.ndarray:
    """[last_week + 2, V] heat counts: row ``w`` = baskets in the HEAT_WEEKS weeks before week ``w``.

    Row ``last_week + 1`` is the heat known right after training (what the node ships)."""
    wc = weekly_counts(prep, last_week)
    W = last_week + 2
    out = np.zeros((W, wc.shape[1]), np.float32)
    for w in range(1, W):
        lo = max(1, w - HEAT_WEEKS)
        if lo < w:
            out[w] = wc[lo:w].sum(axis=0)
    return out


def cooc_neighbours(prep: Prepared, last_week: int, k: int = COOC_K, chunk: int = 1000
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` co-occurring vocab items per vocab item: (idx int16/int32 [V, k], cosine float32 [V, k]).

    Items with fewer than ``k`` co-occurring neighbours are padded with themselves at value 0."""
    b, item, _ = _train_pairs(prep, last_week)
    V = prep.vocab_size
    _, bidx = np.unique(b, return_inverse=True)
    X = sp.csr_matrix((np.ones(len(item), np.float32), (bidx, item)), shape=(int(bidx.max()) + 1, V))
    Xt = X.T.tocsr()
    n = np.asarray(X.sum(axis=0)).ravel().astype(np.float32)
    norm = 1.0 / np.sqrt(np.maximum(n, 1.0))
    idt = np.int16 if np.iinfo(np.int16).max >= V else np.int32  # int16: half the side file
    idx = np.zeros((V, k), idt)
    val = np.zeros((V, k), np.float32)
    for lo in range(0, V, chunk):
        hi = min(V, lo + chunk)
        co = (Xt[lo:hi] @ X).toarray()
        co *= norm[lo:hi, None] * norm[None, :]
        co[np.arange(hi - lo), np.arange(lo, hi)] = 0.0  # not its own neighbour
        top = np.argpartition(-co, k - 1, axis=1)[:, :k]
        tv = np.take_along_axis(co, top, axis=1)
        order = np.argsort(-tv, axis=1, kind="stable")
        top, tv = np.take_along_axis(top, order, axis=1), np.take_along_axis(tv, order, axis=1)
        top = np.where(tv > 0, top, np.arange(lo, hi)[:, None])
        idx[lo:hi], val[lo:hi] = top.astype(idt), np.maximum(tv, 0.0)
    return idx, val

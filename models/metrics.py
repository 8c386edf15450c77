"""Top-k metrics (the seed's precision/recall/F1/MAP plus NDCG, hit rate, repeat/explore recall,
intra-list diversity and catalogue coverage)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

K = 10


def precision_at_k(rec: Sequence[Hashable], target: set[Any], k: int = K) -> float:
    return len(set(rec[:k]) & target) / k


def recall_at_k(rec: Sequence[Hashable], target: set[Any], k: int = K) -> float:
    return len(set(rec[:k]) & target) / len(target) if target else 0.0


def f1_at_k(rec: Sequence[Hashable], target: set[Any], k: int = K) -> float:
    p, r = precision_at_k(rec, target, k), recall_at_k(rec, target, k)
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def average_precision_at_k(rec: Sequence[Hashable], target: set[Any], k: int = K) -> float:
    """AP@k = Σ_{hit at rank i} precision@i / min(|target|, k)."""
    if not target:
        return 0.0
    hits, s, seen = 0, 0.0, set()
    for i, r in enumerate(rec[:k]):
        if r in target and r not in seen:
            hits += 1
            s += hits / (i + 1)
        seen.add(r)
    return s / min(len(target), k)


def ndcg_at_k(rec: Sequence[Hashable], target: set[Any], k: int = K) -> float:
    if not target:
        return 0.0
    seen: set[Any] = set()
    dcg = 0.0
    for i, r in enumerate(rec[:k]):
        if r in target and r not in seen:
            dcg += 1.0 / math.log2(i + 2)
        seen.add(r)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(target), k)))
    return dcg / idcg


def hit_at_k(rec: Sequence[Hashable], target: set[Any], k: int = K) -> float:
    return 1.0 if set(rec[:k]) & target else 0.0


def intra_list_diversity(rec: Sequence[Hashable], category: Mapping[Any, Any], k: int = K) -> float:
    """Share of item pairs in the list whose categories differ (1 = all different)."""
    items = list(rec[:k])
    n = len(items)
    if n < 2:
        return 0.0
    cats = [category.get(i) for i in items]
    diff = sum(1 for a in range(n) for b in range(a + 1, n) if cats[a] != cats[b] or cats[a] is None)
    return diff / (n * (n - 1) / 2)


def summarize(recs: Sequence[Sequence[Hashable]], targets: Sequence[set[Any]],
              repeat: Sequence[set[Any]] | None = None, category: Mapping[Any, Any] | None = None,
              catalogue_size: int | None = None, k: int = K) -> dict[str, float]:
    """Mean of each per-request metric; repeat/explore recall over requests that have such targets."""
    n = len(recs)
    if n == 0:
        return {"n": 0}
    out: dict[str, float] = {"n": n}
    for name, fn in (("precision", precision_at_k), ("recall", recall_at_k), ("f1", f1_at_k),
                     ("map", average_precision_at_k), ("ndcg", ndcg_at_k), ("hit_rate", hit_at_k)):
        out[name] = float(np.mean([fn(r, t, k) for r, t in zip(recs, targets, strict=True)]))
    if repeat is not None:
        rr, er = [], []
        for r, t, rep in zip(recs, targets, repeat, strict=True):
            tr, te = t & rep, t - rep
            top = set(r[:k])
            if tr:
                rr.append(len(top & tr) / len(tr))
            if te:
                er.append(len(top & te) / len(te))
        out["repeat_recall"] = float(np.mean(rr)) if rr else 0.0
        out["explore_recall"] = float(np.mean(er)) if er else 0.0
    if category is not None:
        out["diversity"] = float(np.mean([intra_list_diversity(r, category, k) for r in recs]))
    if catalogue_size:
        out["coverage"] = len({i for r in recs for i in r[:k]}) / catalogue_size
    return {k_: (round(v, 5) if isinstance(v, float) else v) for k_, v in out.items()}

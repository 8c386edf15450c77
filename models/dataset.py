"""Training examples and the fixed evaluation problems (P1–P4), built from ``Prepared``.

Both use ``edge.ranking.features`` so the model is trained on exactly the
numbers the node computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.ranking.features import (
    HIST_LEN,
    MAX_REPEAT_ITEMS,
    REPEAT_FEATURES,
    SESSION_LEN,
    ContextSpec,
    history_inputs,
    repeat_features,
    repeat_matrix,
    session_inputs,
)
from models.data import Prepared

MAX_TARGET = 64


def context_spec(prep: Prepared) -> ContextSpec:
    return ContextSpec(stores=tuple(prep.meta["stores"]),
                       demographics={k: tuple(v) for k, v in prep.meta["demographics"].items()})


@dataclass
class Baskets:
    """Per-line basket time (basket's first line) and per-household basket lists."""

    line_t: np.ndarray
    hh_bounds: np.ndarray


def basket_times(prep: Prepared) -> np.ndarray:
    b = prep.a["basket"]
    t = prep.a["t_days"]
    first = np.full(int(b.max()) + 1, np.inf)
    np.minimum.at(first, b, t)
    return first[b]


@dataclass
class Examples:
    hist_items: np.ndarray
    hist_weights: np.ndarray
    session_items: np.ndarray
    session_weights: np.ndarray
    context: np.ndarray
    rep_idx: np.ndarray  # [N, R] vocab index, V = padding
    rep_val: np.ndarray  # [N, R, REPEAT_FEATURES] rows of features.repeat_matrix
    target: np.ndarray  # [N, MAX_TARGET] vocab index, V = padding
    week: np.ndarray | None = None  # [N] week of the target basket (selects the item-heat table)

    def __len__(self) -> int:
        return len(self.context)


@dataclass
class Problem:
    """One evaluation request: the ranker sees history/session/context, we score against target."""

    hh: int
    hist_lines: np.ndarray  # line indices (into prepared arrays) of the visible history
    session: list[int]  # product codes revealed
    target: np.ndarray  # distinct product codes to find
    basket_line: int  # a line index of the target basket (context: time, store)
    extra: dict[str, Any] = field(default_factory=dict)


def _profile(prep: Prepared, hh: int) -> dict[str, Any] | None:
    hid = prep.meta["households"][hh]
    return prep.meta["customers"].get(hid)


def build_examples(prep: Prepared, last_week: int, seed: int, per_household: int = 30,
                   p_cold: float = 0.15, p_session: float = 0.5, progress: Any = None,
                   p_cold_no_profile: float = 0.0) -> Examples:
    """Training examples from weeks <= last_week of non-held-out households. ``p_cold_no_profile``: the share
    of history-dropped examples that also lose the demographics (0 = only the usual 10 %; the random stream,
    hence the examples, are then those of earlier versions)."""
    rng = np.random.default_rng(seed)
    a = prep.a
    V = prep.vocab_size
    spec = context_spec(prep)
    C = spec.size
    vocab_of = a["vocab_of"]
    line_t = basket_times(prep)
    bounds = prep.hh_bounds()
    store_ids = prep.meta["store_ids"]
    rows: list[tuple[Any, ...]] = []
    hh_iter = range(len(bounds) - 1)
    for h in (progress(hh_iter, desc="examples") if progress else hh_iter):
        if a["hh_holdout"][h]:
            continue
        lo, hi = int(bounds[h]), int(bounds[h + 1])
        wk = a["week"][lo:hi]
        hi = lo + int(np.searchsorted(wk, last_week, side="right")) if np.all(np.diff(wk) >= 0) else \
            lo + int((wk <= last_week).sum())
        if hi - lo == 0:
            continue
        bt = line_t[lo:hi]
        starts = np.flatnonzero(np.r_[True, np.diff(bt) > 0])
        if len(starts) < 2:
            continue
        ks = np.arange(1, len(starts))
        if len(ks) > per_household:
            ks = np.sort(rng.choice(ks, per_household, replace=False))
        idx_all = vocab_of[a["pcode"][lo:hi]]
        profile = _profile(prep, h)
        for k in ks:
            s = int(starts[k])
            e = int(starts[k + 1]) if k + 1 < len(starts) else hi - lo
            tgt = np.unique(idx_all[s:e])
            tgt = tgt[tgt >= 0]
            if len(tgt) == 0:
                continue
            cold = rng.random() < p_cold
            sess: list[int] = []
            if rng.random() < p_session and len(tgt) >= 2:
                r = int(rng.integers(1, min(3, len(tgt) - 1) + 1))
                sess = [int(x) for x in rng.choice(tgt, r, replace=False)]
                tgt = np.setdiff1d(tgt, sess)
            now = float(bt[s])
            rep = repeat_features(idx_all[:s], bt[:s], now) if not cold else repeat_features(
                idx_all[:0], bt[:0], now)
            li = lo + s
            prof = profile if rng.random() > 0.1 else None
            if cold and p_cold_no_profile > 0 and rng.random() < p_cold_no_profile:
                prof = None
            rows.append((rep, sess, tgt, int(a["hour"][li]), int(a["weekday"][li]),
                         store_ids[int(a["store"][li])], prof, int(a["week"][li])))
    N = len(rows)
    R = MAX_REPEAT_ITEMS
    ex = Examples(
        hist_items=np.zeros((N, HIST_LEN), np.int32), hist_weights=np.zeros((N, HIST_LEN), np.float32),
        session_items=np.zeros((N, SESSION_LEN), np.int32),
        session_weights=np.zeros((N, SESSION_LEN), np.float32),
        context=np.zeros((N, C), np.float32), rep_idx=np.full((N, R), V, np.int32),
        rep_val=np.zeros((N, R, REPEAT_FEATURES), np.float32), target=np.full((N, MAX_TARGET), V, np.int32),
    )
    weeks = np.zeros(N, np.int32)
    for n, (rep, sess, tgt, hour, wd, store, prof, week) in enumerate(rows):
        weeks[n] = week
        history_inputs(rep, ex.hist_items[n], ex.hist_weights[n])
        ns = session_inputs(sess, ex.session_items[n], ex.session_weights[n])
        spec.encode(ex.context[n], hour, wd, store, prof, rep.n_baskets, ns)
        m = len(rep.items)
        ex.rep_idx[n, :m] = rep.items
        ex.rep_val[n, :m] = repeat_matrix(rep)
        t = tgt[:MAX_TARGET]
        ex.target[n, : len(t)] = t
    ex.week = weeks
    return ex


def build_problems(prep: Prepared, seed: int = 0, train_last_week: int | None = None,
                   test_first_week: int | None = None, test_last_week: int | None = None,
                   max_p2: int | None = None) -> dict[str, list[Problem]]:
    """P1, P2, P3a, P3b on the fixed split (or a validation split inside training weeks)."""
    split = prep.split
    tlw = split.train_last_week if train_last_week is None else train_last_week
    tfw = split.test_first_week if test_first_week is None else test_first_week
    tlast = split.test_last_week if test_last_week is None else test_last_week
    rng = np.random.default_rng(seed)
    a = prep.a
    line_t = basket_times(prep)
    bounds = prep.hh_bounds()
    out: dict[str, list[Problem]] = {"P1": [], "P2": [], "P3a": [], "P3b": []}
    for h in range(len(bounds) - 1):
        lo, hi = int(bounds[h]), int(bounds[h + 1])
        wk = a["week"][lo:hi]
        train_lines = np.flatnonzero(wk <= tlw) + lo
        test_lines = np.flatnonzero((wk >= tfw) & (wk <= tlast)) + lo
        if len(test_lines) == 0:
            continue
        tb = line_t[test_lines]
        starts = np.flatnonzero(np.r_[True, np.diff(tb) > 0])
        baskets = [test_lines[s:e] for s, e in zip(starts, [*starts[1:], len(test_lines)], strict=True)]
        n_train_b = len(np.unique(line_t[train_lines])) if len(train_lines) else 0
        if a["hh_holdout"][h]:
            first = baskets[0]
            tgt = np.unique(a["pcode"][first])
            out["P3a"].append(Problem(h, train_lines[:0], [], tgt, int(first[0])))
            if len(tgt) >= 4:
                rev = [int(x) for x in rng.choice(tgt, 3, replace=False)]
                out["P3b"].append(Problem(h, train_lines[:0], rev, np.setdiff1d(tgt, rev), int(first[0])))
            continue
        if n_train_b == 0:
            continue
        if n_train_b >= 3:
            out["P1"].append(Problem(h, train_lines, [], np.unique(a["pcode"][baskets[0]]), int(baskets[0][0])))
        for b in baskets:
            tgt = np.unique(a["pcode"][b])
            if len(tgt) >= 5:
                rev = [int(x) for x in rng.choice(tgt, 3, replace=False)]
                out["P2"].append(Problem(h, train_lines, rev, np.setdiff1d(tgt, rev), int(b[0])))
    if max_p2 is not None and len(out["P2"]) > max_p2:
        keep = np.sort(np.random.default_rng(seed + 1).choice(len(out["P2"]), max_p2, replace=False))
        out["P2"] = [out["P2"][i] for i in keep]
    return out

"""Features shared by training (models/) and the node (edge/ranking).

One implementation on purpose: the model sees exactly the same numbers at
training time and on the node. Everything here is plain numpy, no TensorFlow.

Inputs of the model (names are the manifest's feature spec):

- ``hist_items`` int32 [1, HIST_LEN]: the shopper's top history items (vocab
  index + 1; 0 pads), ranked by time-decayed purchase share.
- ``hist_weights`` float [1, HIST_LEN]: their decayed shares, normalised to sum 1.
- ``session_items`` int32 [1, SESSION_LEN]: items picked up in this visit.
- ``session_weights`` float [1, SESSION_LEN]: 1/n for each real session item.
- ``context`` float [1, C]: local hour and weekday one-hots, store one-hot,
  demographic one-hots (with an "unknown" slot each), history/session sizes.
- the repeat term (computed on the node for the items the shopper bought,
  not a model input; see ``repeat_matrix``) uses, per
  vocab item, all 0 for items never bought: bought before (1), log share of
  baskets containing it (6 + ln share, floored at 0), exp(-days since last
  purchase / 21), log 90-day decayed share (6 + ln, floored at 0). Logs
  because a softmax logit is a log-probability: a linear layer on them is
  already personal top-frequency. Appended (v3; a model trained on the first
  four reads only those, see ``repeat_matrix``): in the last basket (1/0),
  has a repurchase interval (bought in >= 2 baskets), clipped
  ln((days since last + 1) / (mean days between its purchases + 1)) (0 = "due
  now", > 0 overdue, < 0 just bought), and ln(1 + trips per week) of the shopper.
  Appended (v4; older models read their prefix): in one of the last 3 baskets (1/0) and ln(1 + baskets
  with the item in the last 28 days) — the short-window repeat signals next-basket papers find strong.
- item sales heat and basket co-occurrence are node-side terms over the whole
  vocabulary (``heat_log``, ``cooc_scores``), weights learned with the network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEMOGRAPHIC_FIELDS",
    "HIST_LEN",
    "INPUT_NAMES",
    "MAX_REPEAT_ITEMS",
    "REPEAT_FEATURES",
    "SESSION_LEN",
    "ContextSpec",
    "HistoryStructure",
    "RepeatFeatures",
    "cooc_scores",
    "heat_log",
    "history_inputs",
    "history_structure",
    "repeat_features",
    "repeat_from_structure",
    "repeat_matrix",
    "repeat_template",
    "sample_threshold",
    "session_inputs",
    "top_m",
]

HIST_LEN = 32
SESSION_LEN = 16
MAX_REPEAT_ITEMS = 256  # cap on distinct history items fed to the repeat path (lowest decayed share dropped)
RECENCY_DAYS = 21.0
DECAY_DAYS = 90.0

INPUT_NAMES: tuple[str, ...] = (
    "hist_items",
    "hist_weights",
    "session_items",
    "session_weights",
    "context",
)
# bought, log share, recency, log decayed share, in last basket, has interval, log due ratio, log trips/week,
# in the last 3 baskets, ln(1 + baskets in the last 28 days)
REPEAT_FEATURES = 10
REPEAT_FEATURES_V3 = 8  # what v3 models were trained on (a prefix of the current rows)
LAST_BASKETS = 3
RECENT_DAYS = 28.0
REPEAT_FEATURES_V2 = 4  # what models before v3 were trained on (a prefix of the current rows)
DUE_CLIP = 3.0
HEAT_WEEKS = 2  # item sales heat = distinct baskets with the item in the last 14 days
LOG_FLOOR = 6.0

DEMOGRAPHIC_FIELDS: tuple[str, ...] = (
    "age",
    "income",
    "home_ownership",
    "marital_status",
    "household_size",
    "household_comp",
    "kids_count",
)


@dataclass(frozen=True)
class ContextSpec:
    """Layout of the ``context`` input; serialised into the manifest."""

    stores: tuple[str, ...] = ()
    demographics: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return 24 + 7 + len(self.stores) + 1 + sum(len(v) + 1 for v in self.demographics.values()) + 3

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": ["hour[24]", "weekday[7]", f"store[{len(self.stores)}+other]",
                       *[f"{k}[{len(v)}+unknown]" for k, v in self.demographics.items()],
                       "log1p_baskets/5", "has_history", "session_len/16"],
            "size": self.size,
            "stores": list(self.stores),
            "demographics": {k: list(v) for k, v in self.demographics.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ContextSpec:
        return cls(stores=tuple(str(s) for s in d.get("stores", ())),
                   demographics={str(k): tuple(str(x) for x in v)
                                 for k, v in dict(d.get("demographics", {})).items()})

    def encode(self, out: np.ndarray, hour: float, weekday: float, store_id: str | None,
               profile: Mapping[str, Any] | None, n_baskets: int, n_session: int) -> int:
        """Fill ``out`` (zeroed float32 [size]); return how many values were clamped or unknown."""
        bad = 0
        h = _clamp_int(hour, 0, 23)
        w = _clamp_int(weekday, 0, 6)
        bad += (h is None or h != hour) + (w is None or w != weekday)
        out[0 if h is None else h] = 1.0
        out[24 + (0 if w is None else w)] = 1.0
        pos = 31
        sidx = len(self.stores)
        if store_id is not None:
            try:
                sidx = self.stores.index(str(store_id))
            except ValueError:
                sidx = len(self.stores)
        out[pos + sidx] = 1.0
        pos += len(self.stores) + 1
        for name, cats in self.demographics.items():
            v = None if profile is None else profile.get(name)
            j = len(cats)
            if v is not None:
                sv = str(v)
                if sv in cats:
                    j = cats.index(sv)
                elif _is_number(v) and str(int(float(v))) in cats:  # e.g. household_size 2 vs "2"
                    j = cats.index(str(int(float(v))))
                else:
                    bad += 1
            out[pos + j] = 1.0
            pos += len(cats) + 1
        out[pos] = min(math.log1p(max(n_baskets, 0)) / 5.0, 2.0)
        out[pos + 1] = 1.0 if n_baskets > 0 else 0.0
        out[pos + 2] = min(n_session, SESSION_LEN) / SESSION_LEN
        return bad


def _is_number(v: Any) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return math.isfinite(f)


def _clamp_int(v: float, lo: int, hi: int) -> int | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    return int(min(max(int(f), lo), hi))


_EMPTY_I = np.zeros(0, np.int64)
_EMPTY_F = np.zeros(0, np.float32)


@dataclass(frozen=True, slots=True)
class RepeatFeatures:
    """Per-item repeat signal of one shopper (vocab indices, 0-based)."""

    items: np.ndarray  # int64 [n]
    share: np.ndarray  # float32 [n]
    recency: np.ndarray  # float32 [n]
    decayed: np.ndarray  # float32 [n]
    n_baskets: int
    in_last: np.ndarray = field(default_factory=lambda: _EMPTY_F)  # float32 [n]: in the latest basket
    due: np.ndarray = field(default_factory=lambda: _EMPTY_F)  # float32 [n]: clipped log due ratio, 0 if none
    has_iv: np.ndarray = field(default_factory=lambda: _EMPTY_F)  # float32 [n]: bought in >= 2 baskets
    trips: float = 0.0  # ln(1 + baskets per week) over the history span
    in_last3: np.ndarray = field(default_factory=lambda: _EMPTY_F)  # float32 [n]: in one of the last 3 baskets
    recent: np.ndarray = field(default_factory=lambda: _EMPTY_F)  # float32 [n]: ln(1 + baskets in last 28 days)


EMPTY_REPEAT = RepeatFeatures(_EMPTY_I, _EMPTY_F, _EMPTY_F, _EMPTY_F, 0)


@dataclass(frozen=True, slots=True)
class HistoryStructure:
    """The time-independent part of the repeat features (cacheable per visit)."""

    tb: np.ndarray  # distinct basket times (days), ascending
    items: np.ndarray  # distinct vocab items bought
    inv: np.ndarray  # per (item, basket) pair: position in ``items``
    bk: np.ndarray  # per pair: basket position in ``tb``
    count: np.ndarray  # baskets containing each item
    last_b: np.ndarray  # latest basket position per item
    first_b: np.ndarray  # earliest basket position per item
    # time-independent repeat columns, made once per visit (float32 0/1, float64 mean interval + 1 day)
    in_last: np.ndarray = field(default_factory=lambda: _EMPTY_F)
    has_iv: np.ndarray = field(default_factory=lambda: _EMPTY_F)
    iv_p1: np.ndarray = field(default_factory=lambda: _EMPTY_F)
    in_last3: np.ndarray = field(default_factory=lambda: _EMPTY_F)
    # share of baskets holding each item (float64 count / baskets, and its float32 copy): time-independent,
    # so made once per visit instead of once per request
    share: np.ndarray = field(default_factory=lambda: _EMPTY_F)
    share32: np.ndarray = field(default_factory=lambda: _EMPTY_F)


def history_structure(idx: np.ndarray, t_days: np.ndarray) -> HistoryStructure | None:
    """Group history lines into baskets (same time = one basket); None for an empty history."""
    if len(t_days) == 0:
        return None
    tb, binv = _unique_inverse(t_days)
    n_b = len(tb)
    valid = idx >= 0
    if not valid.any():
        return HistoryStructure(tb, _EMPTY_I, _EMPTY_I, _EMPTY_I, _EMPTY_I, _EMPTY_I, _EMPTY_I)
    # np.unique (sort, then drop repeats) and the per-item runs written out: np.unique, np.r_ and bincount
    # cost ~10 us of Python each on a few hundred lines; the same arrays
    if valid.all():  # the usual case: no boolean-mask copies
        pair = idx.astype(np.int64, copy=False) * n_b + binv
    else:
        pair = idx[valid].astype(np.int64, copy=False) * n_b + binv[valid]
    pair.sort()  # a fresh array: sorted in place, np.sort's result without its copy
    keep = np.empty(len(pair), bool)
    keep[:1] = True
    np.not_equal(pair[1:], pair[:-1], out=keep[1:])
    pair = pair[keep]
    it = pair // n_b  # sorted: item-major, basket-minor
    new = np.empty(len(it), bool)
    new[:1] = True
    np.not_equal(it[1:], it[:-1], out=new[1:])
    items = it[new]
    inv = new.cumsum() - 1
    bk = pair % n_b
    bounds = np.empty(len(items) + 1, np.intp)  # where each item's run of pairs starts, then the end
    bounds[:-1] = new.nonzero()[0]
    bounds[-1] = len(it)
    count = bounds[1:] - bounds[:-1]  # baskets holding each item
    last_b = bk[bounds[1:] - 1]  # last pair of each item = latest basket
    first_b = bk[bounds[:-1]]
    iv_p1 = (tb[last_b] - tb[first_b]) / np.maximum(count - 1, 1) + 1.0
    share = count / n_b
    return HistoryStructure(tb, items, inv, bk, count, last_b, first_b, (last_b == n_b - 1).astype(np.float32),
                            (count >= 2).astype(np.float32), iv_p1, (last_b >= n_b - LAST_BASKETS).astype(np.float32),
                            share, share.astype(np.float32))


def _unique_inverse(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(x, return_inverse=True)`` without the sort when ``x`` is already non-decreasing
    (history lines usually come in time order; pairs always do)."""
    if len(x) > 1 and not (x[1:] >= x[:-1]).all():
        return np.unique(x, return_inverse=True)
    new = np.empty(len(x), bool)
    new[:1] = True
    np.not_equal(x[1:], x[:-1], out=new[1:])
    inv = new.cumsum() - 1  # methods: np.cumsum's result without its wrapper
    return x[new], inv


def repeat_from_structure(st: HistoryStructure | None, now_days: float,
                          max_items: int = MAX_REPEAT_ITEMS) -> RepeatFeatures:
    """Repeat features at time ``now_days``; lines after it count as age 0."""
    if st is None:
        return EMPTY_REPEAT
    n_b = len(st.tb)
    if len(st.items) == 0:
        return RepeatFeatures(_EMPTY_I, _EMPTY_F, _EMPTY_F, _EMPTY_F, n_b)
    age = np.maximum(now_days - st.tb, 0.0)
    # x / -d is exactly -x / d (IEEE division is sign-symmetric): one numpy call less per exponent
    wb = np.exp(age / -DECAY_DAYS)
    items = st.items
    # take / add.reduce: ``wb[st.bk]`` / ``wb.sum()`` without the fancy-index and ``sum`` wrapper overhead
    decayed = np.bincount(st.inv, weights=wb.take(st.bk), minlength=len(items)) / np.add.reduce(wb)
    share = st.share if len(st.share) == len(items) else st.count / n_b
    share32 = st.share32 if len(st.share32) == len(items) else None
    age_last = age.take(st.last_b)
    recency = np.exp(age_last / -RECENCY_DAYS)
    in_last, has_iv, iv_p1, in_last3 = st.in_last, st.has_iv, st.iv_p1, st.in_last3
    recent = np.bincount(st.inv, weights=(age < RECENT_DAYS).take(st.bk), minlength=len(items))
    if len(items) > max_items:
        keep = np.argsort(-decayed, kind="stable")[:max_items]
        items, share, recency, decayed = items[keep], share[keep], recency[keep], decayed[keep]
        age_last, in_last, has_iv, iv_p1 = age_last[keep], in_last[keep], has_iv[keep], iv_p1[keep]
        in_last3, recent = in_last3[keep], recent[keep]
        share32 = None
    due = np.log((age_last + 1.0) / iv_p1)
    np.minimum(due, DUE_CLIP, out=due)  # np.clip's numbers, without its Python wrapper
    np.maximum(due, -DUE_CLIP, out=due)
    due *= has_iv
    span_w = max(float(now_days - st.tb[0]), 7.0) / 7.0
    return RepeatFeatures(items, share.astype(np.float32) if share32 is None else share32, recency.astype(np.float32),
                          decayed.astype(np.float32), n_b, in_last, due.astype(np.float32), has_iv,
                          math.log1p(n_b / span_w), in_last3, np.log1p(recent).astype(np.float32))


def repeat_features(idx: np.ndarray, t_days: np.ndarray, now_days: float,
                    max_items: int = MAX_REPEAT_ITEMS) -> RepeatFeatures:
    """Repeat signal from history lines.

    ``idx``: vocab index per line (-1 = not in vocabulary); ``t_days``: line time
    in days; lines with the same time form one basket. Lines after ``now_days``
    count as age 0.
    """
    return repeat_from_structure(history_structure(idx, t_days), now_days, max_items)


def history_inputs(rep: RepeatFeatures, out_items: np.ndarray, out_w: np.ndarray) -> np.ndarray | None:
    """Fill hist_items / hist_weights (zeroed, [HIST_LEN]) from the repeat features. Returns the positions in
    ``rep.items`` it took (``argpartition`` of the decayed shares when there are more than HIST_LEN items; the
    ranker hands them to stage 2, whose history co-occurrence uses the same items), None without items."""
    n = len(rep.items)
    if n == 0:
        return None
    # the method: ``np.argpartition``'s result without its Python wrapper
    top = (-rep.decayed).argpartition(HIST_LEN - 1)[:HIST_LEN] if n > HIST_LEN else np.arange(n)
    w = rep.decayed.take(top).astype(np.float64)  # take / add.reduce: [] / sum() with less overhead
    s = np.add.reduce(w)
    m = len(top)
    out_items[:m] = rep.items.take(top) + 1
    out_w[:m] = (w / s) if s > 0 else 1.0 / m
    return top


def session_inputs(session_idx: list[int] | np.ndarray, out_items: np.ndarray, out_w: np.ndarray) -> int:
    """Fill session_items / session_weights (zeroed) with the latest distinct items; return count."""
    seen: list[int] = []
    for i in reversed(list(session_idx)):
        if i >= 0 and i not in seen:
            seen.append(int(i))
            if len(seen) == SESSION_LEN:
                break
    n = len(seen)
    if n:
        out_items[:n] = seen
        out_items[:n] += 1
        out_w[:n] = 1.0 / n
    return n


def repeat_matrix(rep: RepeatFeatures, template: np.ndarray | None = None) -> np.ndarray:
    """[n, REPEAT_FEATURES] rows for the ``repeat`` input at ``rep.items``. ``template``: what
    ``repeat_template`` made for the same items (a visit's requests share them), so only the columns that
    depend on the time are filled here."""
    n = len(rep.items)
    fits = template is not None and template.shape == (n, REPEAT_FEATURES)
    m = template.copy() if fits and template is not None else repeat_template(rep)
    m[:, 2] = rep.recency
    m[:, 3] = np.maximum(LOG_FLOOR + np.log(np.maximum(rep.decayed, 1e-9)), 0.0)
    m[:, 6] = rep.due if len(rep.due) == n else 0.0
    m[:, 7] = rep.trips
    m[:, 9] = rep.recent if len(rep.recent) == n else 0.0
    return m


def repeat_template(rep: RepeatFeatures) -> np.ndarray:
    """``repeat_matrix``'s time-independent columns (bought, log share, in last basket, has interval, in the
    last 3 baskets); the others are left for ``repeat_matrix`` to fill."""
    n = len(rep.items)
    m = np.empty((n, REPEAT_FEATURES), np.float32)
    m[:, 0] = 1.0
    m[:, 1] = np.maximum(LOG_FLOOR + np.log(np.maximum(rep.share, 1e-9)), 0.0)
    m[:, 4] = rep.in_last if len(rep.in_last) == n else 0.0
    m[:, 5] = rep.has_iv if len(rep.has_iv) == n else 0.0
    m[:, 8] = rep.in_last3 if len(rep.in_last3) == n else 0.0
    return m


def heat_log(counts: np.ndarray) -> np.ndarray:
    """Item sales heat as the model uses it: ln(1 + distinct baskets with the item in the last 14 days)."""
    return np.log1p(np.maximum(np.asarray(counts, np.float64), 0.0)).astype(np.float32)


def cooc_scores(nb_idx: np.ndarray, nb_val: np.ndarray, items: np.ndarray, weights: np.ndarray,
                size: int) -> np.ndarray:
    """Σ_k weights[k] · cooc(items[k], j) over the stored top-K neighbours, as a dense [size] vector.

    ``nb_idx`` [V, K] neighbour vocab indices, ``nb_val`` [V, K] their co-occurrence (cosine of the
    basket columns); ``items`` are 0-based vocab indices."""
    if len(items) == 0:
        return np.zeros(size, np.float32)
    w = np.repeat(np.asarray(weights, np.float32), nb_idx.shape[1])
    return np.bincount(nb_idx[items].ravel(), weights=nb_val[items].ravel().astype(np.float32) * w,
                       minlength=size).astype(np.float32)


def sample_threshold(scores: np.ndarray, m: int) -> Any:
    """A score that (almost always) at least the ``m`` best of ``scores`` reach: from a strided 1/16 sample,
    with a margin. Callers keep what is at or above it and check they kept ``m``; partitioning those few
    hundred is ~4x cheaper than partitioning the whole catalogue."""
    sample = scores[::16]
    q = len(sample) - 1 - min(len(sample) - 1, 2 * m // 16 + 8)
    part = sample.copy()  # a contiguous copy partitioned in place: np.partition's result, less wrapper
    part.partition(q)
    return part[q]


def top_m(scores: np.ndarray, m: int) -> np.ndarray:
    """Indices of the ``m`` largest scores (unordered), like ``argpartition(-scores, m - 1)[:m]``. Every
    item at or above ``sample_threshold`` is kept, so the set is the same (up to exact ties at the boundary)."""
    n = len(scores)
    if m <= 0:
        return np.zeros(0, np.int64)
    if m >= n:
        return np.arange(n)
    if 16 * m < n:
        cand = (scores >= sample_threshold(scores, m)).nonzero()[0]
        if len(cand) >= m:
            return cand.take((-scores.take(cand)).argpartition(m - 1)[:m])  # methods: no np.* wrapper (~1 us)
    return (-scores).argpartition(m - 1)[:m]

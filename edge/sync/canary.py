"""The canary: a stored batch of recent requests a new model must pass before it serves.

A request is what the recommender asks a model: a visit (zone, customer,
items picked so far) at a time. Visits with two or more picks are
*labelled*: the model sees all but the last pick and should rank the last one
in its top K (next-item hit rate). The batch is kept in the store (``meta``
key ``sync.canary``) so it survives restarts; a fresh node with no traffic yet
gets unlabelled requests built from the best-selling products, which still
check that the model answers and how fast.

Pass rules (all must hold):
- it answers: no exception, and a non-empty list for ≥ 95 % of requests;
- quality: with ≥ ``min_labelled`` labelled requests, its hit rate is at least
  ``quality_ratio`` × the serving model's (minus a small tolerance for noise);
- latency: p95 ≤ max(``max_p95_ms``, ``latency_ratio`` × the serving model's p95). A node busy with something
  else while the new model is timed (a soak's parallel jobs did it twice) would refuse a good model for good, so a
  miss is timed again, both models interleaved request by request so they see the same machine, up to
  ``latency_tries`` measurements in all; the model is refused only if every one misses.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from edge.events import ShopperEvent
from edge.recommend import VisitState
from edge.store import Store

__all__ = ["CanaryOptions", "CanaryRequest", "CanaryResult", "CanarySet", "run_canary"]

log = logging.getLogger(__name__)
META_KEY = "sync.canary"
# picks a request uses: the model sees up to SESSION_LEN (16, edge.ranking.features) and ranks the next one; a visit
# keeps at most twice this (trimmed in one step, so a pick costs O(1)): before, every pick of its life
PICKS_KEPT = 17


@dataclass(frozen=True)
class CanaryRequest:
    session: str
    zone: str | None
    customer: str | None
    picked: tuple[str, ...]
    t: float
    target: str | None = None  # the next pick, when known


@dataclass(frozen=True)
class CanaryOptions:
    k: int = 10
    min_labelled: int = 20
    quality_ratio: float = 0.9
    quality_tolerance: float = 0.02
    max_p95_ms: float = 5.0
    latency_ratio: float = 4.0
    min_answer_share: float = 0.95
    latency_tries: int = 3  # measurements before "too slow" (the first, then interleaved re-timings)


@dataclass
class CanaryResult:
    ok: bool
    detail: str
    metrics: dict[str, Any] = field(default_factory=dict)


class CanarySet:
    """Collects recent visits from the bus; ``requests()`` is the stored batch."""

    def __init__(self, store: Store | None, *, max_requests: int = 200, max_sessions: int = 1000) -> None:
        self.store = store
        self.max_requests = max_requests
        self.max_sessions = max_sessions
        self._visits: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._stored: list[CanaryRequest] = []
        self.load()

    def observe(self, ev: ShopperEvent) -> None:
        if ev.action != "pick":
            return
        v = self._visits.get(ev.session)
        if v is None:
            v = self._visits[ev.session] = {"zone": ev.zone, "customer": None, "picked": [], "t": ev.t}
            if len(self._visits) > self.max_sessions:
                self._visits.popitem(last=False)
        else:
            self._visits.move_to_end(ev.session)
        v["zone"] = ev.zone or v["zone"]
        picked = v["picked"]
        picked.append(ev.sku)
        if len(picked) > 2 * PICKS_KEPT:
            del picked[:-PICKS_KEPT]
        v["t"] = ev.t

    def _fresh(self) -> list[CanaryRequest]:
        out = []
        for session, v in reversed(self._visits.items()):
            picked = v["picked"][-PICKS_KEPT:]
            if len(picked) >= 2:
                out.append(CanaryRequest(session, v["zone"], v["customer"], tuple(picked[:-1]), v["t"], picked[-1]))
            elif picked:
                out.append(CanaryRequest(session, v["zone"], v["customer"], tuple(picked), v["t"]))
            if len(out) >= self.max_requests:
                break
        return out

    def requests(self) -> list[CanaryRequest]:
        fresh = self._fresh()
        seen = {r.session for r in fresh}
        merged = fresh + [r for r in self._stored if r.session not in seen]
        merged = merged[: self.max_requests]
        if merged:
            return merged
        return self._cold()

    def _cold(self) -> list[CanaryRequest]:
        if self.store is None:
            return []
        products = sorted(self.store.products().values(), key=lambda p: -p.sales_heat)[:50]
        now = time.time()
        return [CanaryRequest(f"canary-{i}", None, None, (p.sku,), now) for i, p in enumerate(products)]

    def set_requests(self, reqs: list[CanaryRequest]) -> None:
        """Replace the stored batch (tests, and operators seeding a new node)."""
        self._stored = list(reqs)[: self.max_requests]
        self._visits.clear()
        self.persist()

    def persist(self) -> None:
        if self.store is None:
            return
        reqs = self.requests() if self._visits else self._stored
        self._stored = reqs
        self.store.meta_set(META_KEY, json.dumps([asdict(r) for r in reqs], separators=(",", ":")))

    def load(self) -> None:
        if self.store is None:
            return
        try:
            raw = self.store.meta_get(META_KEY)
            if raw:
                self._stored = [CanaryRequest(**{**d, "picked": tuple(d["picked"])}) for d in json.loads(raw)]
        except Exception as exc:  # a damaged batch only costs the canary its history
            log.warning("stored canary batch unreadable (%s); starting a new one", exc)
            self._stored = []


def _p(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _timed(scorer: Any, r: CanaryRequest, k: int) -> tuple[list[Any], float]:
    """The scorer's answer to ``r`` and how long it took (ms): the one way the canary asks a model."""
    visit = VisitState(r.session, zone=r.zone, customer=r.customer, picked=list(r.picked))
    when = datetime.fromtimestamp(r.t, UTC)
    t0 = time.perf_counter()
    out = scorer.score(visit, when, k, set(r.picked))
    return out, (time.perf_counter() - t0) * 1000.0


def _evaluate(scorer: Any, reqs: list[CanaryRequest], k: int) -> dict[str, Any]:
    lat: list[float] = []
    answered = hits = labelled = 0
    for r in reqs[:3]:  # warm-up: first calls allocate
        _timed(scorer, r, k)
    for r in reqs:
        out, ms = _timed(scorer, r, k)
        lat.append(ms)
        if out:
            answered += 1
        if r.target is not None:
            labelled += 1
            if r.target in {s for s, *_ in out[:k]}:
                hits += 1
    return {"n": len(reqs), "answered": answered, "labelled": labelled, "hits": hits,
            "hit_rate": hits / labelled if labelled else None, "p50_ms": round(_p(lat, 0.5), 4),
            "p95_ms": round(_p(lat, 0.95), 4)}


def _retime(old: Any, new: Any, reqs: list[CanaryRequest], k: int) -> tuple[float, float | None]:
    """p95 (ms) of the new and the serving model, timed request by request in alternating order."""
    lat_new: list[float] = []
    lat_old: list[float] = []
    for i, r in enumerate(reqs):
        pair = ((new, lat_new), (old, lat_old)) if i % 2 == 0 else ((old, lat_old), (new, lat_new))
        for scorer, lat in pair:
            if scorer is not None:
                lat.append(_timed(scorer, r, k)[1])
    return round(_p(lat_new, 0.95), 4), (round(_p(lat_old, 0.95), 4) if lat_old else None)


def run_canary(old: Any, new: Any, reqs: list[CanaryRequest], opts: CanaryOptions | None = None) -> CanaryResult:
    o = opts or CanaryOptions()
    if not reqs:
        return CanaryResult(True, "no canary requests stored yet; checked that it loads only", {})
    try:
        m_new = _evaluate(new, reqs, o.k)
    except Exception as exc:
        return CanaryResult(False, f"the new model failed to answer a canary request: {type(exc).__name__}: {exc}")
    m_old: dict[str, Any] | None = None
    if old is not None:
        try:
            m_old = _evaluate(old, reqs, o.k)
        except Exception as exc:  # the serving model misbehaving is no reason to refuse a new one
            log.warning("serving model failed the canary itself: %s", exc)
    metrics: dict[str, Any] = {"new": m_new, "old": m_old}
    if m_new["answered"] < o.min_answer_share * m_new["n"]:
        return CanaryResult(False, f"the new model returned nothing for {m_new['n'] - m_new['answered']} of "
                                   f"{m_new['n']} canary requests", metrics)
    if m_new["labelled"] >= o.min_labelled and m_old is not None and m_old["hit_rate"] is not None:
        floor = m_old["hit_rate"] * o.quality_ratio - o.quality_tolerance
        if m_new["hit_rate"] < floor:
            return CanaryResult(False, f"worse on the canary: hit@{o.k} {m_new['hit_rate']:.3f} below the floor "
                                       f"{floor:.3f} (serving model {m_old['hit_rate']:.3f}, "
                                       f"{m_new['labelled']} labelled requests)", metrics)
    lat_floor = o.max_p95_ms if m_old is None else max(o.max_p95_ms, o.latency_ratio * m_old["p95_ms"])
    tries = 1
    new_p95 = m_new["p95_ms"]
    while new_p95 > lat_floor and tries < o.latency_tries:
        tries += 1
        try:
            new_p95, old_p95 = _retime(None if m_old is None else old, new, reqs, o.k)
        except Exception as exc:  # it answered all of them a moment ago: report, do not crash the worker
            return CanaryResult(False, f"the new model failed to answer a canary request: {type(exc).__name__}: "
                                       f"{exc}", metrics)
        lat_floor = o.max_p95_ms if old_p95 is None else max(o.max_p95_ms, o.latency_ratio * old_p95)
        log.info("canary: p95 timed again (%d of %d): new %.3f ms, floor %.3f ms", tries, o.latency_tries,
                 new_p95, lat_floor)
    metrics["latency_tries"] = tries
    if new_p95 > lat_floor:
        return CanaryResult(False, f"too slow on the canary: p95 {new_p95:.3f} ms over the "
                                   f"{lat_floor:.3f} ms floor ({tries} measurement{'s' if tries > 1 else ''})",
                            metrics)
    return CanaryResult(True, f"passed: {m_new['answered']}/{m_new['n']} answered, hit@{o.k} "
                              f"{m_new['hit_rate'] if m_new['hit_rate'] is not None else 'n/a'}, "
                              f"p95 {m_new['p95_ms']} ms", metrics)

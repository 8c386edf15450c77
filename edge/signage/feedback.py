"""The feedback loop: what was shown to whom, and what they picked up next.

An *impression* is one distinct set shown on one screen to one session (or to
nobody, for the zone's popular items). Repeats of the same set to the same
session are not new impressions (no SD-card write per push). A *conversion* is
a pick-up, by the same session, of an item it was shown within
``conversion_window_s``; each (session, sku) converts at most once and is
credited to the latest impression that showed it.

Both are stored (``impressions`` table / ``events``) and queued upstream in
the outbox as ``Impression`` / ``Conversion`` events. The in-memory index is
bounded: a few recent impressions per session, sessions pruned after the
window.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.events import Conversion, Impression, RecommendationSet, ShopperEvent
from edge.store import Store

__all__ = ["Feedback"]

MAX_PER_SESSION = 16


@dataclass(slots=True)
class _Shown:
    impression: str
    screen: str
    skus: frozenset[str]
    model_version: str
    t: float


@dataclass(slots=True)
class _SessionLog:
    shown: deque[_Shown] = field(default_factory=lambda: deque(maxlen=MAX_PER_SESSION))
    converted: set[str] = field(default_factory=set)
    last: float = 0.0


class Feedback:
    def __init__(self, store: Store, *, window_s: float, upstream_topic: str | None,
                 clock: Callable[[], float] = time.time,
                 on_conversion: Callable[[Conversion], None] | None = None) -> None:
        self.store = store
        self.window_s = window_s
        self.upstream = upstream_topic
        self.clock = clock
        self.on_conversion = on_conversion
        self._sessions: dict[str, _SessionLog] = {}
        self._last_on_screen: dict[str, tuple[str | None, tuple[str, ...]]] = {}
        self.stats = {"impressions": 0, "conversions": 0, "repeats": 0}

    def shown(self, rs: RecommendationSet, t: float | None = None) -> Impression | None:
        """A set went out to ``rs.screen``; record it if it is new for that screen and session."""
        skus = tuple(i.sku for i in rs.items)
        key = (rs.session, skus)
        if self._last_on_screen.get(rs.screen) == key:
            self.stats["repeats"] += 1
            return None
        self._last_on_screen[rs.screen] = key
        now = self.clock() if t is None else t
        imp = Impression(screen=rs.screen, session=rs.session, skus=skus, model_version=rs.model_version, t=now)
        self.store.record_impression(imp.id, imp.screen, imp.session, skus, imp.model_version, now)
        self.store.append_event(imp, upstream=self.upstream, priority=2)
        self.stats["impressions"] += 1
        if rs.session is not None:
            log = self._sessions.get(rs.session)
            if log is None:
                log = self._sessions[rs.session] = _SessionLog()
            log.shown.append(_Shown(imp.id, rs.screen, frozenset(skus), rs.model_version, now))
            log.last = now
        return imp

    def on_shopper_event(self, ev: ShopperEvent) -> Conversion | None:
        if ev.action != "pick":
            return None
        log = self._sessions.get(ev.session)
        if log is None or ev.sku in log.converted:
            return None
        for s in reversed(log.shown):
            if ev.sku in s.skus and 0.0 <= ev.t - s.t <= self.window_s:
                log.converted.add(ev.sku)
                conv = Conversion(impression=s.impression, screen=s.screen, session=ev.session, sku=ev.sku,
                                  model_version=s.model_version, t=ev.t)
                self.store.append_event(conv, upstream=self.upstream, priority=2)
                self.stats["conversions"] += 1
                if self.on_conversion is not None:
                    self.on_conversion(conv)
                return conv
        return None

    def prune(self, now: float | None = None) -> int:
        now = self.clock() if now is None else now
        old = [s for s, log in self._sessions.items() if now - log.last > self.window_s]
        for s in old:
            del self._sessions[s]
        return len(old)

    def health(self) -> dict[str, Any]:
        return {**self.stats, "sessions_tracked": len(self._sessions), "window_s": self.window_s}

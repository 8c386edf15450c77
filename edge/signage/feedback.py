"""The feedback loop: what was shown to whom, and what they picked up next.

An *impression* is one distinct set shown on one screen to one session (or to
nobody, for the zone's popular items) that stayed there at least
``min_visible_s`` (a set replaced sooner in a burst was a glimpse nobody could
read), or whose item the session then picked up. Repeats of the same set to
the same session are not new impressions (no SD-card write per push). A *conversion* is
a pick-up, by the same session, of an item it was shown within
``conversion_window_s``; each (session, sku) converts at most once and is
credited to the latest impression that showed it.

Both are stored (``impressions`` table / ``events``) and queued upstream in
the outbox as ``Impression`` / ``Conversion`` events. The in-memory index is
bounded: a few recent impressions per session, sessions pruned after the
window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.clock import JUMP_S, SYSTEM, Clock, JumpWatch
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
class _OnScreen:
    screen: str
    session: str | None
    skus: tuple[str, ...]
    model_version: str
    since: float
    recorded: Impression | None = None


@dataclass(slots=True)
class _SessionLog:
    shown: deque[_Shown] = field(default_factory=lambda: deque(maxlen=MAX_PER_SESSION))
    converted: set[str] = field(default_factory=set)
    last: float = 0.0


class Feedback:
    def __init__(self, store: Store, *, window_s: float, upstream_topic: str | None,
                 clock: Callable[[], float] | Clock = SYSTEM, min_visible_s: float = 0.5,
                 on_conversion: Callable[[Conversion], None] | None = None) -> None:
        self.store = store
        self.window_s = window_s
        self.min_visible_s = min_visible_s
        self.upstream = upstream_topic
        # a Clock: its wall-clock steps shift what was shown (_follow_clock); a plain function: wall time only
        self._jumps: JumpWatch | None = clock.watch() if isinstance(clock, Clock) else None
        self.clock: Callable[[], float] = clock.wall if isinstance(clock, Clock) else clock
        self._last_t = 0.0  # the latest pick's t
        self.on_conversion = on_conversion
        self._sessions: dict[str, _SessionLog] = {}
        self._on_screen: dict[str, _OnScreen] = {}
        self.stats = {"impressions": 0, "conversions": 0, "repeats": 0, "glimpses": 0}

    def shown(self, rs: RecommendationSet, t: float | None = None) -> Impression | None:
        """A set went out to ``rs.screen``. Returns the impression recorded now, if any (the set it replaced,
        when that one stayed long enough; or this one when ``min_visible_s`` is 0)."""
        skus = tuple(i.sku for i in rs.items)
        cur = self._on_screen.get(rs.screen)
        if cur is not None and cur.session == rs.session and cur.skus == skus:
            self.stats["repeats"] += 1
            return None
        self._follow_clock()
        now = self.clock() if t is None else t
        imp = None
        if cur is not None and cur.recorded is None:
            if now - cur.since >= self.min_visible_s:
                imp = self._record(cur)
            else:
                self.stats["glimpses"] += 1
        new = self._on_screen[rs.screen] = _OnScreen(rs.screen, rs.session, skus, rs.model_version, now)
        if self.min_visible_s <= 0:
            imp = self._record(new)
        return imp

    def tick(self, now: float | None = None) -> int:
        """Record the sets that have now been on screen long enough (housekeeping calls this)."""
        self._follow_clock()
        now = self.clock() if now is None else now
        n = 0
        for cur in self._on_screen.values():
            if cur.recorded is None and now - cur.since >= self.min_visible_s:
                self._record(cur)
                n += 1
        return n

    def _record(self, cur: _OnScreen) -> Impression:
        imp = Impression(screen=cur.screen, session=cur.session, skus=cur.skus, model_version=cur.model_version,
                         t=cur.since)
        cur.recorded = imp
        self.store.record_impression(imp.id, imp.screen, imp.session, cur.skus, imp.model_version, cur.since)
        self.store.record_event(imp, upstream=self.upstream, priority=2)
        self.stats["impressions"] += 1
        if cur.session is not None:
            log = self._sessions.get(cur.session)
            if log is None:
                log = self._sessions[cur.session] = _SessionLog()
            log.shown.append(_Shown(imp.id, cur.screen, frozenset(cur.skus), cur.model_version, cur.since))
            log.last = max(log.last, cur.since)
        return imp

    def on_shopper_event(self, ev: ShopperEvent) -> Conversion | None:
        if ev.action != "pick":
            return None
        if not -JUMP_S < ev.t - self._last_t < JUMP_S:  # a quiet spell, or the wall clock stepped: look
            self._follow_clock()
        self._last_t = ev.t
        for cur in self._on_screen.values():  # on screen now, not recorded yet: picking from it proves it was seen
            if cur.recorded is None and cur.session == ev.session and ev.sku in cur.skus:
                self._record(cur)
        log = self._sessions.get(ev.session)
        if log is None or ev.sku in log.converted:
            return None
        for s in reversed(log.shown):
            if ev.sku in s.skus and 0.0 <= ev.t - s.t <= self.window_s:
                log.converted.add(ev.sku)
                conv = Conversion(impression=s.impression, screen=s.screen, session=ev.session, sku=ev.sku,
                                  model_version=s.model_version, t=ev.t)
                self.store.record_event(conv, upstream=self.upstream, priority=2)
                self.stats["conversions"] += 1
                if self.on_conversion is not None:
                    self.on_conversion(conv)
                return conv
        return None

    def _follow_clock(self) -> None:
        """What was shown is stamped in wall time, the pick that converts it too. When the wall clock steps (NTP
        syncing a Pi that booted at a wrong time), shift what was shown by the step: else a pick after a step
        forward never converted (and the window's sessions were all pruned at once), and after a step back
        it could not either (a negative gap) while nothing was pruned until the clock caught up."""
        d = self._jumps.check() if self._jumps is not None else 0.0
        if not d:
            return
        for cur in self._on_screen.values():
            cur.since += d
        for log in self._sessions.values():
            for s in log.shown:
                s.t += d
            log.last += d
        self._last_t += d

    def prune(self, now: float | None = None) -> int:
        self._follow_clock()
        now = self.clock() if now is None else now
        old = [s for s, log in self._sessions.items() if now - log.last > self.window_s]
        for s in old:
            del self._sessions[s]
        return len(old)

    def health(self) -> dict[str, Any]:
        return {**self.stats, "sessions_tracked": len(self._sessions), "window_s": self.window_s,
                "min_visible_s": self.min_visible_s}

"""Popularity by zone × hour: the permanent cold-start fallback.

Used when no model is loaded, when the model refuses a request, and for a
screen with nobody in front of it. It needs nothing but the catalogue: a prior
from each product's sales heat (boosted in the product's home zone) plus the
picks this node has seen, bucketed by zone and local hour and decayed so the
store's rhythm shows through (coffee in the morning, beer in the evening).

The decay runs on elapsed (monotonic) time, not on the picks' wall-clock
stamps: NTP stepping a Pi's clock (booted at fake-hwclock's last-shutdown
time, an RTC running ahead) neither wipes the learned counts (a month forward
multiplied them by 0.05, a step from 1970 by 0) nor freezes them (a step back
left the stamps in the future). The hour bucket still comes from the pick's
local wall time (the caller's ``hour``).

So a pick is learned only when that wall time is right. Given the node's ``Clock`` (the composition root gives
it ``edge.clock.SYSTEM``), a pick made while the clock is unsynced (NTP has not synced, or it reads before the
build date: a Pi without a real-time clock boots at fake-hwclock's last-shutdown time or at 1970) is *skipped*,
and counted (``health()``). Skipped, not held for re-bucketing once synced: the counts live in memory only (a
restart starts them again from the catalogue's prior), NTP syncs seconds after the network is up, and a store
that blocks NTP never syncs, so held picks would only grow; re-bucketing would also need each pick's monotonic
time and the store's time zone here. Around the moment it syncs, a pick stamped before the step but fed in
after it (picks are fed in batches, up to a minute late on a quiet node) is skipped too: stamped before the
last look that still saw the clock unsynced, or ahead of the clock. The sync state is looked at every
``SYNC_LOOK_S`` (adjtimex, ~2 µs); per pick it costs a few comparisons.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edge.clock import CLOCK_FIX, JUMP_S, Clock

__all__ = ["DECAY_GRAIN_S", "SYNC_LOOK_S", "FallbackItem", "PopularityRanker"]

log = logging.getLogger(__name__)
# a count is decayed once at least this much time passed since its stamp (the stamp stays until then, so no time
# is lost): picks applied in any rhythm within a minute give the same counts, and half-lives of days lose nothing
DECAY_GRAIN_S = 60.0
SYNC_LOOK_S = 5.0  # the clock's sync state is looked at this often (monotonic s), not per pick


@dataclass(frozen=True, slots=True)
class FallbackItem:
    sku: str
    score: float
    reason: str


class PopularityRanker:
    """``observe`` picks, ``top`` the most popular in-stock items for a zone and hour."""

    HOURS = 24

    def __init__(
        self,
        items: Iterable[tuple[str, float, str | None]],
        *,
        live_weight: float = 5.0,
        home_zone_boost: float = 3.0,
        half_life_s: float = 7 * 86400.0,
        mono: Callable[[], float] | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``items``: (sku, sales_heat, home zone or None). ``mono``: the elapsed-time clock the decay runs on
        (default ``clock.mono``, else ``time.monotonic``; tests pass their own). ``clock``: picks made while it is
        unsynced are not learned (see the module docstring; ``watch_clock`` sets it later); None learns every
        pick."""
        self._prior: dict[str, float] = {}
        self._home: dict[str, str | None] = {}
        for sku, heat, zone in items:
            self._prior[sku] = math.log1p(max(0.0, float(heat)))
            self._home[sku] = zone
        self.live_weight = live_weight
        self.home_zone_boost = home_zone_boost
        self.half_life_s = half_life_s
        self._mono: Callable[[], float] = mono or time.monotonic
        self._mono_given = mono is not None
        self.clock: Clock | None = None
        self.unsynced_skipped = 0  # picks not learned: made while the clock was unsynced (or stamped so)
        self._skip = False  # the clock was unsynced at the last look
        self._look_at = -math.inf  # monotonic time of the next look at the clock
        self._looked = -math.inf  # monotonic time of the last look
        self._floor = -math.inf  # picks stamped before this wall time were stamped before the clock synced
        self._ahead = math.inf  # (wall - mono) at the last look + JUMP_S: a stamp later than mono + this is ahead
        # (zone, hour) -> sku -> [count, wall t of its latest pick]
        self._live: dict[tuple[str | None, int], dict[str, list[float]]] = defaultdict(dict)
        # (zone, hour) -> sku -> monotonic time its count was last decayed to (the decay's clock, not the wall's)
        self._decayed: dict[tuple[str | None, int], dict[str, float]] = defaultdict(dict)
        # (zone, hour) -> (monotonic time it was ranked, the ranking); re-ranked after DECAY_GRAIN_S or a pick
        self._cache: dict[tuple[str | None, int], tuple[float, list[tuple[str, float]]]] = {}
        norm = max(self._prior.values(), default=1.0) or 1.0
        for k in self._prior:
            self._prior[k] /= norm
        if clock is not None:
            self.watch_clock(clock)

    @property
    def skus(self) -> list[str]:
        return list(self._prior)

    def watch_clock(self, clock: Clock) -> None:
        """Learn only picks made while ``clock`` is synced (the node's clock; the composition root sets it)."""
        self.clock = clock
        if not self._mono_given and not self._live:  # nothing stamped on the old one yet: the clock's own
            self._mono = clock.mono
        self._look_at = -math.inf

    def _look(self, now: float) -> None:
        """Read the clock's sync state (every ``SYNC_LOOK_S``)."""
        clock = self.clock
        assert clock is not None
        unsynced = clock.unsynced()
        offset = clock.wall() - now
        if self._skip and not unsynced:
            # it has synced since the last look: a pick stamped before that look's wall time (in the synced
            # clock's terms) was stamped by the unsynced clock
            self._floor = self._looked + offset
            log.info("popularity: the clock is synced; learning picks per hour again (%d skipped while it was "
                     "not)", self.unsynced_skipped)
        elif unsynced and not self._skip:
            log.warning("popularity: the clock is not synced (this node says %s); picks are not learned per hour "
                        "until it is: %s", datetime.fromtimestamp(now + offset, UTC).strftime("%Y-%m-%d %H:%M UTC"),
                        CLOCK_FIX)
        self._skip = unsynced
        self._ahead = offset + JUMP_S
        self._looked = now
        self._look_at = now + SYNC_LOOK_S

    def health(self) -> dict[str, Any]:
        """``popular_unsynced_skipped``: picks not learned because the clock was not synced; ``popular_learning``:
        "paused: clock unsynced" while it is not, else "on"."""
        if self.clock is not None:
            now = self._mono()
            if now >= self._look_at:
                self._look(now)
        return {"popular_unsynced_skipped": self.unsynced_skipped,
                "popular_learning": "paused: clock unsynced" if self._skip else "on"}

    def observe(self, sku: str, zone: str | None, hour: int, t: float, units: int = 1) -> None:
        """A pick in ``zone`` at local ``hour``. ``t`` (its wall-clock stamp) is not used for the decay, which
        runs on ``mono`` (see the module docstring). With a clock (``watch_clock``), a pick made while it is
        unsynced, or stamped before it synced or ahead of it, is counted and not learned: its hour is wrong."""
        now = self._mono()
        if self.clock is not None:
            if now >= self._look_at:
                self._look(now)
            if self._skip or t < self._floor or t > now + self._ahead:
                self.unsynced_skipped += 1
                return
        key = (zone, hour % self.HOURS)
        bucket = self._live[key]
        stamps = self._decayed[key]
        cur = bucket.get(sku)
        if cur is None:
            bucket[sku] = [float(units), t]
            stamps[sku] = now
        else:
            dt = now - stamps[sku]
            if dt >= DECAY_GRAIN_S:
                cur[0] *= 0.5 ** (dt / self.half_life_s)
                stamps[sku] = now
            cur[0] += units
            cur[1] = max(cur[1], t)
        self._cache.pop(key, None)

    def _ranked(self, zone: str | None, hour: int) -> list[tuple[str, float]]:
        key = (zone, hour % self.HOURS)
        now = self._mono()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < DECAY_GRAIN_S:
            return hit[1]
        live = self._live.get(key, {})
        # every count decayed to *now* before they are compared: a sku that stopped selling a week ago counts half,
        # not as much as one picked a minute ago (each count is stored as of its own last pick)
        stamps = self._decayed.get(key, {})
        hl = self.half_life_s
        counts = {sku: c[0] * 0.5 ** (max(0.0, now - stamps.get(sku, now)) / hl) for sku, c in live.items()}
        total = sum(counts.values()) or 1.0
        scores = []
        for sku, prior in self._prior.items():
            s = prior
            if zone is not None and self._home.get(sku) == zone:
                s *= self.home_zone_boost
            c = counts.get(sku)
            if c is not None:
                s += self.live_weight * c / total
            scores.append((sku, s))
        scores.sort(key=lambda x: -x[1])
        self._cache[key] = (now, scores)
        return scores

    def top(
        self,
        zone: str | None,
        hour: int,
        k: int = 10,
        *,
        exclude: Sequence[str] | set[str] = (),
        in_stock: Callable[[str], bool] | None = None,
    ) -> list[FallbackItem]:
        excl = set(exclude)
        out: list[FallbackItem] = []
        live = self._live.get((zone, hour % self.HOURS), {})
        for sku, score in self._ranked(zone, hour):
            if sku in excl or (in_stock is not None and not in_stock(sku)):
                continue
            reason = "popular here at this hour" if sku in live else (
                "popular in this aisle" if zone is not None and self._home.get(sku) == zone else "popular in store")
            out.append(FallbackItem(sku, round(score, 6), reason))
            if len(out) >= k:
                break
        return out

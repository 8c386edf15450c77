"""Where a shopper event becomes a recommendation set.

The hot path: ``ShopperEvent`` (a pick or put attributed to a visit) →
recorded in the store (and queued upstream) → the visit's state updated →
at the end of the event-loop iteration, once per visit however many of its
picks came in it (bursts coalesce), the catalogue scored for that visit → a
``RecommendationSet`` published for the screen that serves it. Screens, SSE
and MQTT pushes subscribe to ``RecommendationSet`` on the bus; this room
knows nothing about them (``after_push`` hooks let signage push at once).

A check-in (``CheckIn`` with its ``session``, bound by fusion first: see ``edge.fusion``) puts the customer on
that visit and places it at the check-in's screen, seen now: the screen serves it from its next set on (the
customer's profile history from the store cache goes to the model), its later picks keep the customer, and it is
saved with the customer when it expires like any visit. The check-in is stored and queued upstream once per event
id (fusion re-publishes an event naming the visit it bound; the first copy is ignored). Fusion refuses a check-in
naming an ended visit without a screen by re-publishing it with no session: nothing is bound or stored for that id
(``check_in_refused``).

Who a screen serves without a live camera (``_nearest_session``; with it, fusion's tracks answer): the
nearest visit of its zone that acted (picked, put back, checked in) in the last ``present_s`` (90 s) and has not
ended (fusion's ``on_session``: an anonymous visit ends 60 s after its last pick); within half a metre the one that
acted last. A checked-in visit also keeps its screens after that, for as long as it lives
(``fusion.session_idle_s``), while it is the last visit to have acted in the zone: a shopper reading a label keeps
their set, and the screen goes back to the zone's items when the visit ends or once someone else has acted there.

Nobody in front of a screen: the zone's popular items for the hour, with the
configured promotions (``signage.promotions``) first. A visit long enough to
have been shown everything (frequency caps) starts a new round of caps
instead of getting an empty screen.

Scoring goes through the model ranker when one is loaded (``edge.ranking``)
and falls back to popularity by zone × hour (``edge.ranking.fallback``)
otherwise, or when the model has nothing to say. The fallback learns the picks once a second: after the ranking
that crosses the second, and from the room's tick (``_learn``) when no ranking comes (a quiet node).

A visit keeps fewer than ``2 x PICKS_KEPT`` picks (512; a real trip has at most ~160), its latest: what the ranker maps
per visit and what is saved stay bounded for a bench or a restocking run (fusion also ends any visit at
``fusion.visit_max_s``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from edge.bus import Bus
from edge.clock import JUMP_S, SYSTEM, Clock, JumpWatch
from edge.config import NodeConfig
from edge.events import CheckIn, RecItem, RecommendationSet, ShopperEvent, maker, new_id
from edge.ranking.fallback import PopularityRanker
from edge.store import Store
from edge.sync.schemas import is_customer_hash

__all__ = ["ModelScorer", "Recommender", "VisitState", "display_family"]

log = logging.getLogger(__name__)
_rec_item = maker(RecItem)  # (sku, name, price, score, reason, category, department)
_rec_set = maker(RecommendationSet)  # (screen, session, items, model_version, zone, t, seq, id)
SPARE = 3  # items asked of the model beyond k (see ``_score``)
OBS_SLICE = 64  # staged popularity observations fed to the fallback after one ranking pass (~50-80 µs)
LEARN_EVERY_S = 1.0  # the room's tick: picks not yet fed to the fallback are fed then (``_learn``)
CHECK_INS_KEPT = 256  # check-in event ids bound (fusion re-publishes an event: the copy is not bound twice)
# a visit's picks kept (``VisitState.picked``: what ranking uses and what is saved): once it holds twice this many,
# its last PICKS_KEPT. More than any real trip (the Complete Journey's 155,848 baskets: p99 59 lines, max 161), so
# only a bench or a restocking run is cut; the model reads only the last 16 distinct (SESSION_LEN), but the ranker
# also leaves out everything picked in the visit, so a cut to the canary's 17 would show a shopper items they picked
# 18 picks ago (16 % of those baskets have more than 17 lines)
PICKS_KEPT = 256


def display_family(p: Any) -> str:
    """A product's display name without its pack size: "Store Fluid Milk White Only 1 GA", "... 1 QT" and the
    size-less "Store Fluid Milk White Only" read as one line to a shopper (32 such families in the bundled
    catalogue)."""
    name: str = p.name
    size: str = p.package_size
    if size and len(name) > len(size) and name.endswith(size):
        return name[: -len(size)].rstrip()
    return name


class ModelScorer(Protocol):
    """What this room needs from a model ranker (``edge.ranking``'s adapter provides it)."""

    version: str

    def score(self, visit: VisitState, when: datetime, k: int, exclude: set[str],
              second_stage: bool = True) -> list[tuple[str, float, str]]:
        """``second_stage=False``: the model's first stage alone (the overload guard; see ``_rank_due``)."""
        ...


@dataclass
class VisitState:
    """What the node knows about one visit right now."""

    session: str
    zone: str | None = None
    customer: str | None = None
    picked: list[str] = field(default_factory=list)  # appended to; at 2 x PICKS_KEPT replaced by its last PICKS_KEPT
    put_back: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    shown: dict[str, int] = field(default_factory=dict)  # sku -> times shown (frequency cap)
    capped: set[str] = field(default_factory=set)  # skus shown repeat_cap times (kept in step with ``shown``)
    x: float | None = None  # last known floor position (metres): the shelf touched last, or fusion's
    y: float | None = None
    ended: bool = False  # fusion ended the visit (``Recommender.on_session``): no screen serves it any more


class SessionLocator(Protocol):
    """Who stands nearest a floor point (``edge.fusion`` provides it when the camera is on). A ``camera_ok``
    attribute that is False (fusion's, the camera down) makes the recommender use its own rule instead."""

    def session_near(self, x: float, y: float, zone: str | None) -> Any:
        """A session id, or an object with ``.id`` (fusion's ``SessionView``), or None."""
        ...


class Recommender:
    """The ranking room. Start order: after the store, before signage."""

    name = "recommend"

    def __init__(self, config: NodeConfig, store: Store, bus: Bus, *, model: ModelScorer | None = None,
                 clock: Callable[[], float] | Clock = SYSTEM) -> None:
        self.config = config
        self.store = store
        self.bus = bus
        self.model = model
        # a Clock (the node's): wall time, and its steps shift the visits' stamps (_follow_clock); a plain
        # function (tests that move time by hand): wall time only
        self._jumps: JumpWatch | None = clock.watch() if isinstance(clock, Clock) else None
        self.clock: Callable[[], float] = clock.wall if isinstance(clock, Clock) else clock
        self._last_t = 0.0  # the latest shopper event's t: a gap in it is when to look for a clock step
        self.tz = ZoneInfo(config.node.timezone)
        self.k = config.model.k
        self.visits: dict[str, VisitState] = {}
        home = _home_zones(config)
        self.fallback = PopularityRanker(
            (p.sku, p.sales_heat, home.get(p.sku)) for p in store.products().values()
        )
        self._screens_by_zone: dict[str, list[str]] = {}
        for sc in config.layout.screens:
            if sc.kind != "shelf_display":
                self._screens_by_zone.setdefault(sc.zone, []).append(sc.id)
        # screen assignment: each screen serves the nearest present shopper in its zone
        self._screen_at = {sc.id: (sc.position, sc.zone) for sc in config.layout.screens}
        self._shelf_at = {sh.id: sh.position for sh in config.layout.shelves}
        self.locator: SessionLocator | None = None  # set by the composition root when fusion runs
        self.present_s = 90.0  # a visit counts as "in front of" screens this long after its last action
        # ... and a checked-in visit as long as it lives, while it is its zone's last to act (_nearest_session)
        self.visit_idle_s = config.fusion.session_idle_s
        self._observations: list[tuple[str, str | None, float, int]] = []
        self._observed_at = 0.0
        # a second's observations, fed to the fallback a slice at a time after ranking passes (see _rank_due)
        self._obs_staged: list[tuple[str, str | None, float, int]] = []
        self._obs_pos = 0
        self._seq = 0
        self._family: dict[str, tuple[Any, str]] = {}  # sku -> (its Product, display_family(product))
        self._id_base = new_id()[:24]  # set ids: random per process + seq (no urandom syscall per set)
        self.stats = {"events": 0, "recommendations": 0, "model": 0, "fallback": 0, "unknown_sku": 0,
                      "cap_resets": 0, "coalesced": 0, "stage2_skipped": 0, "same_name_dropped": 0,
                      "filled_from_popular": 0, "picks_cut": 0}
        self.upstream_topic = f"{config.mqtt.topic_prefix}/{config.node.store_id}/{config.node.node_id}/events"
        # bursts coalesce: visits with new picks wait here for the end of this loop iteration, then rank once
        # (the visit, perf_counter when it first became due: the overload guard's wait)
        self._due: dict[str, tuple[VisitState, float]] = {}
        self._rank_scheduled = False
        self._skip_after_s = config.model.stage2_skip_after_ms / 1000.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # called after each visit's sets of a coalesced ranking pass are published (signage pushes them at
        # once, not after the other visits of the pass or a loop iteration later)
        self.after_push: list[Callable[[], None]] = []
        self._check_ins: OrderedDict[str, str | None] = OrderedDict()  # CheckIn id -> the visit bound (None: none)
        self._learn_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.bus.subscribe(ShopperEvent, self.on_shopper_event)
        self.bus.subscribe(CheckIn, self.on_check_in)
        self._learn_task = asyncio.create_task(self._learn(), name="recommend-learn")

    async def stop(self) -> None:
        self.bus.unsubscribe(ShopperEvent, self.on_shopper_event)
        self.bus.unsubscribe(CheckIn, self.on_check_in)
        if self._learn_task is not None:
            self._learn_task.cancel()
            try:
                await self._learn_task
            except asyncio.CancelledError:
                pass
            self._learn_task = None
        self._rank_due()  # what was due still goes out
        self._loop = None

    async def _learn(self) -> None:
        """The room's tick: every ``LEARN_EVERY_S`` the picks not yet fed to the popularity fallback are fed to it,
        ``OBS_SLICE`` at a time with the loop free between slices (a burst's sets go out first). Before, only a
        ranking (``recommend``) fed them, at most once a second: on a quiet node a pick was learned up to a minute
        late (the idle screens' refresh), or never if nobody was served. Nothing is added per pick."""
        while True:
            await asyncio.sleep(LEARN_EVERY_S)
            try:
                if self._observations:
                    self._observed_at = self.clock()
                    self._stage_observations()
                while self._obs_staged:
                    self._apply_staged(OBS_SLICE)
                    await asyncio.sleep(0)
            except Exception:  # a bad pick must not stop learning for good
                log.exception("feeding picks to the popularity fallback failed")

    def health(self) -> dict[str, Any]:
        return {
            **self.stats,  # first: its "model" counter must not hide the model version below
            "status": "ok",
            "model": self.model.version if self.model is not None else None,
            "active_visits": len(self.visits),
        }

    # -- events -------------------------------------------------------------
    def on_check_in(self, ev: CheckIn) -> None:
        """Bind ``ev.customer`` to the visit ``ev.session`` (fusion has bound it first and re-publishes an event
        that named no visit, an ended one or another customer's: that first copy comes after and is ignored by its
        id). With ``ev.screen`` the visit is placed at that screen, seen now, so the screen serves it."""
        if not is_customer_hash(ev.customer):  # never store a raw id (fusion logs it)
            return
        if ev.id in self._check_ins:
            return
        self._check_ins[ev.id] = ev.session
        while len(self._check_ins) > CHECK_INS_KEPT:
            self._check_ins.popitem(last=False)
        if ev.session is None:  # fusion bound no visit (refused it: ``check_in_refused``), or no fusion runs
            return
        self._follow_clock()
        now = ev.t
        v = self.visits.get(ev.session)
        if v is None:
            v = self.visits[ev.session] = VisitState(ev.session, started=now, last_seen=now)
        v.customer = ev.customer
        v.last_seen = max(v.last_seen, now)
        at = self._screen_at.get(ev.screen) if ev.screen is not None else None
        if at is not None:  # the shopper stands at this screen now: it serves them (``_nearest_session``)
            (v.x, v.y), v.zone = at
        self.store.append_event(ev, upstream=self.upstream_topic)

    def on_session(self, view: Any) -> None:
        """Fusion's ``on_session`` hook (a visit opened or ended; the composition root wires it): an ended visit
        is served by no screen from now on, the screen goes back to the zone's items (before, an anonymous visit
        fusion ended after ``fusion.anonymous_idle_s``, 60 s, stayed on its screen for ``present_s``, 90 s). It is
        still saved when it expires here (``expire_visits``)."""
        if getattr(view, "ended", None) is None:
            return
        v = self.visits.get(view.id)
        if v is not None:
            v.ended = True

    def check_in_session(self, event_id: str) -> str | None:
        """The visit the check-in ``event_id`` bound (None: not bound, e.g. nobody bound a visit for it)."""
        return self._check_ins.get(event_id)

    def check_in_refused(self, event_id: str) -> bool:
        """True when the check-in ``event_id`` reached this room naming no visit after fusion: it bound nothing
        (fusion refuses a check-in naming an ended visit without a screen; ``edge.fusion.VisitEnded``)."""
        return event_id in self._check_ins and self._check_ins[event_id] is None

    def on_shopper_event(self, ev: ShopperEvent) -> None:
        self.stats["events"] += 1
        if not -JUMP_S < ev.t - self._last_t < JUMP_S:  # a quiet spell, or the wall clock stepped
            self._follow_clock()
        self._last_t = ev.t
        self.store.record_event(ev, upstream=self.upstream_topic,
                                stock=(ev.sku, -ev.units if ev.action == "pick" else ev.units))
        v = self.visits.get(ev.session)
        if v is None:
            v = self.visits[ev.session] = VisitState(ev.session, started=ev.t)
        v.zone = ev.zone or v.zone
        v.last_seen = ev.t
        pos = self._shelf_at.get(ev.shelf)
        if pos is not None:
            v.x, v.y = pos
        if self.store.product(ev.sku) is None:
            self.stats["unknown_sku"] += 1
        if ev.action == "pick":
            picked = v.picked
            picked.append(ev.sku)
            if len(picked) >= 2 * PICKS_KEPT:
                # a new list, not cut in place: the ranker sees it is no longer the list it has mapped and maps the
                # kept picks again (once per PICKS_KEPT picks), so what it uses per visit stays bounded
                v.picked = picked[-PICKS_KEPT:]
                self.stats["picks_cut"] += len(picked) - PICKS_KEPT
            # popularity learns in batches (once a second): observing invalidates the ranked cache of
            # that zone and hour, and re-sorting the catalogue per pick would dominate the hot path
            self._observations.append((ev.sku, ev.zone, ev.t, ev.units))
        else:
            v.put_back.append(ev.sku)
            if len(v.put_back) >= 2 * PICKS_KEPT:  # read by nobody here but kept as the visit's: bounded the same
                del v.put_back[:-PICKS_KEPT]
        loop = self._loop
        if loop is None or threading.get_ident() != self._loop_thread:  # no loop (tools, tests): rank now
            self._push(v)
            return
        # Bursts coalesce: the frames of one serial read (or a backlog after a stall) often hold several
        # picks of one visit; each visit is ranked once, after the events of this loop iteration, with
        # all of them. Without a backlog that is one ranking per pick, a few µs later.
        due = self._due.get(v.session)
        if due is not None:
            self.stats["coalesced"] += 1
        self._due[v.session] = (v, time.perf_counter() if due is None else due[1])
        if not self._rank_scheduled:
            self._rank_scheduled = True
            loop.call_soon(self._rank_due)

    def _rank_due(self) -> None:
        self._rank_scheduled = False
        due, self._due = self._due, {}
        skip_after = self._skip_after_s
        for v, t_due in due.values():
            # overload guard: the visits of a burst are ranked one after another; one that has already waited
            # ``model.stage2_skip_after_ms`` gets the first stage alone (its set is late enough as it is)
            second_stage = skip_after <= 0 or time.perf_counter() - t_due <= skip_after
            try:
                self._push(v, second_stage)
            except Exception:  # one visit's failure must not starve the others
                log.exception("ranking for visit %s failed", v.session)
            for fn in self.after_push:
                try:
                    fn()
                except Exception:
                    log.exception("after-push hook %r failed", fn)
        # the burst's sets are out: now the deferred work, while the loop would wait for the next frames
        if self._obs_staged:
            self._apply_staged(OBS_SLICE)
        if due:
            self.store.nudge()

    def _push(self, v: VisitState, second_stage: bool = True) -> None:
        """Rank for ``v`` and publish the set for each screen it is the nearest shopper to."""
        screens = self.screens_for(v)
        if screens:
            rs = self.recommend(v, screens[0], second_stage=second_stage)
            self.bus.publish(rs)
            for other in screens[1:]:  # one ranking, several screens (the same shopper is nearest to each)
                self._seq += 1
                self.bus.publish(dataclasses.replace(rs, screen=other, seq=self._seq))

    # -- ranking -------------------------------------------------------------
    def screens_for(self, v: VisitState) -> list[str]:
        """The screens of ``v``'s zone that ``v`` is the nearest present shopper to."""
        screens = self._screens_by_zone.get(v.zone or "")
        if not screens:
            return []
        return [s for s in screens if self._nearest_session(s, v) == v.session]

    def serving(self, screen: str) -> VisitState | None:
        """The visit ``screen`` serves now, or None (nobody there: the zone's popular items)."""
        self._follow_clock()  # signage asks every second: a step between shopper events is seen here
        s = self._nearest_session(screen)
        return None if s is None else self.visits.get(s)

    def refresh(self, screen: str) -> RecommendationSet:
        """A fresh set for ``screen``: for the shopper it serves, or the zone's fallback."""
        at = self._screen_at.get(screen)
        zone = at[1] if at is not None else None
        return self.recommend(self.serving(screen), screen, zone)

    def _nearest_session(self, screen: str, acting: VisitState | None = None) -> str | None:
        at = self._screen_at.get(screen)
        if at is None:
            return None
        (sx, sy), zone = at
        # a locator whose camera is down (fusion's ``camera_ok``) knows no more than this room (the same picks and
        # check-ins, at shelves and screens): the rule below answers, the same as with the camera disabled
        if self.locator is not None and getattr(self.locator, "camera_ok", True):
            try:
                found = self.locator.session_near(sx, sy, zone)
                s = found if found is None or isinstance(found, str) else getattr(found, "id", None)
            except Exception:
                log.exception("session_near failed; using the shelf positions of recent picks")
            else:
                if s is not None:
                    seen = self.visits.get(s)
                    if seen is None:
                        self.visits[s] = VisitState(s, zone=zone, started=self.clock(), last_seen=self.clock())
                    elif zone is not None:  # the camera sees them in this screen's zone now (the zone of a
                        seen.zone = zone  # last pick elsewhere is stale): a cold shopper gets this zone's items
                return s
        now = self.clock()
        best: VisitState | None = None
        best_d = math.inf
        last: VisitState | None = None  # the zone's last visit to act
        for v in self.visits.values():
            if v.zone != zone:
                continue
            if last is None or v.last_seen > last.last_seen:
                last = v
            if v is not acting and (v.ended or now - v.last_seen > self.present_s):
                continue
            d = math.hypot(v.x - sx, v.y - sy) if v.x is not None and v.y is not None else 1e6
            # nearer by more than half a metre wins; within that margin, the one who acted last
            if best is None or d < best_d - 0.5 or (d <= best_d + 0.5 and v.last_seen > best.last_seen):
                best, best_d = v, d
        if best is None and last is not None and last.customer is not None and not last.ended and \
                now - last.last_seen <= self.visit_idle_s:
            # nobody acted in present_s: a checked-in visit that was the last to act keeps the screen while it
            # lives (a shopper reading a label); anyone acting after it ends that (below present_s, the rule above)
            return last.session
        return None if best is None else best.session

    def in_stock(self, sku: str) -> bool:
        units = self.store.stock(sku)
        return units is None or units > 0

    def apply_observations(self) -> None:
        """Feed the picks seen since the last call to the popularity fallback."""
        self._stage_observations()
        self._apply_staged(None)

    def _stage_observations(self) -> None:
        """Queue the picks seen so far for the fallback, behind any staged batch not applied yet."""
        obs, self._observations = self._observations, []
        if self._obs_pos < len(self._obs_staged):
            self._obs_staged = self._obs_staged[self._obs_pos:] + obs
        else:
            self._obs_staged = obs
        self._obs_pos = 0

    def _apply_staged(self, limit: int | None) -> None:
        """Feed at most ``limit`` (None: all) staged picks to the fallback, in order."""
        staged, i = self._obs_staged, self._obs_pos
        end = len(staged) if limit is None else min(len(staged), i + limit)
        observe, tz, fromtimestamp = self.fallback.observe, self.tz, datetime.fromtimestamp
        for j in range(i, end):
            sku, zone, t, units = staged[j]
            observe(sku, zone, fromtimestamp(t, tz).hour, t, units)
        if end >= len(staged):
            self._obs_staged, self._obs_pos = [], 0
        else:
            self._obs_pos = end

    def recommend(self, v: VisitState | None, screen: str, zone: str | None = None, *,
                  second_stage: bool = True) -> RecommendationSet:
        """The set for ``screen``: ``v``'s, or the zone's popular items with nobody there. ``second_stage=False``:
        the model's first stage alone (the overload guard in ``_rank_due``)."""
        now = self.clock()
        if self._observations and now - self._observed_at >= 1.0:
            self._observed_at = now
            if self._loop is not None and threading.get_ident() == self._loop_thread:
                # on the loop: a second's picks (~1,000 at 1,000/s: ~1.3 ms) would land inside this burst; they
                # go in OBS_SLICE at a time after the next ranking passes, once their sets are out (_rank_due)
                self._stage_observations()
            else:
                self.apply_observations()
        when = datetime.fromtimestamp(now, self.tz)
        zone = zone if v is None else (v.zone or zone)
        scored, version = self._score(v, zone, when, second_stage)
        if not scored and v is not None and v.capped:
            # the frequency cap has excluded everything there is (a long visit): start a new round of
            # caps rather than show a blank screen
            v.shown.clear()
            v.capped.clear()
            self.stats["cap_resets"] += 1
            reset = getattr(self.model, "reset_caps", None)  # the model ranker keeps caps of its own
            if reset is not None:
                reset(v.session)
            scored, version = self._score(v, zone, when, second_stage)
        self.stats["model" if version != "fallback" else "fallback"] += 1
        items: list[RecItem] = []
        product = self.store.product
        cap = self.config.model.repeat_cap
        k = self.k
        names: set[str] = set()  # what the shopper reads: one line per display name, sizes aside
        family = self._family
        unshown: list[str] | None = None  # the model's skus that did not reach the screen
        n_scored = len(scored)
        for i, (sku, score, reason) in enumerate(scored):
            if len(items) >= k:
                n_scored = i
                break
            p = product(sku)
            # several skus can share a display name (pack variants: 13 "Store Shredded Cheese 8 OZ" in the
            # bundled catalogue) or differ only in size ("Store Fluid Milk White Only 1 GA" / "... 1 QT" / no
            # size); a screen showing the same line twice looks broken, so the best one stands for all
            if p is None:
                name = sku
            else:
                f = family.get(sku)
                if f is None or f[0] is not p:  # new or changed product (sync): recompute
                    f = family[sku] = (p, display_family(p))
                name = f[1]
            if name in names:
                self.stats["same_name_dropped"] += 1
                if unshown is None:
                    unshown = []
                unshown.append(sku)
                continue
            names.add(name)
            # positional makers: a frozen dataclass __init__ costs ~2 µs an item, ten items a set
            if p is not None:
                items.append(_rec_item(sku, p.name, p.price, round(float(score), 6), reason, p.category,
                                       p.department))
            else:
                items.append(_rec_item(sku, sku, None, round(float(score), 6), reason, "", ""))
            if v is not None:
                n = v.shown[sku] = v.shown.get(sku, 0) + 1
                if n >= cap:
                    v.capped.add(sku)
        if len(items) < k and v is not None and version != "fallback":
            self._fill(v, zone, now, items, names)
        if v is not None and version != "fallback" and (unshown or n_scored < len(scored)):
            # the ranker counted all it answered as shown (its own frequency caps): it takes back the dropped
            # variants and the spare items the set did not need
            self._not_shown(v, (unshown or []) + [s for s, _, _ in scored[n_scored:]])
        self._seq += 1
        self.stats["recommendations"] += 1
        return _rec_set(screen, None if v is None else v.session, tuple(items), version, zone, now, self._seq,
                        f"{self._id_base}{self._seq & 0xFFFFFFFF:08x}")

    def _fill(self, v: VisitState, zone: str | None, now: float, items: list[RecItem], names: set[str]) -> None:
        """The model's answer came out short of k (in a long visit its frequency caps leave few candidates, or
        variants were dropped): the zone's popular items for the hour fill the set, so a screen does not show a
        half-empty list. They never reach the ranker's caps (it did not count them), only the room's."""
        exclude = self._exclude(v)
        exclude.update(i.sku for i in items)
        cap = self.config.model.repeat_cap
        product = self.store.product
        hour = datetime.fromtimestamp(now, self.tz).hour
        for it in self.fallback.top(zone, hour, self.k * 4, exclude=exclude, in_stock=self.in_stock):
            if len(items) >= self.k:
                break
            p = product(it.sku)
            if p is None:
                continue
            name = display_family(p)
            if name in names:
                continue
            names.add(name)
            items.append(_rec_item(it.sku, p.name, p.price, round(float(it.score), 6), it.reason, p.category,
                                   p.department))
            self.stats["filled_from_popular"] += 1
            n = v.shown[it.sku] = v.shown.get(it.sku, 0) + 1
            if n >= cap:
                v.capped.add(it.sku)

    def _exclude(self, v: VisitState) -> set[str]:
        """What a visit's set must not show: its last 20 picks and the items it has seen enough (caps)."""
        exclude = set(v.picked[-20:])
        exclude.update(v.capped)
        return exclude

    def _not_shown(self, v: VisitState, skus: list[str]) -> None:
        """The model ranker counted ``skus`` as shown to ``v`` (its own frequency caps); they were dropped as
        same-name variants or were spares the set did not need, so it takes them back."""
        fn = getattr(self.model, "not_shown", None)
        if fn is not None:
            fn(v.session, skus)

    def _score(self, v: VisitState | None, zone: str | None, when: datetime,
               second_stage: bool = True) -> tuple[list[tuple[str, float, str]], str]:
        """(sku, score, reason) best first and the model version that made them ("fallback": popularity)."""
        exclude: set[str] = set() if v is None else self._exclude(v)
        if self.model is not None and v is not None:
            try:
                # SPARE more than k: a same-name variant dropped from the set leaves room for the next item
                # (without them ~12-21 % of the hot-path bench's sets came out one item short)
                if not second_stage:
                    self.stats["stage2_skipped"] += 1
                    scored = self.model.score(v, when, self.k + SPARE, exclude, second_stage=False)
                else:
                    scored = self.model.score(v, when, self.k + SPARE, exclude)
            except Exception:
                log.exception("model scoring failed; serving the popularity fallback")
            else:
                if scored:
                    return scored, self.model.version
        popular = self._diverse([(i.sku, i.score, i.reason) for i in self.fallback.top(
            zone, when.hour, self.k * 4, exclude=exclude, in_stock=self.in_stock)])
        if v is None:  # nobody there: the zone's popular items for the hour plus promotions (issue #6)
            popular = self._with_promotions(popular, zone, when.hour)
        return popular, "fallback"

    def _with_promotions(self, popular: list[tuple[str, float, str]], zone: str | None,
                         hour: int) -> list[tuple[str, float, str]]:
        """``signage.promotions`` active in ``zone`` at ``hour`` (in stock, in the catalogue) first, at most
        ``signage.max_promotions``, then the popular items without them."""
        cfg = self.config.signage
        if not cfg.promotions or cfg.max_promotions <= 0:
            return popular
        top = popular[0][1] if popular else 1.0
        promo: list[tuple[str, float, str]] = []
        for pr in cfg.promotions:
            if len(promo) >= cfg.max_promotions:
                break
            if (pr.active(zone, hour) and self.store.product(pr.sku) is not None and self.in_stock(pr.sku)
                    and all(p[0] != pr.sku for p in promo)):
                promo.append((pr.sku, top, pr.text))
        if not promo:
            return popular
        skus = {p[0] for p in promo}
        return promo + [p for p in popular if p[0] not in skus]

    def _diverse(self, scored: list[tuple[str, float, str]], per_type: int = 1) -> list[tuple[str, float, str]]:
        """At most ``per_type`` items of one product type or name, so a screen never shows three milks."""
        seen: dict[str, int] = {}
        names: set[str] = set()
        out, rest = [], []
        for item in scored:
            p = self.store.product(item[0])
            key = p.product_type if p is not None and p.product_type else item[0]
            name = display_family(p) if p is not None else item[0]
            if seen.get(key, 0) >= per_type or name in names:
                rest.append(item)
                continue
            seen[key] = seen.get(key, 0) + 1
            names.add(name)
            out.append(item)
        return out + rest

    def refresh_catalogue(self) -> bool:
        """Housekeeping: a catalogue change from the cloud reaches the model's ranker (new products, families)."""
        refresh = getattr(self.model, "refresh_catalogue", None)
        return bool(refresh()) if refresh is not None else False

    def _follow_clock(self) -> None:
        """Visits are stamped in event (wall) time; when the wall clock steps (NTP syncing a Pi that booted at
        a wrong time), shift them by the step: else a step forward ended every visit at once and a step back
        kept visits that had left "in front of" their screens and alive until the clock caught up."""
        d = self._jumps.check() if self._jumps is not None else 0.0
        if not d:
            return
        log.info("recommend: the wall clock stepped by %+.1f s; visits keep their idle time", d)
        for v in self.visits.values():
            v.started += d
            v.last_seen += d
        self._observed_at += d
        self._last_t += d

    def expire_visits(self, idle_s: float) -> int:
        self._follow_clock()
        now = self.clock()
        old = [s for s, v in self.visits.items() if now - v.last_seen > idle_s]
        end = getattr(self.model, "end_visit", None)  # the model ranker keeps per-visit caps of its own
        for s in old:
            v = self.visits.pop(s)
            self.store.save_session(s, started=v.started, ended=v.last_seen, zone=v.zone, customer=v.customer,
                                    items=v.picked)
            if end is not None:
                try:
                    end(s)
                except Exception:  # housekeeping: a ranker error must not keep the visit alive
                    log.exception("ending visit %s in the ranker failed", s)
        return len(old)


def _home_zones(config: NodeConfig) -> dict[str, str]:
    """sku -> the zone of the first shelf that stocks it (one pass over the planogram, not one per product)."""
    home: dict[str, str] = {}
    for sh in config.layout.shelves:
        for sl in sh.slots:
            if sl.sku is not None:
                home.setdefault(sl.sku, sh.zone)
    return home

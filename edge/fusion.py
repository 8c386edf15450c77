"""Sensor fusion: who picked up what.

Shelf controllers say *what* left a shelf (``ShelfEvent``); the camera says
*who* stood where (``TrackUpdate``). Each shelf event is attributed to the one
track that stood within the shelf's reach around the event time (median
distance over ``[t - time_tolerance_s, t]``, plus a penalty for walking
speed: picking means standing still); when two tracks are within
``ambiguity_margin_m`` of each other it stays unattributed instead of
guessing. A session runs from a track's entry to its exit (a track lost and
re-found within ``handoff_s`` / ``handoff_m`` keeps its session) and collects
the picked items. A check-in links a session to a hashed customer key.

A check-in (``check_in``; from the bus, ``CheckIn``) always ends on a live visit at that screen: the named session
if it is active, else the tracked shopper's, else the shopper within 3 m of the screen, else a new visit placed at
the screen. A visit already linked to another customer is never relinked (a second shopper checking in at the same
screen gets a visit of their own), and an ended session is never reopened (with a screen the check-in opens a new
visit there; without one it is refused, ``VisitEnded``: no screen would ever show a visit placed nowhere; the same
for another customer's live visit named without a screen, ``VisitOfAnotherCustomer``). A shelf's anonymous visit a
check-in binds becomes a checked-in visit (it lives ``session_idle_s``, not ``anonymous_idle_s``). With
the camera down, the checked-in visit also stands in for the anonymous per-shelf sessions of its zone's shelves
that have none, so the shopper's next picks there land on it (and keep the customer), for ``fusion.stand_in_s``
after the check-in (picks do not extend it: that bounds how long another shopper's picks there can land on it);
with the camera on, a visit checked in with nobody tracked near the screen is taken by the first new track seen
within 3 m of the screen in the next 30 s (the shopper walking into view), so their picks are attributed to it;
unclaimed after those 30 s it no longer holds its screen against tracked shoppers (``session_near``). On
the bus, fusion sees a ``CheckIn`` first and, when it bound another session than the event names, publishes the
event again (same id) with that session (``None`` when it refused the check-in): the recommender binds the visit
fusion bound (nothing for ``None``), and ignores the first copy (by its id).

Without a working camera (disabled, reconnecting, failed), every shelf event
goes to an anonymous per-shelf session (``attributed=False``), so ranking and
signage keep working on shelf data alone. A shelf's anonymous session ends after ``anonymous_idle_s`` without
a pick, and at its first pick more than ``anonymous_max_s`` after it started (that pick opens a new one).

Every other visit (a track's, a checked-in one) ends once it is ``fusion.visit_max_s`` old (2 h: past any real
grocery trip), at the next sweep or at a pick past it, as an idle one ends (``on_session`` told, saved by the
recommender): a track the camera keeps for hours (staff restocking, a mannequin) otherwise made one visit of hours
of picks. The track's next update or pick opens a new visit for it. A checked-in visit ends the same way and the
check-in does not carry over (a shopper who checked in 2 h ago is not still shopping; the new visit is anonymous
until they check in again).

Integration surface (stable; plain methods, call them from one thread, the
event loop; they never block and are also guarded by a lock)::

    fusion = Fusion(config, on_shopper_event, on_session=None, bus=None)   # on_session: a visit opened/ended
    await fusion.start(); await fusion.stop()   # a room: with ``bus`` it subscribes itself
    fusion.on_shelf_event(ShelfEvent)      # -> on_shopper_event(ShopperEvent) once per event with a SKU
    fusion.on_track(TrackUpdate)
    fusion.on_zone(ZoneEvent)
    fusion.set_camera_status(ok: bool)     # wire to VisionRoom(on_status=...)
    fusion.check_in(customer_hash, track=None, session=None, screen=None) -> session id (never an ended one;
                                           # raises VisitEnded / VisitOfAnotherCustomer (CheckInRefused) for
                                           # an ended / another customer's session named without a screen)
    fusion.on_check_in(CheckIn)            # same, from a CheckIn event
    fusion.active_sessions() -> list[SessionView]
    fusion.session(session_id) -> SessionView | None
    fusion.session_near(x, y, zone=None, max_m=10.0) -> SessionView | None   # signage: who is at this screen
    fusion.camera_ok                       # False: the recommender places visits itself (shelves, screens)
    fusion.expire(now=None)                # close idle sessions (call every few seconds)
    fusion.health() -> dict

``ShopperEvent.id`` is derived from the shelf event's id (``shopper_event_id``)
so a replayed shelf event yields the same idempotency key.
Customer ids are hashed with ``hash_customer(raw_id, salt)`` (salted SHA-256)
before they reach this module; ``check_in`` refuses anything that is not such
a hash, so a raw loyalty number can never be stored by mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import logging
import math
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import SecretStr

from edge.clock import JUMP_S, SYSTEM, Clock
from edge.config import NodeConfig, Shelf
from edge.events import CheckIn, ShelfEvent, ShopperEvent, TrackUpdate, ZoneEvent, maker
from edge.sync.schemas import is_customer_hash

__all__ = ["CheckInRefused", "Fusion", "SessionView", "VisitEnded", "VisitOfAnotherCustomer", "hash_customer",
           "shopper_event_id"]

log = logging.getLogger("shelfcast.fusion")
# (session, sku, action, zone, units, shelf, slot, t, attributed, id): the frozen dataclass __init__ is ~2 µs
_shopper_event = maker(ShopperEvent)

LOST_AFTER_S = 1.0  # a track without updates this long is lost (its session may still be handed off)
TRACK_HISTORY_S = 10.0
CLOSED_KEPT = 1000
QUICK_REJECT_M = 2.5  # a track last seen farther than reach + this from a shelf cannot have picked there
MOTION_PENALTY_S = 0.4  # metres of distance added per m/s of walking speed around the pick
CHECK_IN_NEAR_M = 3.0  # a check-in at a screen binds the shopper this close to it
CLAIM_S = 30.0  # a check-in nobody was tracked near: a new track this soon after, this close to the screen, takes it
CHECK_INS_KEPT = 256  # check-in event ids seen (a re-published CheckIn is not bound twice)


class CheckInRefused(LookupError):
    """A check-in named a visit it cannot bind and gave no screen (nor a live track) to place a new one at: a new
    visit placed nowhere would be shown on no screen, so the shopper must check in again at the screen they stand
    at. ``session``: the visit named."""

    def __init__(self, session: str, why: str) -> None:
        super().__init__(f"visit {session} {why}; check in again at the screen the shopper stands at")
        self.session = session


class VisitEnded(CheckInRefused):
    """The named visit has ended (it is never reopened)."""

    def __init__(self, session: str) -> None:
        super().__init__(session, "has ended")


class VisitOfAnotherCustomer(CheckInRefused):
    """The named visit is live and linked to another customer (never relinked)."""

    def __init__(self, session: str) -> None:
        super().__init__(session, "is another customer's")


def hash_customer(raw_id: str, salt: str | SecretStr) -> str:
    """Salted SHA-256 of a customer id (loyalty number, app user id): the only form ever stored."""
    s = salt.get_secret_value() if isinstance(salt, SecretStr) else salt
    raw = str(raw_id).strip()
    if not raw:
        raise ValueError("empty customer id")
    return hashlib.sha256(s.encode() + b"\x00" + raw.encode()).hexdigest()


def shopper_event_id(shelf_event_id: str) -> str:
    """Deterministic ShopperEvent id for a shelf event (idempotent under replays)."""
    return hashlib.sha256(b"shopper:" + shelf_event_id.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class SessionView:
    """A read-only snapshot of one shopper visit."""

    id: str
    track: int | None  # current camera track; None for anonymous per-shelf or untracked sessions
    shelf: str | None  # anonymous per-shelf session: its shelf
    customer: str | None  # hashed customer key after a check-in
    zone: str | None
    x: float | None
    y: float | None
    started: float
    last_seen: float
    ended: float | None
    items: tuple[tuple[str, int], ...]  # (sku, net units picked) in first-pick order
    attributed: bool  # True: a tracked shopper; False: anonymous per-shelf session

    @property
    def skus(self) -> tuple[str, ...]:
        return tuple(s for s, n in self.items if n > 0)


@dataclass(slots=True)
class _Session:
    id: str
    started: float
    last_seen: float
    track: int | None = None
    shelf: str | None = None
    customer: str | None = None
    zone: str | None = None
    x: float | None = None
    y: float | None = None
    ended: float | None = None
    lost_at: float | None = None
    tracks: list[int] = field(default_factory=list)
    items: dict[str, int] = field(default_factory=dict)
    stand_in_until: float = math.inf  # a checked-in visit standing in for shelves (camera down): until then
    aged_out: bool = False  # ended at ``fusion.visit_max_s``: its tracks start new visits

    def view(self) -> SessionView:
        return SessionView(id=self.id, track=self.track, shelf=self.shelf, customer=self.customer, zone=self.zone,
                           x=self.x, y=self.y, started=self.started, last_seen=self.last_seen, ended=self.ended,
                           items=tuple(self.items.items()), attributed=self.shelf is None)


class _Bus(Protocol):
    def subscribe(self, event_type: type[Any], handler: Callable[[Any], None], *, first: bool = False) -> None: ...
    def unsubscribe(self, event_type: type[Any], handler: Callable[[Any], None]) -> None: ...
    def publish(self, event: Any) -> None: ...


class Fusion:
    """The fusion room. With ``bus`` it subscribes itself on ``start()`` (ShelfEvent, TrackUpdate,
    ZoneEvent, CheckIn) and closes idle sessions every 2 s; without, call the methods directly."""

    name = "fusion"

    def __init__(self, config: NodeConfig, on_shopper_event: Callable[[ShopperEvent], None],
                 on_session: Callable[[SessionView], None] | None = None, *, bus: _Bus | None = None,
                 clock: Clock = SYSTEM) -> None:
        self.bus = bus
        self._wall = clock.wall
        self._jumps = clock.watch()  # a step of the wall clock (NTP) shifts the room's stamps (_follow_clock)
        self._task: asyncio.Task[None] | None = None
        self.cfg = config.fusion
        self.layout = config.layout
        self._emit = on_shopper_event
        self._on_session = on_session
        self._shelves: dict[str, Shelf] = {s.id: s for s in config.layout.shelves}
        self._screens = {s.id: s for s in config.layout.screens}
        self._lock = threading.RLock()
        self.camera_ok = bool(config.camera.enabled)
        self._hist: dict[int, deque[tuple[float, float, float]]] = {}
        self._track_session: dict[int, str] = {}
        self._active: dict[str, _Session] = {}
        self._closed: OrderedDict[str, _Session] = OrderedDict()
        self._anon_by_shelf: dict[str, str] = {}
        self._check_ins_seen: OrderedDict[str, None] = OrderedDict()  # CheckIn ids handled (bus re-publish)
        self._zone_seen: dict[str, float] = {}  # zone -> when the camera last saw a tracked shopper in it
        self._now = 0.0
        self._last_sweep = 0.0
        self.stats: dict[str, int] = {k: 0 for k in (
            "shelf_events", "attributed", "unattributed", "ambiguous", "nobody_in_reach", "shelf_only",
            "unknown_shelf", "no_sku", "bad_events", "check_ins", "check_ins_elsewhere", "check_ins_claimed",
            "check_ins_refused", "handoffs", "sessions_opened", "sessions_closed", "sessions_aged_out",
            "track_updates")}

    # -- room lifecycle -------------------------------------------------------
    async def start(self) -> None:
        if self.bus is not None:
            self.bus.subscribe(ShelfEvent, self.on_shelf_event)
            self.bus.subscribe(TrackUpdate, self.on_track)
            self.bus.subscribe(ZoneEvent, self.on_zone)
            # first: the visit is bound here before the recommender sees the event (_on_check_in_event)
            self.bus.subscribe(CheckIn, self._on_check_in_event, first=True)
        self._task = asyncio.create_task(self._housekeep(), name="fusion-expire")

    async def stop(self) -> None:
        if self.bus is not None:
            self.bus.unsubscribe(ShelfEvent, self.on_shelf_event)
            self.bus.unsubscribe(TrackUpdate, self.on_track)
            self.bus.unsubscribe(ZoneEvent, self.on_zone)
            self.bus.unsubscribe(CheckIn, self._on_check_in_event)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            self.expire()

    def _on_check_in_event(self, ev: CheckIn) -> None:
        if ev.id in self._check_ins_seen:  # our own re-publish (below), or a replay
            return
        self._check_ins_seen[ev.id] = None
        while len(self._check_ins_seen) > CHECK_INS_KEPT:
            self._check_ins_seen.popitem(last=False)
        sid: str | None
        try:
            sid = self.on_check_in(ev)
        except CheckInRefused:
            sid = None  # counted and logged in check_in; the recommender binds nothing (below)
        except ValueError:
            self.stats["bad_events"] += 1
            log.warning("fusion: check-in with a customer key that is not a salted hash; ignored")
            return
        if sid != ev.session and self.bus is not None:
            # the event named no session (the screen served nobody), an ended one or another customer's: the
            # recommender must bind the visit bound here, so it gets the event again (same id) naming it; None:
            # refused (an ended visit or another customer's, and no screen), the recommender binds nothing for it
            self.bus.publish(dataclasses.replace(ev, session=sid))

    # -- inputs ---------------------------------------------------------------
    def set_camera_status(self, ok: bool) -> None:
        with self._lock:
            if ok != self.camera_ok:
                log.info("fusion: camera %s, %s", "back" if ok else "lost",
                         "attributing picks to tracks" if ok else "continuing shelf-only")
            self.camera_ok = ok

    def on_track(self, u: TrackUpdate) -> None:
        with self._lock:
            if not (math.isfinite(u.x) and math.isfinite(u.y) and math.isfinite(u.t)):
                self.stats["bad_events"] += 1
                return
            self.stats["track_updates"] += 1
            self._tick(u.t)
            h = self._hist.get(u.track)
            if h is None:
                h = self._hist[u.track] = deque(maxlen=512)
            h.append((u.t, u.x, u.y))
            while h and h[0][0] < u.t - TRACK_HISTORY_S:
                h.popleft()
            sid = self._track_session.get(u.track)
            s = self._active.get(sid) if sid else None
            if s is None:
                s = self._handoff(u) or self._claim(u) or self._open(u.t, track=u.track)
                self._track_session[u.track] = s.id
                if u.track not in s.tracks:
                    s.tracks.append(u.track)
            s.track = u.track
            s.lost_at = None
            s.x, s.y, s.last_seen = u.x, u.y, max(s.last_seen, u.t)
            if u.zone is not None or s.zone is None:
                s.zone = u.zone
            if s.zone is not None:
                self._zone_seen[s.zone] = u.t  # a tracked shopper acts in the zone (session_near)

    def on_zone(self, ev: ZoneEvent) -> None:
        with self._lock:
            self._tick(ev.t)
            sid = self._track_session.get(ev.track)
            s = self._active.get(sid) if sid else None
            if s is not None and ev.kind == "enter":
                s.zone = ev.zone

    def on_shelf_event(self, ev: ShelfEvent) -> None:
        with self._lock:
            self.stats["shelf_events"] += 1
            if ev.delta_units == 0 or not math.isfinite(ev.t):
                self.stats["bad_events"] += 1
                return
            self._tick(ev.t)
            shelf = self._shelves.get(ev.shelf)
            sku = ev.sku
            if sku is None and shelf is not None:
                sku = next((sl.sku for sl in shelf.slots if sl.slot == ev.slot), None)
            if shelf is None:
                self.stats["unknown_shelf"] += 1
            if not sku:
                self.stats["no_sku"] += 1
                return
            zone = shelf.zone if shelf is not None else None
            session: _Session | None = None
            if shelf is not None and self.camera_ok:
                session = self._attribute(shelf, ev.t)
            elif shelf is not None:
                self.stats["shelf_only"] += 1
            attributed = session is not None
            if session is None:
                session = self._anonymous(ev.shelf, ev.t)
                self.stats["unattributed"] += 1
            else:
                self.stats["attributed"] += 1
            delta = -ev.delta_units  # units taken by the shopper
            session.items[sku] = session.items.get(sku, 0) + delta
            session.last_seen = max(session.last_seen, ev.t)
            out = _shopper_event(session.id, sku, ev.action, zone or session.zone, ev.units, ev.shelf, ev.slot,
                                 ev.t, attributed, shopper_event_id(ev.id))
        self._emit(out)

    def check_in(self, customer_hash: str, track: int | None = None, session: str | None = None,
                 screen: str | None = None, t: float | None = None) -> str:
        """Link a live visit to a hashed customer; returns its session id.

        In order: ``session`` if active, the ``track``'s visit, the shopper within 3 m of ``screen``; a visit
        linked to another customer is skipped, an ended ``session`` is never reopened. Nobody fits: a new visit,
        at the screen, with the id ``session`` if that names no visit this node has seen. An ended ``session``
        with no ``screen`` (and no live ``track`` visit) raises ``VisitEnded``, another customer's live one
        ``VisitOfAnotherCustomer``: a new visit not placed at a screen would be shown on no screen (before, another
        customer's got one placed where theirs was, which the recommender never placed). A shelf's anonymous visit
        becomes a checked-in visit (lives ``session_idle_s``, owns no shelf). Without a camera the visit takes
        over the free shelves of its zone for ``fusion.stand_in_s`` (``_stand_in``) so the shopper's picks there
        land on it."""
        if not is_customer_hash(customer_hash):  # the one check (``$`` let a trailing newline through)
            raise ValueError("check_in takes a hashed customer key (64 hex chars): "
                             "pass hash_customer(raw_id, config.fusion.customer_salt), never the raw id")
        with self._lock:
            self._follow_clock()
            now = t if t is not None else (self._now or self._wall())
            self._tick(now)

            def fits(c: _Session | None) -> _Session | None:
                return c if c is not None and c.customer in (None, customer_hash) else None

            s: _Session | None = None
            named: _Session | None = None  # the named session when it cannot be bound (ended, another customer)
            if session is not None:
                named = self._active.get(session) or self._closed.get(session)
                s = fits(self._active.get(session))
                if s is not None:
                    named = None
                elif named is not None:
                    self.stats["check_ins_elsewhere"] += 1
            if s is None and track is not None:
                sid = self._track_session.get(track)
                s = fits(self._active.get(sid) if sid else None)
            scr = self._screens.get(screen) if screen else None
            if s is None and scr is not None:
                near = self._near(scr.position[0], scr.position[1], scr.zone, CHECK_IN_NEAR_M, customer_hash)
                s = self._active.get(near.id) if near is not None else None
            if s is None and scr is None and named is not None:
                # nothing to bind and nowhere to place a new visit a screen would show: refused, nothing bound
                self.stats["check_ins_refused"] += 1
                if named.ended is not None:
                    log.info("fusion: a check-in named visit %s, which ended %.0f s ago, and no screen: refused "
                             "(check in again at the screen)", named.id, now - named.ended)
                    raise VisitEnded(named.id)
                log.info("fusion: a check-in named visit %s, another customer's, and no screen: refused (check in "
                         "at the screen)", named.id)
                raise VisitOfAnotherCustomer(named.id)
            if s is not None and s.shelf is not None:
                # a shelf's anonymous visit (camera off; camera on, an unattributed pick) becomes the customer's
                # visit: it lives fusion.session_idle_s like any checked-in visit, not anonymous_idle_s (before, it
                # ended 60 s after its last pick while its screen kept serving it), and no longer owns the shelf
                if self._anon_by_shelf.get(s.shelf) == s.id:
                    del self._anon_by_shelf[s.shelf]
                s.shelf = None
            if s is None:
                # a caller's own visit id is kept when it names nothing here (never an ended or taken one)
                s = self._open(now, sid=session if session is not None and named is None else None)
                if scr is not None:  # (a named visit that could not be bound without a screen was refused above)
                    s.x, s.y, s.zone = scr.position[0], scr.position[1], scr.zone
            elif scr is not None and s.track is None and s.shelf is None:
                s.x, s.y, s.zone = scr.position[0], scr.position[1], scr.zone  # an untracked visit: at the screen
            s.customer = customer_hash
            s.last_seen = max(s.last_seen, now)
            if not self.camera_ok and s.track is None:
                self._stand_in(s, now)
            self.stats["check_ins"] += 1
            return s.id

    def on_check_in(self, ev: CheckIn) -> str:
        return self.check_in(ev.customer, track=ev.track, session=ev.session, screen=ev.screen, t=ev.t)

    # -- queries --------------------------------------------------------------
    def active_sessions(self) -> list[SessionView]:
        with self._lock:
            return [s.view() for s in self._active.values()]

    def session(self, session_id: str) -> SessionView | None:
        with self._lock:
            s = self._active.get(session_id) or self._closed.get(session_id)
            return s.view() if s is not None else None

    def session_near(self, x: float, y: float, zone: str | None = None, max_m: float = 10.0) -> SessionView | None:
        """The active shopper nearest to (x, y) (e.g. a screen), optionally in ``zone``: who a screen serves.

        Camera on, who is acting: a tracked shopper while the camera sees them; a visit it does not see (a check-in
        nobody was tracked near, a shelf's visit of an unattributed pick) for ``CLAIM_S`` (30 s) after its last
        action, counted 0.5 m farther than it is. After that an untracked checked-in visit holds the screen only as
        its zone's last to act: while no tracked shopper has been seen in the zone since its last action (the
        camera-off rule of ``edge.recommend``, with being seen as acting); an anonymous one no longer at all.

        With the camera down, the most recent anonymous shelf session of the
        nearest shelf (in that zone) stands in for the shopper. (The recommender does not ask then: while
        ``camera_ok`` is False its own rule decides, as with the camera disabled.)
        """
        with self._lock:
            return self._near(x, y, zone, max_m, serving=self.camera_ok)

    def expire(self, now: float | None = None) -> None:
        """Close idle and lost sessions; cheap, call it every few seconds."""
        with self._lock:
            self._follow_clock()
            self._sweep(now if now is not None else max(self._now, self._wall()))

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {
                "status": "ok",  # shelf-only is a working mode; the vision room reports the camera fault
                "mode": "camera" if self.camera_ok else "shelf_only",
                "active_sessions": len(self._active),
                "tracked_sessions": sum(1 for s in self._active.values() if s.track is not None),
                "tracks": len(self._hist),
                **self.stats,
            }

    # -- internals ------------------------------------------------------------
    def _follow_clock(self) -> None:
        """Sessions and track histories are kept in event time, i.e. wall time. When the wall clock steps (NTP
        syncing a Pi that booted at a wrong time), shift them by the step: else a step forward closed every
        visit at once and a step back froze expiry (and closed each new visit as idle in the next sweep)."""
        d = self._jumps.check()
        if not d:
            return
        log.info("fusion: the wall clock stepped by %+.1f s; visits keep their idle time", d)
        self._now += d
        self._last_sweep += d
        for z in self._zone_seen:
            self._zone_seen[z] += d
        for tr, h in self._hist.items():
            self._hist[tr] = deque(((t + d, x, y) for t, x, y in h), maxlen=h.maxlen)
        for s in itertools.chain(self._active.values(), self._closed.values()):
            s.started += d
            s.last_seen += d
            if s.lost_at is not None:
                s.lost_at += d
            if s.ended is not None:
                s.ended += d

    def _tick(self, t: float) -> None:
        if not -JUMP_S < t - self._now < JUMP_S:  # a gap in event time: a quiet spell, or the clock stepped
            self._follow_clock()
        if t > self._now:
            self._now = t
        if self._now - self._last_sweep >= 0.5:
            self._sweep(self._now)

    def _open(self, t: float, track: int | None = None, shelf: str | None = None, sid: str | None = None) -> _Session:
        s = _Session(id=sid or uuid.uuid4().hex, started=t, last_seen=t, track=track, shelf=shelf)
        if track is not None:
            s.tracks.append(track)
        self._active[s.id] = s
        self.stats["sessions_opened"] += 1
        if self._on_session is not None:
            self._on_session(s.view())
        return s

    def _close(self, s: _Session, t: float) -> None:
        s.ended = t
        self._active.pop(s.id, None)
        if s.shelf is not None and self._anon_by_shelf.get(s.shelf) == s.id:
            del self._anon_by_shelf[s.shelf]
        self._closed[s.id] = s
        while len(self._closed) > CLOSED_KEPT:
            old_id, old = self._closed.popitem(last=False)
            for tr in old.tracks:
                if self._track_session.get(tr) == old_id:
                    del self._track_session[tr]
        self.stats["sessions_closed"] += 1
        if self._on_session is not None:
            self._on_session(s.view())

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        for tr in [k for k, h in self._hist.items() if not h or h[-1][0] < now - TRACK_HISTORY_S]:
            del self._hist[tr]
        for s in list(self._active.values()):
            if s.shelf is not None:
                if now - s.last_seen > self.cfg.anonymous_idle_s:
                    self._close(s, s.last_seen)
                continue
            if now - s.started > self.cfg.visit_max_s:
                self._age_out(s)
                continue
            if s.track is not None:
                h = self._hist.get(s.track)
                last = h[-1][0] if h else s.last_seen
                if now - last > LOST_AFTER_S and s.lost_at is None:
                    s.lost_at = last
                if s.lost_at is not None and now - s.lost_at > self.cfg.handoff_s + LOST_AFTER_S:
                    self._close(s, s.lost_at)
                    continue
            elif now - s.last_seen > self.cfg.session_idle_s:
                self._close(s, s.last_seen)
                continue
            if now - s.last_seen > self.cfg.session_idle_s:
                self._close(s, s.last_seen)

    def _age_out(self, s: _Session) -> None:
        """End a visit ``fusion.visit_max_s`` old (a track kept for hours, staff restocking): closed as an idle one
        (``on_session``), its tracks no longer lead to it, so their next update or pick opens a new visit; the
        check-in stays with the ended visit."""
        s.aged_out = True
        for tr in s.tracks:
            if self._track_session.get(tr) == s.id:
                del self._track_session[tr]
        self.stats["sessions_aged_out"] += 1
        self._close(s, s.last_seen)

    def _handoff(self, u: TrackUpdate) -> _Session | None:
        """A new track where a tracked shopper was just lost continues that shopper's session."""
        best: tuple[float, _Session] | None = None
        for s in self._active.values():
            if s.shelf is not None or s.x is None or s.y is None or s.track is None:
                continue
            h = self._hist.get(s.track)
            last = h[-1][0] if h else s.last_seen
            gap = u.t - last
            if not (LOST_AFTER_S * 0.5 <= gap <= self.cfg.handoff_s + LOST_AFTER_S):
                continue
            d = math.hypot(u.x - s.x, u.y - s.y)
            if d <= self.cfg.handoff_m and (best is None or d < best[0]):
                best = (d, s)
        if best is None:
            return None
        self.stats["handoffs"] += 1
        return best[1]

    def _claim(self, u: TrackUpdate) -> _Session | None:
        """A new track near a screen where a shopper checked in with nobody tracked there (``check_in`` opened an
        untracked visit): the shopper walking into view takes that visit, the newest within ``CLAIM_S``."""
        best: _Session | None = None
        for s in self._active.values():
            if (s.customer is None or s.track is not None or s.shelf is not None or s.tracks or s.x is None
                    or s.y is None or not 0.0 <= u.t - s.last_seen <= CLAIM_S):
                continue
            if math.hypot(u.x - s.x, u.y - s.y) <= CHECK_IN_NEAR_M and (best is None or s.last_seen > best.last_seen):
                best = s
        if best is not None:
            self.stats["check_ins_claimed"] += 1
        return best

    def _attribute(self, shelf: Shelf, t: float) -> _Session | None:
        sx, sy = shelf.position
        lo, hi = t - self.cfg.time_tolerance_s, t + 0.25
        cands: list[tuple[float, int]] = []
        far = shelf.reach_m + QUICK_REJECT_M
        for track, h in self._hist.items():
            if not h or h[-1][0] < lo:
                continue
            _, lx, ly = h[-1]
            if abs(lx - sx) > far or abs(ly - sy) > far:
                continue  # nobody walks that far back into reach within the window
            pts: list[tuple[float, float, float]] = []
            for p in reversed(h):  # newest first; stop at the window's start
                if p[0] < lo:
                    break
                if p[0] <= hi:
                    pts.append(p)
            if not pts:
                continue
            pts.reverse()
            ds = sorted([math.hypot(x - sx, y - sy) for (_, x, y) in pts])
            n = len(ds)
            d = ds[n // 2] if n % 2 else 0.5 * (ds[n // 2 - 1] + ds[n // 2])
            if d > shelf.reach_m:
                continue
            # picking means standing still: someone walking past scores as if farther away
            span = pts[-1][0] - pts[0][0]
            path = sum(math.hypot(b[1] - a[1], b[2] - a[2]) for a, b in itertools.pairwise(pts))
            speed = path / span if span > 0.2 else 0.0
            cands.append((d + MOTION_PENALTY_S * speed, track))
        if not cands:
            self.stats["nobody_in_reach"] += 1
            return None
        cands.sort()
        if len(cands) > 1 and cands[1][0] - cands[0][0] < self.cfg.ambiguity_margin_m:
            self.stats["ambiguous"] += 1
            return None
        track = cands[0][1]
        sid = self._track_session.get(track)
        s = (self._active.get(sid) or self._closed.get(sid)) if sid else None
        if s is not None and s.ended is None and t - s.started > self.cfg.visit_max_s:
            self._age_out(s)  # a pick past the limit before the sweep saw it: it opens the new visit
            s = None
        if s is None:
            s = self._open(t, track=track)
            self._track_session[track] = s.id
        return s

    def _stand_in(self, s: _Session, now: float) -> None:
        """Camera down: ``s`` (a checked-in visit) becomes the anonymous session of each shelf of its zone that has
        none active, so the shopper's picks there go to it, for ``fusion.stand_in_s`` after this check-in. Picks do
        not extend it (they may be anybody's: before, each kept it going, so a busy zone's picks all landed on the
        checked-in visit); a pause does not end it; checking in again renews it. 0: no stand-in."""
        if s.zone is None or self.cfg.stand_in_s <= 0:
            return
        s.stand_in_until = now + self.cfg.stand_in_s
        for sh in self._shelves.values():
            if sh.zone == s.zone:
                sid = self._anon_by_shelf.get(sh.id)
                cur = self._active.get(sid) if sid else None
                if cur is None or (cur.shelf != sh.id and cur.stand_in_until < now):  # free, or a stand-in done
                    self._anon_by_shelf[sh.id] = s.id

    def _anonymous(self, shelf: str, t: float) -> _Session:
        sid = self._anon_by_shelf.get(shelf)
        s = self._active.get(sid) if sid else None
        # the shelf's own session ends when quiet, or at its first pick past anonymous_max_s (a busy shelf is never
        # quiet: before, its one visit took hours of shoppers' picks); a stand-in holds until its stand_in_until
        if s is None or ((t - s.last_seen > self.cfg.anonymous_idle_s or t - s.started > self.cfg.anonymous_max_s)
                         if s.shelf == shelf else t > s.stand_in_until):
            if s is not None and s.shelf == shelf:  # this shelf's own; a checked-in stand-in ends as any visit
                self._close(s, s.last_seen)
            s = self._open(t, shelf=shelf)
            sh = self._shelves.get(shelf)
            if sh is not None:
                s.x, s.y, s.zone = sh.position[0], sh.position[1], sh.zone
            self._anon_by_shelf[shelf] = s.id
        return s

    def _near(self, x: float, y: float, zone: str | None, max_m: float,
              customer: str | None = None, serving: bool = False) -> SessionView | None:
        """``customer``: skip visits linked to another customer (a check-in never relinks them). ``serving``
        (camera on, a screen asks): untracked visits count for ``CLAIM_S`` after their last action, then only a
        checked-in one as its zone's last to act (``session_near``)."""
        best: tuple[float, _Session] | None = None
        held: _Session | None = None  # serving: an untracked checked-in visit past CLAIM_S, its zone's last to act
        fresh = self._now - 2.0
        grace = max(self._now, self._last_sweep) - CLAIM_S  # the sweep's time: no track updates in an empty room
        for s in self._active.values():
            if s.x is None or s.y is None or s.lost_at is not None:
                continue
            if customer is not None and s.customer not in (None, customer):
                continue
            if zone is not None and s.zone != zone:
                continue
            tracked = s.track is not None and s.last_seen >= fresh
            if s.track is not None and not tracked:
                continue
            d = math.hypot(s.x - x, s.y - y)
            if s.track is None:
                if serving and s.last_seen < grace:
                    # past its grace: only a checked-in visit, only if nobody tracked was seen in its zone since
                    if (s.customer is not None and d <= max_m and self._zone_seen.get(s.zone or "", -math.inf)
                            <= s.last_seen and (held is None or s.last_seen > held.last_seen)):
                        held = s
                    continue
                d += 0.5  # a live tracked shopper beats a shelf-only stand-in at the same distance
            # the same distance (two check-ins at one screen): the one seen last
            if d <= max_m and (best is None or d < best[0] or (d == best[0] and s.last_seen > best[1].last_seen)):
                best = (d, s)
        if best is None:
            return held.view() if held is not None else None
        return best[1].view()

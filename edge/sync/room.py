"""The sync room: the node's cloud link (events up; releases, deltas, commands, config down).

Started last (after signage) and only when ``mqtt.cloud.url`` is set. A
broker that is down at start does not stop the node: the link reconnects with
backoff and jitter forever and ``health()`` says what is wrong.

Threads: the MQTT link thread runs the network loop, the outbox drainer and
the downstream handlers (which only validate and write to disk/store); one
release worker runs verification, canary and swap; the asyncio task does
housekeeping (backlog caps, canary persistence, state refresh).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edge import __version__
from edge.bus import Bus
from edge.config import NodeConfig
from edge.events import CheckIn, ShopperEvent
from edge.store import Product, Profile, Store
from edge.sync.canary import CanaryOptions, CanarySet
from edge.sync.ha import discovery_messages
from edge.sync.link import LinkSettings, MqttLink, settings_from_broker
from edge.sync.outbox import DrainOptions, OutboxDrainer, evict
from edge.sync.prune import prune_models
from edge.sync.release import CandidateLoader, ReleaseError, ReleaseManager
from edge.sync.schemas import (
    DELTAS,
    CatalogueDelta,
    CatalogueSnapshot,
    Command,
    ConfigUpdate,
    PlanogramDelta,
    PlanogramSnapshot,
    ProfileIn,
    ProfilesDelta,
    ProfilesSnapshot,
    PromotionsSnapshot,
    StockDelta,
    StockSnapshot,
    describe_error,
    is_customer_hash,
)
from edge.sync.topics import Topics

__all__ = ["SyncOptions", "SyncRoom", "default_loader"]

log = logging.getLogger(__name__)

PRIORITY_REPORT = 2  # release steps, errors, command results: evicted last


@dataclass
class SyncOptions:
    session_expiry_s: int = 7 * 86400
    connack_timeout_s: float = 10.0
    batch_max_events: int = 500
    batch_max_age_ms: int = 200
    max_message_bytes: int = 128 * 1024
    outbox_max_rows: int = 500_000
    outbox_max_age_s: float = 14 * 86400.0
    state_interval_s: float = 60.0
    homeassistant: bool = False
    homeassistant_prefix: str = "homeassistant"
    backoff_max_s: float = 30.0
    max_snapshot_mb: int = 32  # a snapshot's JSON, decompressed: larger ones are refused (they are parsed whole)

    @classmethod
    def from_config(cls, config: NodeConfig) -> SyncOptions:
        o = cls(outbox_max_rows=config.store.max_outbox)
        section = getattr(config.mqtt, "sync", None)
        if section is not None:
            for k in cls.__dataclass_fields__:
                if hasattr(section, k):
                    setattr(o, k, getattr(section, k))
        return o


def default_loader(config: NodeConfig, store: Store | None = None) -> CandidateLoader | None:
    """The real model loader (``edge.ranking.adapter``) pointed at a release directory, if installed.

    ``Ranker.load`` checks the manifest, sha256 and the interpreter's input shapes, so a
    wrong-shaped model raises here and the release is refused.
    """
    try:
        from edge.ranking.adapter import load_scorer
    except ImportError:
        return None

    def load(path: Path) -> Any:
        cfg = config.model_copy(update={"model": config.model.model_copy(update={"path": path})})
        return load_scorer(cfg, store=store)

    return load


class SyncRoom:
    name = "sync"

    def __init__(self, config: NodeConfig, store: Store, bus: Bus, *, recommender: Any = None,
                 loader: CandidateLoader | None = None, state: Callable[[], dict[str, Any]] | None = None,
                 options: SyncOptions | None = None, link_settings: LinkSettings | None = None) -> None:
        self.config = config
        self.store = store
        self.bus = bus
        self.recommender = recommender
        self.o = options or SyncOptions.from_config(config)
        self.state_fn = state
        self.topics = Topics(config.mqtt.topic_prefix, config.node.store_id, config.node.node_id)
        self.boot = uuid.uuid4().hex[:12]
        self.data_dir = Path(config.node.data_dir)
        self.loader = loader if loader is not None else default_loader(config, store)
        # chunk topics are not listened to for good: the release manager subscribes a kind's chunks while a
        # release that passed the checks at its announcement is staged (a refused one is never downloaded)
        subs = [t for t in self.topics.subscriptions() if "/chunk/" not in t]
        if self.o.homeassistant:
            subs.append(f"{self.o.homeassistant_prefix}/status")
        s = link_settings or settings_from_broker(
            config.mqtt.cloud, f"shelfcast-{config.node.store_id}-{config.node.node_id}",
            session_expiry_s=self.o.session_expiry_s, connack_timeout_s=self.o.connack_timeout_s,
            backoff_max_s=self.o.backoff_max_s)
        s.will_topic = self.topics.availability
        self.link = MqttLink(s, on_message=self._on_message, on_connected=self._on_connected,
                             on_disconnected=self._on_disconnected, on_publish=self._on_publish,
                             on_tick=self._tick, subscriptions=subs, name="sync-link")
        self.drainer = OutboxDrainer(
            store, self.link.publish, store_id=config.node.store_id, node_id=config.node.node_id, boot=self.boot,
            options=DrainOptions(batch_max_events=self.o.batch_max_events, batch_max_age_ms=self.o.batch_max_age_ms,
                                 max_message_bytes=self.o.max_message_bytes),
            max_packet=lambda: self.link.max_packet, receive_max=lambda: self.link.receive_max,
            clock=store.clock,
            on_error=self._error)
        self.canary = CanarySet(store)
        self.releases = ReleaseManager(
            self.data_dir, public_key=config.model.public_key, loader=self.loader,
            get_model=self._get_model, set_model=self._set_model, report=self._report, canary=self.canary,
            canary_options=CanaryOptions(k=max(10, config.model.k)), apply_snapshot=self._apply_snapshot,
            on_registered=self._registered, topics=self.topics, subscribe=self.link.subscribe,
            unsubscribe=self.link.unsubscribe, resubscribe=lambda f: self.link.subscribe(f, if_new=False),
            max_snapshot_bytes=self.o.max_snapshot_mb << 20)
        self.errors = 0
        self.evicted = int(store.meta_get("sync.evicted", "0") or 0)
        self._state: dict[str, Any] = {}
        self._state_payload = "{}"
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = time.monotonic()  # uptime: elapsed time, whatever the wall clock steps by
        self._seq0 = 0
        self._pending0 = 0
        self.queued_total: int | None = None  # set by stop(): outbox rows this run queued upstream

    # -- model access (the recommender's reference is the one that serves) ------------
    def _get_model(self) -> Any:
        return None if self.recommender is None else self.recommender.model

    def _set_model(self, model: Any) -> None:
        if self.recommender is not None:
            self.recommender.model = model  # one reference assignment: the hot swap

    def _registered(self, version: str, path: str, sha: str, status: str, active: bool, detail: str) -> None:
        self.store.register_model(version, path, sha, status, active=active, detail=detail)

    # -- lifecycle ---------------------------------------------------------------------
    def _outbox_seq(self) -> int:
        row = self.store.read().execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        return int(row[0]) if row else 0

    def queued(self) -> int:
        """Outbox rows queued upstream since this room started (everything the cloud will receive)."""
        self.store.flush()
        return self._outbox_seq() - self._seq0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()  # commands arrive on the link's thread; bus work goes here
        await asyncio.to_thread(self.store.flush)
        self._seq0 = self._outbox_seq()
        self._pending0 = self.store.outbox_pending()
        self.bus.subscribe(ShopperEvent, self.canary.observe)
        served = await asyncio.to_thread(self.releases.activate_on_boot)
        if served is not None:
            log.info("serving released model %s", served)
        if config_path := self.config.model.path:  # a model a technician put under data_dir/models stays
            self.releases.keep_models.add(Path(config_path))
        # before any release is handled (resume below): nothing unpacks, so leftover .tmp dirs go too
        await asyncio.to_thread(prune_models, self.releases.models_dir, self.releases.keep_models)
        self._refresh_state()
        self.releases.resume()
        self.link.start()
        self._task = asyncio.create_task(self._housekeep(), name="sync-housekeeping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.bus.unsubscribe(ShopperEvent, self.canary.observe)
        self.queued_total = await asyncio.to_thread(self._final_drain, 3.0 if self.link.connected.is_set() else 0.0)
        await asyncio.to_thread(self.link.stop, (self.topics.availability, "stopped"))
        await asyncio.to_thread(self.releases.close)
        try:
            self.canary.persist()
        except Exception:
            pass

    def _final_drain(self, timeout: float) -> int:
        """Drain until no new rows arrive meanwhile; returns the rows this run queued upstream
        (backlog found at start + rows queued since). Minus ``outbox_pending()``: what was sent."""
        deadline = time.monotonic() + timeout
        try:
            q = self.queued()
            while time.monotonic() < deadline:
                self.drain(max(0.1, deadline - time.monotonic()))
                q2 = self.queued()
                if q2 == q:
                    break
                q = q2
            return self._pending0 + q
        except Exception:
            return -1

    def drain(self, timeout: float) -> bool:
        """Wait (bounded) until the outbox is empty; partial batches leave at once meanwhile."""
        deadline = time.monotonic() + timeout
        self.drainer.flushing = True
        try:
            while time.monotonic() < deadline:
                try:
                    self.store.flush(timeout=max(0.1, deadline - time.monotonic()))
                except Exception:
                    return False
                if self.store.outbox_pending() == 0 and not self.drainer.inflight:
                    return True
                if not self.link.connected.is_set() and time.monotonic() + 0.2 > deadline:
                    return False
                time.sleep(0.05)
            return False
        finally:
            self.drainer.flushing = False

    async def _housekeep(self) -> None:
        last_state = last_canary = time.monotonic()
        last_summary: Any = self._state_summary()
        while True:
            await asyncio.sleep(2.0)
            try:  # on its own: a store that cannot write (full disk) must not stop the state going out
                res = await asyncio.wrap_future(evict(self.store, max_rows=self.o.outbox_max_rows,
                                                      max_age_s=self.o.outbox_max_age_s))
                n = res["aged"] + res["capped"]
                if n:
                    self.evicted += n
                    log.warning("outbox backlog over its caps: evicted %d oldest low-priority events "
                                "(%d in total)", n, self.evicted)
            except Exception as exc:
                log.warning("outbox eviction failed: %s", exc)
            try:
                now = time.monotonic()
                self._refresh_state()
                summary = self._state_summary()
                # every state_interval_s, and at once when the node's, a room's or a shelf's status changes
                if (now - last_state >= self.o.state_interval_s or summary != last_summary) \
                        and self.link.connected.is_set():
                    last_state = now
                    last_summary = summary
                    self.link.publish(self.topics.state, self._state_payload, qos=1, retain=True)
                if now - last_canary >= 60.0:
                    last_canary = now
                    self.canary.persist()
                    await asyncio.to_thread(self.releases.check_stalled)
            except Exception:
                log.exception("sync housekeeping failed")

    def _state_summary(self) -> Any:
        st = self._state
        return (st.get("status"), st.get("rooms"), st.get("shelves"))

    def _shelf_status(self, node: dict[str, Any]) -> dict[str, str]:
        """Each layout shelf: ok (its controller online), offline (seen, not online now), missing (never seen),
        starting (not seen yet, in the start-up grace), or disabled (no shelf room)."""
        room = node.get("rooms", {}).get("shelves")
        shelves = self.config.layout.shelves
        if not isinstance(room, dict) or room.get("status") == "disabled":
            return {s.id: "disabled" for s in shelves}
        ctrls = [c for c in (room.get("controllers") or {}).values() if isinstance(c, dict)]
        out = {}
        for s in shelves:
            mine = [c for c in ctrls
                    if c.get("shelf") == s.id or (s.controller and c.get("controller") == s.controller)]
            if any(c.get("online") for c in mine):
                out[s.id] = "ok"
            elif mine:
                out[s.id] = "offline"
            else:
                out[s.id] = "starting" if room.get("starting") else "missing"
        return out

    def _refresh_state(self) -> None:
        node: dict[str, Any] = {}
        if self.state_fn is not None:
            try:
                node = self.state_fn()
            except Exception as exc:
                node = {"status": "error", "detail": str(exc)}
        model = self._get_model()
        state = {
            "status": node.get("status", "ok"),
            "version": __version__,
            "store": self.topics.store,
            "node": self.topics.node,
            "boot": self.boot,
            "model": getattr(model, "version", None) or "fallback",
            "outbox_pending": self._pending(),
            "evicted": self.evicted,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "clock_unsynced": self.drainer.clock_unsynced(),  # NTP not synced yet: this node's t may be off
            "screens": {s.id: "ok" for s in self.config.layout.screens},
            "shelves": self._shelf_status(node),
            "rooms": {k: v.get("status") for k, v in node.get("rooms", {}).items() if isinstance(v, dict)},
            "t": time.time(),
        }
        self._state = state
        self._state_payload = json.dumps(state, separators=(",", ":"), default=str)

    def _state_now(self) -> str:
        """The cached state, stamped now (the link thread must not call into other rooms)."""
        st = {**self._state, "t": time.time(), "connects": self.link.stats["connects"],
              "model": getattr(self._get_model(), "version", None) or "fallback"}
        return json.dumps(st, separators=(",", ":"), default=str)

    def _pending(self) -> int:
        try:
            return self.store.outbox_pending()
        except Exception:
            return -1

    # -- link callbacks (link thread) ------------------------------------------------------
    def _on_connected(self, session_present: bool) -> None:
        self.drainer.reset()
        self.releases.on_connected(session_present)
        self.link.publish(self.topics.availability, "online", qos=1, retain=True)
        self.link.publish(self.topics.state, self._state_now(), qos=1, retain=True)
        if self.o.homeassistant:
            self._ha_discovery()
        log.info("cloud link up (%s, session %s)", self.link.s, "resumed" if session_present else "new")

    def _on_disconnected(self) -> None:
        self.drainer.reset()
        self.releases.on_disconnected()

    def _on_publish(self, mid: int, ok: bool, reason: str) -> None:
        self.drainer.on_publish(mid, ok, reason)

    def _tick(self) -> None:
        self.drainer.pump()

    def _ha_discovery(self) -> None:
        for topic, payload in discovery_messages(
                self.topics, prefix=self.o.homeassistant_prefix, version=__version__,
                screens=[s.id for s in self.config.layout.screens],
                shelves=[s.id for s in self.config.layout.shelves]):
            self.link.publish(topic, payload, qos=1, retain=True)

    def _on_message(self, topic: str, payload: bytes, msg: Any = None) -> None:
        if self.o.homeassistant and topic == f"{self.o.homeassistant_prefix}/status":
            if payload.strip() == b"online":
                self._ha_discovery()
            return
        kind, sub, index = self.topics.classify(topic)
        try:
            if kind == "manifest":
                assert sub is not None
                self.releases.on_manifest(sub, payload, source=topic)
            elif kind == "chunk":
                assert sub is not None and index is not None
                self.releases.on_chunk(sub, index, payload)
            elif kind == "delta":
                assert sub is not None
                self._on_delta(sub, payload)
            elif kind == "cmd":
                self._on_command(payload)
            elif kind == "config":
                self._on_config(payload)
            else:
                raise ValueError("no handler for this topic")
        except ValidationError as exc:
            self._error(topic, f"payload does not match its schema: {describe_error(exc)}")
        except (ReleaseError, ValueError, UnicodeDecodeError) as exc:
            self._error(topic, str(exc))
        except OSError as exc:  # staging on a full or failing disk: say so upstream, keep serving
            self._error(topic, f"cannot write to {self.data_dir}: {exc.strerror or exc}; free some space")

    # -- downstream handlers -------------------------------------------------------------------
    def _on_delta(self, kind: str, payload: bytes) -> None:
        model = DELTAS[kind].model_validate_json(payload)
        self._apply(kind, model)

    def _apply(self, kind: str, m: BaseModel) -> None:
        s = self.store
        if isinstance(m, CatalogueDelta | CatalogueSnapshot):
            items = m.upsert if isinstance(m, CatalogueDelta) else m.products
            s.upsert_products([Product(**p.model_dump()) for p in items])
        elif isinstance(m, PlanogramDelta):
            s.set_planogram([(e.shelf, e.slot, e.sku) for e in m.entries])
        elif isinstance(m, PlanogramSnapshot):
            keep = {(e.shelf, e.slot) for e in m.entries}
            entries: list[tuple[str, int, str | None]] = [(e.shelf, e.slot, e.sku) for e in m.entries]
            entries += [(sh, sl, None) for (sh, sl) in s.planogram() if (sh, sl) not in keep]
            s.set_planogram(entries)
        elif isinstance(m, StockDelta):
            if m.levels:
                s.set_stock(dict(m.levels))
            for sku, d in m.adjust.items():
                s.adjust_stock(sku, d)
        elif isinstance(m, StockSnapshot):
            s.set_stock(dict(m.levels))
        elif isinstance(m, ProfilesDelta | ProfilesSnapshot):
            if m.profiles:
                s.upsert_profiles([_profile(p) for p in m.profiles])
            if isinstance(m, ProfilesDelta) and m.delete:
                s.delete_profiles(m.delete)
        elif isinstance(m, PromotionsSnapshot):  # the whole plan: what it does not list is not promoted
            s.set_promotions([(e.sku, e.display, e.mailer, e.start, e.end) for e in m.entries])
        else:  # pragma: no cover - the schema tables and this switch go together
            raise ValueError(f"no handler for {kind}")

    def _apply_snapshot(self, kind: str, snap: BaseModel) -> None:
        self._apply(kind, snap)
        self.store.flush()

    def _on_command(self, payload: bytes) -> None:
        cmd = Command.model_validate_json(payload)

        def done(ok: bool, detail: str) -> None:
            self._enqueue(self.topics.cmd_result, {"type": "cmd_result", "id": uuid.uuid4().hex, "cmd": cmd.id,
                                                   "command": cmd.command, "ok": ok, "detail": detail,
                                                   "t": time.time()})

        if cmd.command == "rollback":
            fut = self.releases.rollback_async(str(cmd.args.get("reason", "on command")))
            fut.add_done_callback(lambda f: done(*f.result()) if f.exception() is None
                                  else done(False, str(f.exception())))
        elif cmd.command == "republish_state":
            self._refresh_state()
            self.link.publish(self.topics.availability, "online", qos=1, retain=True)
            self.link.publish(self.topics.state, self._state_payload, qos=1, retain=True)
            done(True, "state republished")
        elif cmd.command == "flush_outbox":
            self.drainer.flush_until = time.monotonic() + 10.0
            done(True, f"{self._pending()} events pending")
        elif cmd.command == "ping":
            done(True, "pong")
        elif cmd.command == "homeassistant_discovery":
            self._ha_discovery()
            done(True, "discovery published")
        elif cmd.command == "check_in":
            ev = self._check_in_event(cmd.args)
            if self._loop is None:
                raise ValueError("the node is not started; send the check-in again")
            self._loop.call_soon_threadsafe(self._check_in, ev, done)

    def _check_in_event(self, args: dict[str, Any]) -> CheckIn:
        """``check_in`` args: ``customer`` (the salted hash, as in profiles) and ``screen`` or ``session``."""
        customer, screen, session = args.get("customer"), args.get("screen"), args.get("session")
        if not is_customer_hash(customer):
            raise ValueError("check_in: args.customer must be the salted hash of the loyalty id (64 lowercase hex, "
                             "hash_customer(id, fusion.customer_salt) as in profiles), never the raw id")
        if screen is None and session is None:
            raise ValueError('check_in: give args.screen (the screen the shopper scanned at) or args.session')
        screens = {s.id for s in self.config.layout.screens}
        if screen is not None and (not isinstance(screen, str) or screen not in screens):
            raise ValueError(f"check_in: no screen {screen!r} on this node; known screens: {sorted(screens)}")
        if session is not None and not isinstance(session, str):
            raise ValueError("check_in: args.session must be a string")
        return CheckIn(customer=customer, session=session, screen=screen, t=time.time())

    def _check_in(self, ev: CheckIn, done: Callable[[bool, str], None]) -> None:
        """On the node's loop, as ``POST /api/checkin``: the session the screen serves, then a fresh set."""
        if ev.session is None and ev.screen is not None and self.recommender is not None:
            v = self.recommender.serving(ev.screen)
            ev = CheckIn(customer=ev.customer, session=v.session if v is not None else None, screen=ev.screen,
                         t=ev.t, id=ev.id)
        self.bus.publish(ev)
        if ev.session is not None and self.recommender is not None and self.recommender.check_in_refused(ev.id):
            # fusion refused it (an ended visit or another customer's, no screen: CheckInRefused); as the HTTP
            # 410 / 409, nothing was bound
            screens = ", ".join(s.id for s in self.config.layout.screens if s.kind != "shelf_display")
            named = self.recommender.visits.get(ev.session)
            why = ("is another customer's" if named is not None and not named.ended
                   and named.customer not in (None, ev.customer) else "has ended")
            done(False, f"visit {ev.session[:40]} {why}; check in again at the screen the shopper stands at: "
                        f'args {{"customer": ..., "screen": "<id>"}} (screens: {screens})')
            return
        bound = self.recommender.check_in_session(ev.id) if self.recommender is not None else None
        if ev.screen is not None and self.recommender is not None:
            self.bus.publish(self.recommender.refresh(ev.screen))
        done(True, f"session {bound or ev.session}" if bound or ev.session else
             f"{ev.screen} serves nobody now: fusion links the shopper within 3 m of it, or opens a visit there")

    RUNTIME_KEYS = ("logging.level", "mqtt.sync.batch_max_events", "mqtt.sync.batch_max_age_ms",
                    "mqtt.sync.state_interval_s")

    def _on_config(self, payload: bytes) -> None:
        upd = ConfigUpdate.model_validate_json(payload)
        bad = sorted(set(upd.values) - set(self.RUNTIME_KEYS))
        if bad:
            raise ValueError(f"config keys {bad} cannot change at runtime; allowed: {list(self.RUNTIME_KEYS)} "
                             "(others need a new config file and a restart)")
        v = upd.values
        level = v.get("logging.level")
        if level is not None and level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("logging.level must be DEBUG, INFO, WARNING or ERROR")
        checks = {"mqtt.sync.batch_max_events": (1, 10_000), "mqtt.sync.batch_max_age_ms": (0, 60_000),
                  "mqtt.sync.state_interval_s": (1, 86_400)}
        for key, (lo, hi) in checks.items():
            if key in v and (not isinstance(v[key], int | float) or isinstance(v[key], bool)
                             or not lo <= v[key] <= hi):
                raise ValueError(f"{key} must be a number between {lo} and {hi}")
        if level is not None:
            logging.getLogger().setLevel(level)
        if "mqtt.sync.batch_max_events" in v:
            self.drainer.o.batch_max_events = int(v["mqtt.sync.batch_max_events"])
        if "mqtt.sync.batch_max_age_ms" in v:
            self.drainer.o.batch_max_age_ms = int(v["mqtt.sync.batch_max_age_ms"])
        if "mqtt.sync.state_interval_s" in v:
            self.o.state_interval_s = float(v["mqtt.sync.state_interval_s"])
        self._enqueue(self.topics.cmd_result, {"type": "config_result", "id": uuid.uuid4().hex, "cmd": upd.id,
                                               "ok": True, "detail": f"applied {sorted(v)}", "t": time.time()})

    # -- upstream reports (through the durable outbox) -----------------------------------------
    def _enqueue(self, topic: str, obj: dict[str, Any]) -> None:
        try:
            self.store.enqueue(topic, json.dumps(obj, separators=(",", ":"), default=str), id=obj["id"],
                               priority=PRIORITY_REPORT)
        except Exception as exc:  # the store closing under us must not break a handler
            log.warning("cannot queue %s report: %s", topic, exc)

    def _error(self, topic: str, reason: str) -> None:
        self.errors += 1
        log.warning("rejected message on %s: %s", topic, reason)
        self._enqueue(self.topics.error, {"type": "sync_error", "id": uuid.uuid4().hex, "topic": topic,
                                          "reason": reason, "t": time.time()})

    def _report(self, kind: str, version: str, step: str, ok: bool, detail: str) -> None:
        (log.info if ok else log.warning)("release %s %s: %s %s", kind, version, step, detail)
        self._enqueue(self.topics.release_status, {"type": "release_status", "id": uuid.uuid4().hex, "kind": kind,
                                                   "version": version, "step": step, "ok": ok, "detail": detail,
                                                   "t": time.time()})

    def health(self) -> dict[str, Any]:
        link = self.link.health()
        return {
            "status": "ok" if link["connected"] else "degraded",
            "link": link,
            "outbox_pending": self._pending(),
            "evicted": self.evicted,
            "rejected": self.errors,
            "drain": self.drainer.health(),
            "releases": self.releases.health(),
            "clock_unsynced": self.drainer.clock_unsynced(),
        }


def _profile(p: ProfileIn) -> Profile:
    return Profile(customer=p.customer, demographics=dict(p.demographics), history=tuple(p.history),
                   visits=p.visits, updated=p.updated or time.time())

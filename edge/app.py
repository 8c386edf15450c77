"""The composition root: builds the rooms from one config, starts them in
order and stops them in mirror order (as Frigate's ``app.py`` does).

Start order: the store first, then every consumer before the producers that
feed it — recommend (ranking) → screens → signage → fusion → vision →
shelves → sync — so no event is published before its subscriber exists;
``stop()`` runs the list backwards (producers stop first). Fusion always runs (shelf-only without a
camera); vision runs with ``camera.enabled`` (a ``synthetic`` source needs
``node.synthetic_scene``, which the demo provides). Each room is an object with
``async start()``, ``async stop()`` and ``health() -> dict``; rooms talk only
through the bus (plain events) and the store's public API.

A room that fails to start because a link is missing (no serial port, no
camera, no broker) must not stop the node: rooms own their reconnect loops
and report the fault in ``health()``.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import logging
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from edge import __version__
from edge.bus import Bus
from edge.clock import SYSTEM
from edge.config import NodeConfig
from edge.events import RecommendationSet
from edge.recommend import Recommender
from edge.store import Product, Store, StoreDiskError, StoreError
from edge.systemd import Notifier

__all__ = ["Node", "Room", "ScreenBoard", "bundled_catalogue"]

log = logging.getLogger(__name__)
# how often housekeeping hands the C heap's free pages back to the OS (``Node.trim_heap_once``)
HEAP_TRIM_S = 60.0

DEFAULT_STOCK_UNITS = 24


class Room(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> dict[str, Any]: ...


def bundled_catalogue() -> list[Product]:
    """The catalogue sample shipped with the node (real Complete Journey products)."""
    text = resources.files("edge").joinpath("data/catalogue.csv").read_text()
    out = []
    for r in csv.DictReader(text.splitlines()):
        out.append(Product(
            sku=r["sku"], name=r["name"], department=r["department"], category=r["category"],
            product_type=r["product_type"], brand=r["brand"], price=float(r["price"]) if r["price"] else None,
            package_size=r["package_size"],
            unit_weight_g=float(r["unit_weight_g"]) if r["unit_weight_g"] else None,
            sales_heat=float(r["sales_heat"] or 0),
        ))
    return out


class ScreenBoard:
    """The latest set per screen, in memory. Signage renders from it; tests read it."""

    name = "screens"

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.latest: dict[str, RecommendationSet] = {}
        self.pushed = 0
        self.listeners: list[Callable[[RecommendationSet], None]] = []

    async def start(self) -> None:
        self.bus.subscribe(RecommendationSet, self.on_set)

    async def stop(self) -> None:
        self.bus.unsubscribe(RecommendationSet, self.on_set)

    def on_set(self, rs: RecommendationSet) -> None:
        prev = self.latest.get(rs.screen)
        if prev is not None and prev.seq > rs.seq:
            return  # stale: a newer set already went out
        self.latest[rs.screen] = rs
        self.pushed += 1
        for fn in self.listeners:
            fn(rs)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "screens": len(self.latest), "pushed": self.pushed}


class StoreRoom:
    """Opens the SQLite cache and seeds a fresh node from the bundled catalogue (cold start 3)."""

    name = "store"

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        c = config.store
        # demo_salt: check-ins queued by a run on the public demo salt never leave (Store._screen_checkins)
        self.store = Store(Path(config.node.data_dir) / "shelfcast.db", flush_interval_ms=c.flush_interval_ms,
                           retention_days=c.retention_days, max_events=c.max_events,
                           demo_salt=config.fusion.uses_demo_salt())

    async def start(self) -> None:
        delay = 1.0
        while True:  # a full disk at boot: say so and wait for space (never move the database aside, never exit)
            try:
                await asyncio.to_thread(self.store.open)
                break
            except StoreDiskError as exc:
                log.error("%s; retrying in %.0f s", exc, delay)
                # under systemd: the start job must not time out (TimeoutStartSec) and restart the node, with a
                # model load each time, while it only waits for space; `systemctl status` shows why it waits
                n = Notifier()
                n.notify(f"STATUS=waiting for disk space: {exc}", f"EXTEND_TIMEOUT_USEC={int((delay + 60) * 1e6)}")
                n.close()
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)
        if not self.store.products():
            catalogue = bundled_catalogue()
            self.store.upsert_products(catalogue)
            self.store.set_stock({p.sku: DEFAULT_STOCK_UNITS for p in catalogue})
        entries = [(sh.id, sl.slot, sl.sku) for sh in self.config.layout.shelves for sl in sh.slots]
        if entries:
            self.store.set_planogram(entries)
        try:
            await asyncio.to_thread(self.store.flush)
        except StoreError as exc:  # the disk refused the seed: the caches serve; store health says degraded
            log.error("could not write the catalogue/planogram to %s (%s); serving from memory", self.store.path, exc)

    async def stop(self) -> None:
        await asyncio.to_thread(self.store.close)

    def health(self) -> dict[str, Any]:
        return self.store.health()


class Node:
    """One ShelfCast node. ``await node.start()`` … ``await node.stop()``."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.bus = Bus()
        self.started_at: float | None = None
        self.store_room = StoreRoom(config)
        self.rooms: list[Room] = [self.store_room]
        self.recommender: Recommender | None = None
        self.screens = ScreenBoard(self.bus)
        self.signage: Any = None  # edge.signage.SignageRoom once built (HTTP, SSE, MQTT, shelf displays)
        self.sync: Any = None  # edge.sync.SyncRoom once built (only with mqtt.cloud.url)
        self.shelves: Any = None  # firmware_bridge.ShelfBridge once built (shelf controllers, displays)
        self.extra_shelf_ports: list[str] = []  # ports besides shelves.ports (the demo's simulated ones)
        self.fusion: Any = None  # edge.fusion.Fusion: ShelfEvent (+ tracks) -> ShopperEvent; always built
        self.vision: Any = None  # edge.vision.VisionRoom once built (camera.enabled)
        self.synthetic_scene: Any = None  # an edge.vision.SyntheticScene for camera.source "synthetic" (demo)
        self._housekeeping: asyncio.Task[None] | None = None
        self.heap_trims = 0  # trim_heap_once calls, and the RSS they returned
        self.heap_trimmed_mb = 0.0

    @property
    def store(self) -> Store:
        return self.store_room.store

    def _planogram(self, shelf: str, slot: int) -> tuple[str | None, float | None]:
        """(sku, unit weight g) for the shelf room's detector, from the store's planogram and catalogue."""
        sku = self.store.planogram_slot(shelf, slot)
        product = self.store.product(sku) if sku else None
        return sku, (product.unit_weight_g if product is not None else None)

    def _build_rooms(self) -> None:
        """Rooms that need an open store are built after it starts."""
        self.recommender = Recommender(self.config, self.store, self.bus,
                                       model=load_model_scorer(self.config, self.store))
        # popularity per zone x hour learns only picks made while the node's clock is synced (edge.ranking.fallback)
        self.recommender.fallback.watch_clock(SYSTEM)
        # Consumers start before the producers that feed them, so nothing is published into the void
        # while the node comes up; stop() runs this list backwards, so producers stop first and the
        # last events still find their consumers on the way down.
        self.rooms.append(self.recommender)
        self.rooms.append(self.screens)
        if self.config.signage.enabled:
            from edge.signage import SignageRoom

            self.signage = SignageRoom(
                self.config, self.store, self.bus, self.screens, self.recommender, health=self.health,
                displays=lambda: self.shelves)
            self.rooms.append(self.signage)
        if self.config.shelves.enabled:  # built before fusion so signage can reach the shelf displays
            from firmware_bridge import ShelfBridge

            self.shelves = ShelfBridge(self.config, self.bus.publish, planogram=self._planogram,
                                       ports=self.extra_shelf_ports)
        self._build_vision_and_fusion()
        if self.shelves is not None:  # shelf controllers over serial: ShelfEvent onto the bus
            self.rooms.append(self.shelves)
        if self.config.mqtt.cloud.url:  # cloud sync: outbox up; releases, deltas, commands down (edge/sync)
            from edge.sync.room import SyncRoom

            self.sync = SyncRoom(self.config, self.store, self.bus, recommender=self.recommender, state=self.health)
            self.rooms.append(self.sync)

    def _build_vision_and_fusion(self) -> None:
        """Camera (optional) -> TrackUpdate/ZoneEvent; fusion attributes each ShelfEvent to a shopper's
        session (anonymous per-shelf sessions without a working camera) and publishes ShopperEvent."""
        from edge.fusion import Fusion

        # a visit fusion ends is served by no screen from then on (Recommender.on_session)
        self.fusion = Fusion(self.config, self.bus.publish, bus=self.bus,
                             on_session=self.recommender.on_session if self.recommender is not None else None)
        self.rooms.append(self.fusion)  # before the camera and shelves that feed it
        cam = self.config.camera
        if cam.enabled and cam.source == "synthetic" and self.synthetic_scene is None:
            log.info("camera.source is 'synthetic' but no scene was given (only `shelfcast demo` makes one); "
                     "camera off, fusion runs shelf-only")
        elif cam.enabled:
            from edge.vision import VisionRoom

            self.vision = VisionRoom(self.config, self.bus.publish, self.bus.publish,
                                     on_status=self.fusion.set_camera_status, scene=self.synthetic_scene)
            self.rooms.append(self.vision)
            if self.recommender is not None:
                self.recommender.locator = self.fusion  # screens serve the nearest tracked shopper
        self.fusion.camera_ok = False  # until the vision room reports frames

    async def start(self) -> None:
        self.started_at = time.time()
        await self.store_room.start()
        self._build_rooms()
        for room in self.rooms[1:]:
            log.info("starting %s", room.name)
            await room.start()
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")
        # What start-up built (catalogue, model tables, config, imported modules) lives as long as the node:
        # freeze it out of the cyclic collector, else every full collection walks it all and stalls the loop
        # (measured in `bench e2e`: 60–100 ms pauses, the bulk of the push p99). stop() unfreezes.
        gc.collect()
        gc.freeze()

    async def stop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            try:
                await self._housekeeping
            except asyncio.CancelledError:
                pass
        for room in reversed(self.rooms):
            log.info("stopping %s", room.name)
            try:
                await room.stop()
            except Exception:
                log.exception("room %s failed to stop cleanly", room.name)
        gc.unfreeze()  # a process that builds several nodes (tests) gets its garbage collected again

    async def _housekeep(self) -> None:
        last_trim = time.monotonic()
        while True:
            await asyncio.sleep(5.0)
            self.housekeep_once()
            if time.monotonic() - last_trim >= HEAP_TRIM_S:
                last_trim = time.monotonic()
                await asyncio.to_thread(self.trim_heap_once)

    def trim_heap_once(self) -> int | None:
        """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``); bytes returned, None without it.

        Why: requests allocate and free many [V]-long numpy arrays (80 kB each with the 20,000-item model), which
        glibc serves from its heap and keeps when freed. In the session-13 soak of an installed node with model v7,
        35 MB of the 262 MB RSS at the end was such free heap. Called from housekeeping every ``HEAP_TRIM_S`` on a
        worker thread (~1 ms; a thread that mallocs meanwhile may wait for the arena being trimmed)."""
        from edge.sync.release import return_freed_memory

        freed = return_freed_memory()
        self.heap_trims += 1
        if freed:
            self.heap_trimmed_mb += freed / 2**20
        return freed

    def housekeep_once(self) -> None:
        """Every 5 s: end idle visits; let a synced catalogue change reach the ranker."""
        if self.recommender is not None:
            self.recommender.expire_visits(self.config.fusion.session_idle_s)
            try:
                self.recommender.refresh_catalogue()
            except Exception:  # housekeeping: a bad catalogue row must not stop the loop; ranking keeps the old one
                log.exception("could not refresh the ranker's catalogue")

    def health(self) -> dict[str, Any]:
        rooms = {}
        for r in self.rooms:
            try:
                rooms[r.name] = r.health()
            except Exception as exc:  # health must never take the node down
                rooms[r.name] = {"status": "error", "detail": str(exc)}
        if self.recommender is not None and "recommend" in rooms:  # picks not learned while the clock is unsynced
            rooms["recommend"].update(self.recommender.fallback.health())
        statuses = {str(h.get("status", "ok")) for h in rooms.values()}
        overall = "failed" if "failed" in statuses else "degraded" if statuses - {"ok", "closed"} else "ok"
        return {
            "status": overall,
            "version": __version__,
            "store_id": self.config.node.store_id,
            "node_id": self.config.node.node_id,
            "uptime_s": round(time.time() - (self.started_at or time.time()), 1),
            "rooms": rooms,
            "bus": self.bus.health(),
            "process": {**_process_health(), "heap_trims": self.heap_trims,
                        "heap_trimmed_mb": round(self.heap_trimmed_mb, 1)},
        }


def _process_health() -> dict[str, int | None]:
    """Gauges a long run watches for leaks (``shelfcast bench soak``): asyncio tasks (None off the loop), threads."""
    import threading

    try:
        tasks: int | None = len(asyncio.all_tasks())
    except RuntimeError:  # asked from another thread (no running loop there)
        tasks = None
    return {"asyncio_tasks": tasks, "threads": threading.active_count()}


def load_model_scorer(config: NodeConfig, store: Store | None = None) -> Any:
    """The model ranker adapter, or None (fallback only) when no model can be loaded.

    With ``store`` the ranker recommends only products of the node's catalogue (a screen cannot show
    a name or price for anything else) and sees live stock."""
    try:
        from edge.ranking.adapter import load_scorer
    except ImportError:
        return None
    try:
        return load_scorer(config, store=store)
    except Exception as exc:
        log.warning("no model loaded (%s); serving popularity by zone and hour", exc)
        return None

"""``shelfcast demo``: a whole simulated store on embedded defaults.

The bundled layout (``edge/data/demo_store.yaml``: four zones, eight smart
shelves, five screens) and catalogue sample (real Complete Journey products)
start a real node. Simulated shoppers enter, walk between shelves, pick items
(weighted by real sales heat and a personal taste) and sometimes put one back;
their actions flow through the node exactly as a real store's would, and the
screens' recommendation sets change as they shop.

At exit (``--duration`` elapsed, Ctrl-C or SIGTERM) one JSON summary line is
printed on stdout: ``events``, ``recommendations``, ``pushed``,
``outbox_pending`` and more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.app import Node
from edge.config import NodeConfig, parse_config
from edge.events import RecommendationSet, ShelfEvent, ShopperEvent
from edge.store import StoreError

if TYPE_CHECKING:
    from edge.vision.scene import Pick

__all__ = ["DemoOptions", "ShopperSim", "demo_config", "run_demo"]


@dataclass(frozen=True)
class DemoOptions:
    duration: float | None = None  # seconds; None runs until interrupted
    seed: int = 0
    data_dir: Path | None = None
    port: int | None = None
    shoppers: int = 6
    action_interval_s: float = 1.5  # mean seconds between one shopper's actions
    quiet: bool = False
    cloud_broker: str | None = None
    drain_timeout_s: float = 30.0  # with a cloud broker: how long the summary waits for the outbox to drain


def demo_config(opts: DemoOptions, data_dir: Path) -> NodeConfig:
    text = resources.files("edge").joinpath("data/demo_store.yaml").read_text()
    cfg = parse_config(text, "edge/data/demo_store.yaml")
    raw = cfg.model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(data_dir)
    if opts.port is not None:
        raw["signage"]["port"] = opts.port
    else:  # no --port: still serve (a free port), never clash with a running node on the configured one
        raw["signage"]["port"] = 0
    if opts.cloud_broker is not None:
        raw["mqtt"]["cloud"]["url"] = opts.cloud_broker
    raw["store"]["flush_interval_ms"] = 50
    return NodeConfig.model_validate(raw)


@dataclass
class _Shopper:
    session: str
    taste: dict[str, float]
    picks_left: int
    next_t: float
    shelf: str | None = None
    basket: list[tuple[str, str, int]] = field(default_factory=list)  # (shelf, sku, slot)


@dataclass(frozen=True, slots=True)
class Action:
    """What one simulated shopper does; the ground truth for tests."""

    session: str
    shelf: str
    slot: int
    sku: str
    zone: str
    delta_units: int
    t: float


class ShopperSim:
    """Shoppers arrive, shop a few shelves and leave. Deterministic for a seed."""

    def __init__(self, config: NodeConfig, heat: dict[str, float], *, n: int = 6, seed: int = 0,
                 action_interval_s: float = 1.5) -> None:
        self.rng = random.Random(seed)
        self.config = config
        self.n = n
        self.interval = action_interval_s
        self.shelves = [s for s in config.layout.shelves if s.slots]
        self.zone_of_shelf = {s.id: s.zone for s in self.shelves}
        self.heat = heat
        self.categories = sorted({s.zone for s in self.shelves})
        self.shoppers: list[_Shopper] = []
        self._next_id = 0
        self.visits = 0

    def _new_shopper(self, now: float) -> _Shopper:
        self._next_id += 1
        self.visits += 1
        taste = {z: self.rng.lognormvariate(0, 1.0) for z in self.categories}
        return _Shopper(session=f"visit-{self._next_id:05d}", taste=taste, picks_left=self.rng.randint(3, 8),
                        next_t=now + self.rng.expovariate(1 / self.interval))

    def step(self, now: float) -> list[Action]:
        while len(self.shoppers) < self.n:
            self.shoppers.append(self._new_shopper(now))
        out: list[Action] = []
        for sh in list(self.shoppers):
            if now < sh.next_t:
                continue
            sh.next_t = now + self.rng.expovariate(1 / self.interval)
            if sh.picks_left <= 0:
                self.shoppers.remove(sh)
                continue
            if sh.basket and self.rng.random() < 0.08:  # put one back where it came from
                back_shelf, sku, back_slot = sh.basket.pop(self.rng.randrange(len(sh.basket)))
                out.append(Action(sh.session, back_shelf, back_slot, sku, self.zone_of_shelf[back_shelf], +1, now))
                continue
            if sh.shelf is None or self.rng.random() < 0.5:  # walk to a shelf in a zone they like
                weights = [sh.taste[s.zone] for s in self.shelves]
                sh.shelf = self.rng.choices(self.shelves, weights)[0].id
            shelf = next(s for s in self.shelves if s.id == sh.shelf)
            shelf_id: str = shelf.id
            slots = [sl for sl in shelf.slots if sl.sku]
            w = [1.0 + self.heat.get(sl.sku or "", 0.0) ** 0.5 for sl in slots]
            slot = self.rng.choices(slots, w)[0]
            units = 2 if self.rng.random() < 0.1 else 1
            assert slot.sku is not None
            sh.basket.append((shelf_id, slot.sku, slot.slot))
            sh.picks_left -= 1
            out.append(Action(sh.session, shelf.id, slot.slot, slot.sku, shelf.zone, -units, now))
        return out


async def run_demo(opts: DemoOptions) -> dict[str, Any]:
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if opts.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="shelfcast-demo-")
        data_dir = Path(tmp.name)
    else:
        data_dir = opts.data_dir
    config = demo_config(opts, data_dir)
    node = Node(config)
    scene = _synthetic_scene(config, opts)
    node.synthetic_scene = scene  # camera.source "synthetic": the vision room films simulated shoppers
    shelves = None
    if config.shelves.enabled:  # simulated controllers: each pick travels as bytes over a pty
        from firmware_bridge.demo_shelves import DemoShelves

        shelves = DemoShelves(config, seed=opts.seed)
        node.extra_shelf_ports = shelves.ports
    t0 = time.monotonic()
    store_error: str | None = None
    await node.start()
    if node.recommender is not None:  # a simulation: learn its picks whatever the host's NTP state
        from edge.clock import SIMULATED

        node.recommender.fallback.watch_clock(SIMULATED)
    truth = _GroundTruthBus(node.bus)
    if shelves is not None:
        # fusion attributes the driver's ShelfEvents; the simulator's own attribution is only ground truth
        shelves.attach(truth if node.fusion is not None else node.bus)
    camera_picks = node.vision is not None and scene is not None
    if camera_picks:
        # shoppers come from the camera scene: when one stops at a shelf and picks, that shelf reports it
        def on_pick(p: Pick) -> None:
            sh = shelf_by_id.get(p.shelf)
            if sh is None or not p.sku:
                return
            a = Action(f"shopper-{p.shopper:05d}", p.shelf, p.slot, p.sku, sh.zone, -1, p.t)
            truth.picks += 1
            if shelves is not None:
                shelves.act(a)
            else:
                node.bus.publish(ShelfEvent(shelf=a.shelf, slot=a.slot, sku=a.sku, delta_units=-1, t=a.t))

        shelf_by_id = {sh.id: sh for sh in config.layout.shelves}
        node.vision.on_pick = on_pick
    heat = {p.sku: p.sales_heat for p in node.store.products().values()}
    sim = ShopperSim(config, heat, n=opts.shoppers, seed=opts.seed, action_interval_s=opts.action_interval_s)
    names = {p.sku: p.name for p in node.store.products().values()}
    changes = 0
    last_shown: dict[str, tuple[str, ...]] = {}

    def show(rs: RecommendationSet) -> None:
        nonlocal changes
        skus = tuple(i.sku for i in rs.items)
        if last_shown.get(rs.screen) != skus:
            changes += 1
            last_shown[rs.screen] = skus
            if not opts.quiet:
                top = ", ".join(i.name for i in rs.items[:3])
                print(f"[{rs.screen}] {rs.session or 'idle'}: {top} … ({rs.model_version})", file=sys.stderr)

    node.screens.listeners.append(show)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if not opts.quiet:
        where = f" — screens at http://{config.signage.host}:{config.signage.port}/" if opts.port else ""
        print(f"ShelfCast demo: {len(config.layout.shelves)} shelves, {len(config.layout.screens)} screens, "
              f"{len(heat)} products{where}; Ctrl-C to stop", file=sys.stderr)
    actions = 0
    try:
        while not stop.is_set():
            if opts.duration is not None and time.monotonic() - t0 >= opts.duration:
                break
            now = time.time()
            for a in ([] if camera_picks else sim.step(now)):
                actions += 1
                if shelves is not None:
                    shelves.act(a)
                    continue
                node.bus.publish(ShopperEvent(session=a.session, sku=a.sku,
                                              action="pick" if a.delta_units < 0 else "put", zone=a.zone,
                                              units=abs(a.delta_units), shelf=a.shelf, slot=a.slot, t=a.t))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        health = node.health()
        try:
            await asyncio.to_thread(node.store.flush)
        except StoreError as exc:  # the data dir filled up: the summary says so, no traceback
            store_error = f"{exc}: free space in {data_dir} or run the demo with another --data-dir"
        if node.sync is not None:  # a cloud broker is configured: wait (bounded) for the outbox to drain
            await asyncio.to_thread(node.sync.drain, opts.drain_timeout_s)
        outbox = node.store.outbox_pending()
        rec = node.recommender
        await node.stop()
        queued_upstream = node.sync.queued_total if node.sync is not None else None  # what went upstream
        if shelves is not None:
            shelves.close()
        if tmp is not None:
            tmp.cleanup()
    elapsed = time.monotonic() - t0
    stats = rec.stats if rec is not None else {}
    return {
        "events": stats.get("events", 0) if queued_upstream is None else queued_upstream,
        "recommendations": stats.get("recommendations", 0),
        "pushed": node.screens.pushed,
        "outbox_pending": outbox,
        "screen_changes": changes,
        "shoppers": scene.visitors if camera_picks else sim.visits,
        "actions": truth.picks if camera_picks else actions,
        "model_version": health["rooms"].get("recommend", {}).get("model") or "fallback",
        "duration_s": round(elapsed, 2),
        "events_per_s": round(stats.get("events", 0) / elapsed, 2) if elapsed else 0.0,
        "status": health["status"],
        "shelf_events": shelves.stats["shelf_events"] if shelves is not None else 0,
        "names_shown": len({s for v in last_shown.values() for s in v if s in names}),
        "camera": health["rooms"].get("vision", {}).get("status", "off"),
        "camera_picks": truth.picks,
        "fusion_attributed": health["rooms"].get("fusion", {}).get("attributed", 0),
        "fusion_unattributed": health["rooms"].get("fusion", {}).get("unattributed", 0),
        **({"store_error": store_error} if store_error else {}),
    }


class _GroundTruthBus:
    """What the shelf simulator knows (who really picked) is counted, not published: fusion decides."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.truth = 0
        self.picks = 0

    def subscribe(self, event_type: Any, handler: Any) -> None:
        self.bus.subscribe(event_type, handler)

    def unsubscribe(self, event_type: Any, handler: Any) -> None:
        self.bus.unsubscribe(event_type, handler)

    def publish(self, event: Any) -> None:
        self.truth += 1


def _synthetic_scene(config: NodeConfig, opts: DemoOptions) -> Any:
    """The camera's simulated shoppers (camera.source "synthetic"), busier than the benchmark's."""
    cam = config.camera
    if not cam.enabled or cam.source != "synthetic":
        return None
    from edge.vision import SyntheticScene

    return SyntheticScene(config.layout, n_shoppers=opts.shoppers, seed=opts.seed, width=cam.width,
                          height=cam.height, t0=time.time(), stop_s=(2.5, 6.0), picks_per_stop=(1, 3),
                          pick_probability=0.95, start_at_shelves=True)


def main(opts: DemoOptions) -> int:
    summary = asyncio.run(run_demo(opts))
    sys.stdout.write(json.dumps(summary, separators=(",", ":")) + "\n")
    if summary.get("store_error"):
        sys.stderr.write(f"error: the demo could not save its last events: {summary['store_error']}\n")
        return 1
    return 0

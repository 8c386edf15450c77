"""The demo's shelves: every simulated shopper's pick travels as bytes over a pty.

``shelfcast demo`` has no camera, so it knows who picked what; the real path
is still exercised end to end: the shopper's action becomes a weight change in
the controller simulator, SAMPLES frames cross a real pty, the node's
``ShelfBridge`` detects the change and publishes a ``ShelfEvent``; this module
then attributes that event to the shopper whose action caused it (standing in
for camera fusion) and publishes the ``ShopperEvent``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from edge.config import NodeConfig
from edge.events import ShelfEvent, ShopperEvent
from firmware_bridge.sim import SimulatedStore

__all__ = ["DemoShelves"]

log = logging.getLogger("shelfcast.demo")

GAP_S = 1.0  # between two interactions on the same slot, so they are not one long one


class _Action(Protocol):
    @property
    def session(self) -> str: ...

    @property
    def shelf(self) -> str: ...

    @property
    def slot(self) -> int: ...

    @property
    def sku(self) -> str: ...

    @property
    def zone(self) -> str: ...

    @property
    def delta_units(self) -> int: ...


class _Bus(Protocol):
    def subscribe(self, event_type: Any, handler: Any) -> None: ...

    def unsubscribe(self, event_type: Any, handler: Any) -> None: ...

    def publish(self, event: Any) -> None: ...


@dataclass
class _Pending:
    action: Any
    due: float


class DemoShelves:
    """One simulated controller per layout shelf (its ``controller`` id), stocked from the catalogue."""

    def __init__(self, config: NodeConfig, seed: int = 0, stock: int = 40) -> None:
        from edge.app import bundled_catalogue

        weights = {p.sku: p.unit_weight_g for p in bundled_catalogue()}
        self.sim = SimulatedStore(seed=seed)
        self.controller_of: dict[str, str] = {}
        for sh in config.layout.shelves:
            if not sh.controller or not sh.slots:
                continue
            n = max(s.slot for s in sh.slots) + 1
            unit = [float(weights.get(next((s.sku for s in sh.slots if s.slot == i), None) or "") or 250.0)
                    for i in range(n)]
            self.sim.add_controller(sh.controller, slot_count=n, unit_g=unit, stock=[stock] * n)
            self.controller_of[sh.id] = sh.controller
        self.sim.start()
        self.ports = [self.sim.port(c) for c in self.controller_of.values()]
        self._pending: dict[tuple[str, int], deque[_Pending]] = {}
        self._busy: dict[tuple[str, int], float] = {}
        self._bus: _Bus | None = None
        self.stats = {"actions": 0, "shelf_events": 0, "attributed": 0, "unattributed": 0}

    def attach(self, bus: _Bus) -> None:
        self._bus = bus
        bus.subscribe(ShelfEvent, self._on_shelf)

    def act(self, a: _Action) -> None:
        """Do the shopper's action on the simulated shelf (never overlapping another on that slot)."""
        cid = self.controller_of.get(a.shelf)
        if cid is None:
            return
        key = (a.shelf, a.slot)
        now = time.monotonic()
        delay = max(0.0, self._busy.get(key, 0.0) - now)
        c = self.sim.controllers[cid]
        units = abs(a.delta_units)
        if a.delta_units < 0 and c.physics.units[a.slot] - units < 5:
            tr = self.sim.put(cid, a.slot, 30, delay=delay)  # restock first (an unattributed put)
            delay += tr.t1 - tr.t0 + GAP_S
        if a.delta_units < 0:
            tr = self.sim.pick(cid, a.slot, units, delay=delay)
        else:
            tr = self.sim.put(cid, a.slot, units, delay=delay)
        self._busy[key] = now + delay + (tr.t1 - tr.t0) + GAP_S
        self._pending.setdefault(key, deque()).append(_Pending(a, now + delay))
        self.stats["actions"] += 1

    def _on_shelf(self, ev: ShelfEvent) -> None:
        self.stats["shelf_events"] += 1
        q = self._pending.get((ev.shelf, ev.slot))
        match = None
        if q:
            for p in q:
                if (p.action.delta_units < 0) == (ev.delta_units < 0):
                    match = p
                    break
        if match is None or q is None:
            self.stats["unattributed"] += 1  # a restock, or noise
            return
        q.remove(match)
        a = match.action
        self.stats["attributed"] += 1
        if self._bus is not None:
            self._bus.publish(ShopperEvent(session=a.session, sku=ev.sku or a.sku, action=ev.action, zone=a.zone,
                                           units=ev.units, shelf=ev.shelf, slot=ev.slot, t=ev.t))

    def close(self) -> None:
        if self._bus is not None:
            self._bus.unsubscribe(ShelfEvent, self._on_shelf)
            self._bus = None
        self.sim.stop()

"""The shelf-bridge set-up the serial tests share (real ptys, simulated controllers): the ``rig`` fixture.

- ``rig.UNITS``: the unit weights (g) of the four slots of ``ctrl-a``.
- ``rig.config(ports, **shelves)``: a node config with one shelf ``shelf-a`` (controller ``ctrl-a``, slots 0-3 =
  ``sku-0``..``sku-3``) on ``ports``; ``shelves`` go into the ``shelves`` section.
- ``rig.planogram(shelf, slot)``: the (sku, unit g) the bridge asks for.
- ``rig.started(sim, events, **shelves)``: a ``ShelfBridge`` (not yet started) on every port of ``sim``,
  appending its shelf events to ``events``.
- ``await rig.until(cond, timeout=15.0)``: poll ``cond`` on the event loop; AssertionError when it never holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from edge.config import NodeConfig, default_config
from edge.events import ShelfEvent
from firmware_bridge.room import ShelfBridge
from firmware_bridge.sim import SimulatedStore

UNITS = [100.0, 250.0, 400.0, 60.0]


def config(ports: list[str], **shelves: Any) -> NodeConfig:
    return default_config(
        layout={
            "zones": [{"id": "z", "polygon": [[0, 0], [4, 0], [4, 4]]}],
            "shelves": [{"id": "shelf-a", "zone": "z", "position": [1, 1], "controller": "ctrl-a",
                         "slots": [{"slot": i, "sku": f"sku-{i}"} for i in range(4)]}],
        },
        shelves={"ports": [{"port": p} for p in ports], **shelves},
    )


def planogram(shelf: str, slot: int) -> tuple[str | None, float | None]:
    return (f"sku-{slot}", UNITS[slot]) if shelf == "shelf-a" else (None, UNITS[slot])


async def until(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    """Generous timeouts: these are correctness checks, not speed checks (CI machines are busy)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def started(sim: SimulatedStore, events: list[ShelfEvent], **shelves: Any) -> ShelfBridge:
    ports = [sim.port(cid) for cid in sim.controllers]
    return ShelfBridge(config(ports, **shelves), events.append, planogram, startup_grace_s=0.0)


@pytest.fixture(scope="session")
def rig() -> Any:
    return SimpleNamespace(UNITS=UNITS, config=config, planogram=planogram, until=until, started=started)

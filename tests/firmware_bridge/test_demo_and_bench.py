"""The demo's path (shopper action -> pty bytes -> ShelfBridge -> ShopperEvent) and the bench command."""

from __future__ import annotations

import asyncio
import json
import time
from importlib import resources
from typing import Any

import pytest

from edge.bus import Bus
from edge.cli import main as cli_main
from edge.config import parse_config
from edge.events import ShelfEvent, ShopperEvent
from firmware_bridge.demo_shelves import DemoShelves
from firmware_bridge.room import ShelfBridge


class Act:
    def __init__(self, session: str, shelf: str, slot: int, sku: str, delta: int) -> None:
        self.session, self.shelf, self.slot, self.sku, self.zone = session, shelf, slot, sku, "dairy"
        self.delta_units, self.t = delta, time.time()


def test_demo_shelf_actions_come_back_as_shopper_events_over_ptys() -> None:
    config = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text())
    shelf = config.layout.shelves[0]
    sku0 = shelf.slots[0].sku or ""
    sku1 = shelf.slots[1].sku or ""

    async def main() -> tuple[list[ShopperEvent], list[ShelfEvent], dict[str, Any]]:
        bus = Bus()
        shopper: list[ShopperEvent] = []
        raw: list[ShelfEvent] = []
        bus.subscribe(ShopperEvent, shopper.append)
        bus.subscribe(ShelfEvent, raw.append)
        shelves = DemoShelves(config, seed=2)
        bridge = ShelfBridge(config, bus.publish, ports=shelves.ports)
        await bridge.start()
        shelves.attach(bus)
        try:
            deadline = time.monotonic() + 20
            while bridge.health()["online"] < len(shelves.ports) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            shelves.act(Act("visit-1", shelf.id, 0, sku0, -1))
            shelves.act(Act("visit-2", shelf.id, 1, sku1, -1))
            shelves.act(Act("visit-1", shelf.id, 0, sku0, +1))  # put back: waits for the pick to finish
            deadline = time.monotonic() + 30
            while len(shopper) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return shopper, raw, bridge.health()
        finally:
            await bridge.stop()
            shelves.close()

    shopper, raw, health = asyncio.run(main())
    assert health["online"] == len(config.layout.shelves) and health["missing"] == []
    got = [(e.session, e.shelf, e.slot, e.sku, e.action, e.units) for e in shopper]
    assert sorted(got) == sorted([("visit-1", shelf.id, 0, sku0, "pick", 1), ("visit-2", shelf.id, 1, sku1, "pick", 1),
                                  ("visit-1", shelf.id, 0, sku0, "put", 1)])
    assert all(e.controller == shelf.controller for e in raw)


@pytest.mark.slow
def test_bench_serial_json_has_the_issue_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", "serial", "--json", "--shelf-hours", "0.5", "--pty-seconds", "8",
                     "--frames", "3000"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("frames_per_s", "event_latency_p50_us", "event_latency_p99_us", "pick_detection_recall",
                "unit_count_accuracy", "false_events_per_shelf_hour"):
        assert isinstance(res[key], int | float), key
    assert res["frames_per_s"] > 0 and res["pty_picks"] > 0 and res["pty_events_timed"] > 0
    assert 0 < res["event_latency_p50_us"] <= res["event_latency_p99_us"]
    assert res["pick_detection_recall"] >= res["unit_count_accuracy"] > 0.9

"""The retained ``state`` topic tells the truth about faults, at once: a pulled shelf cable (real pty via the
controller simulator) and a full data_dir (a real, really full 2 MB tmpfs), with a real mosquitto."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.config import NodeConfig
from edge.events import ShopperEvent
from firmware_bridge.room import ShelfBridge
from firmware_bridge.sim import SimulatedStore

STATE = "shelfcast/v1/s1/node-1/state"
UNITS = [100.0, 250.0, 400.0, 60.0]


@pytest.fixture
def wait_state(mosquitto: Any, retained: Any) -> Callable[..., dict[str, Any]]:
    """``wait_state(pred, timeout=15.0)``: poll the retained state until ``pred`` holds; returns it."""

    def wait(pred: Any, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            raw = retained(mosquitto.port, STATE, 1.0)
            st = json.loads(raw) if raw else {}
            if st and pred(st):
                return st
            time.sleep(0.2)
        raise AssertionError(f"state never matched; last: {st}")

    return wait


def config(url: str, data_dir: Path, ports: list[str]) -> NodeConfig:
    return NodeConfig.model_validate({
        "node": {"data_dir": str(data_dir), "store_id": "s1", "node_id": "node-1"},
        "mqtt": {"cloud": {"url": url}},  # state_interval_s stays 60 s: a change must not wait for it
        "signage": {"enabled": False},
        "layout": {
            "zones": [{"id": "z", "polygon": [[0, 0], [4, 0], [4, 4]]}],
            "shelves": [{"id": "shelf-a", "zone": "z", "position": [1, 1], "controller": "ctrl-a",
                         "slots": [{"slot": i, "sku": f"sku-{i}"} for i in range(4)]}],
        },
        "shelves": {"enabled": True, "ports": [{"port": p} for p in ports], "reconnect_max_s": 0.2},
    })


def test_a_pulled_shelf_cable_shows_in_the_state_topic_at_once(mosquitto: Any, start_node: Any,
                                                               tmp_path: Path, wait_state: Any) -> None:
    """Old code: every layout shelf was "ok" in the state topic (and so in Home Assistant), always."""
    with SimulatedStore(seed=11) as sim:
        sim.add_controller("ctrl-a", slot_count=4, unit_g=UNITS)
        cfg = config(mosquitto.url, tmp_path / "node", [sim.port("ctrl-a")])
        rooms: dict[str, Any] = {}
        node = start_node(cfg, state=lambda: {"status": "ok", "rooms": {k: r.health() for k, r in rooms.items()}})
        br = ShelfBridge(cfg, lambda e: None, startup_grace_s=0.0)
        node.run(br.start())
        rooms["shelves"] = br
        try:
            wait_state(lambda st: st["shelves"] == {"shelf-a": "ok"})
            sim.unplug("ctrl-a")
            st = wait_state(lambda st: st["shelves"]["shelf-a"] != "ok")
            assert st["shelves"] == {"shelf-a": "offline"} and st["rooms"]["shelves"] == "degraded", st
            sim.replug("ctrl-a")
            wait_state(lambda st: st["shelves"] == {"shelf-a": "ok"})
        finally:
            node.run(br.stop())


def test_a_full_data_dir_shows_in_the_state_topic_at_once(mosquitto: Any, start_node: Any, tiny_disk: Path,
                                                           fill_disk: Callable[[Path], Path], wait_state: Any) -> None:
    """Old code: the housekeeping's outbox eviction failed on the full disk first, which skipped the state
    refresh and publish (a traceback every 2 s instead), and a change waited for state_interval_s anyway."""
    cfg = config(mosquitto.url, tiny_disk, [])
    holder: list[Any] = []

    def state() -> dict[str, Any]:
        h = holder[0].store.health() if holder else {"status": "ok"}
        return {"status": "degraded" if h["status"] != "ok" else "ok", "rooms": {"store": h}}

    node = start_node(cfg, state=state)
    holder.append(node)
    wait_state(lambda st: st["rooms"] == {"store": "ok"})
    filler = fill_disk(tiny_disk)
    for i in range(300):
        node.store.record_event(ShopperEvent(f"v{i % 5}", str(i), "pick", "z"), upstream=node.room.topics.events)
    st = wait_state(lambda st: st["rooms"]["store"] != "ok")
    assert st["rooms"] == {"store": "degraded"} and st["status"] == "degraded", st
    filler.unlink()
    wait_state(lambda st: st["rooms"] == {"store": "ok"} and st["status"] == "ok", 20)

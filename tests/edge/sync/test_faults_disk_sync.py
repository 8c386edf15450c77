"""A full data_dir under a node that syncs to a real mosquitto: every event reaches the cloud once, in
order, after the space comes back, without a restart (a real, really full 2 MB tmpfs)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.events import ShopperEvent


def test_events_recorded_on_a_full_disk_reach_the_cloud_once_space_is_back(
        mosquitto: Any, node_config: Any, start_node: Any, upstream: Any, tiny_disk: Path,
        fill_disk: Callable[[Path], Path]) -> None:
    node = start_node(node_config(mosquitto.url, data_dir=tiny_disk))
    topic = node.room.topics.events
    ids: list[str] = []

    def burst(n: int) -> None:
        for i in range(n):
            ev = ShopperEvent(session=f"s{i % 7}", sku=f"sku-{i % 50}", action="pick", zone="dairy")
            ids.append(ev.id)
            node.store.record_event(ev, upstream=topic)  # the hot path: nobody waits for the commit
            if i % 50 == 49:
                time.sleep(0.02)

    burst(200)
    assert upstream.wait_for(lambda: len(upstream.of("/events")) >= 200, 20)
    assert mosquitto.proc is not None
    os.kill(mosquitto.proc.pid, signal.SIGSTOP)  # a hung broker: what the node sends now waits for its PUBACK
    try:
        burst(200)
        assert upstream.wait_for(lambda: node.store.outbox_pending() >= 200, 10)
        time.sleep(0.5)  # the drainer has them in flight
        filler = fill_disk(tiny_disk)
    finally:
        os.kill(mosquitto.proc.pid, signal.SIGCONT)  # PUBACKs arrive now: the outbox deletes hit a full disk
    assert upstream.wait_for(lambda: len({e["id"] for e in upstream.of("/events")}) >= 400, 20)
    burst(200)  # recorded while the disk is full
    assert upstream.wait_for(lambda: node.store.health()["status"] == "degraded", 10), node.store.health()
    time.sleep(1.0)
    filler.unlink()
    got = upstream.wait_for(lambda: len({e["id"] for e in upstream.of("/events")}) >= 600 and upstream.of("/events"),
                            30)
    seen = [e["id"] for e in got or upstream.of("/events")]
    assert len(set(seen)) == 600, (len(set(seen)), node.store.health(), node.room.health())
    assert list(dict.fromkeys(seen)) == ids  # all of them, in order
    # delivered rows whose delete the full disk refused are deleted once it has room (old code: they stayed
    # in the outbox for good, and went out a second time after the next reconnect)
    assert upstream.wait_for(lambda: node.store.outbox_pending() == 0, 10), node.store.outbox_pending()
    assert [e["id"] for e in upstream.of("/events")] == ids  # exactly once
    assert node.store.health()["status"] == "ok"

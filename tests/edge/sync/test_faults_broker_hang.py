"""A hung broker (SIGSTOP: the TCP connection stays up, nothing answers) for three keepalives, with events
arriving all along: the link notices, keeps reconnecting, and once the broker runs again every accepted
event arrives, in order, none lost (a real mosquitto)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from edge.events import ShopperEvent


def test_a_hung_broker_is_noticed_and_every_event_arrives_after_it_wakes(
        mosquitto: Any, node_config: Any, start_node: Any, upstream: Any) -> None:
    node = start_node(node_config(mosquitto.url, keepalive_s=5))
    topic = node.room.topics.events
    ids: list[str] = []

    def burst(n: int) -> None:
        for i in range(n):
            ev = ShopperEvent(session=f"s{i % 7}", sku=f"sku-{i % 50}", action="pick", zone="dairy")
            ids.append(ev.id)
            node.store.append_event(ev, upstream=topic).result(10)  # accepted: committed

    burst(100)
    assert upstream.wait_for(lambda: len(upstream.of("/events")) >= 100, 20)
    assert mosquitto.proc is not None
    os.kill(mosquitto.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 16:
            burst(20)
            time.sleep(0.5)
        h = node.room.link.stats
        assert h["disconnects"] >= 1, h  # a hung broker is noticed (keepalive), not waited on forever
        assert not node.room.link.connected.is_set()
    finally:
        os.kill(mosquitto.proc.pid, signal.SIGCONT)
    assert node.room.link.wait_connected(40), node.room.link.last_error
    got = upstream.wait_for(lambda: len({e["id"] for e in upstream.of("/events")}) >= len(ids)
                            and upstream.of("/events"), 40)
    seen = [e["id"] for e in got or upstream.of("/events")]
    assert set(seen) == set(ids), (len(set(seen)), len(ids))
    assert list(dict.fromkeys(seen)) == ids  # in order; a batch in flight at the hang may come twice
    assert upstream.wait_for(lambda: node.store.outbox_pending() == 0, 10)

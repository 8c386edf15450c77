"""The outbox to the cloud, against a real Mosquitto: order, batching, size cap, backlog bounds,
a 30 s broker outage at 500 events/s, and ``kill -9`` of the node mid-stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge.events import ShopperEvent
from edge.store import Store
from edge.sync.outbox import evict

HERE = Path(__file__).parent
MAX = 128 * 1024


def test_events_arrive_in_order_batched_and_compressed(mosquitto: Any, node_config: Any, start_node: Any,
                                                       upstream: Any) -> None:
    node = start_node(node_config(mosquitto.url))
    ids = []
    for i in range(3000):
        ev = ShopperEvent(session=f"s{i % 7}", sku=f"sku-{i % 50}", action="pick", zone="dairy")
        ids.append(ev.id)
        node.store.append_event(ev, upstream=node.room.topics.events)
    got = upstream.wait_for(lambda: len(upstream.of("/events")) >= 3000 and upstream.of("/events"), 20)
    assert [e["id"] for e in got] == ids  # all of them, once, in order
    raws = [p for t, p, _ in upstream.raw if t.endswith("/events")]
    assert 3000 / 500 <= len(raws) < 3000 / 10  # batched
    assert all(len(p) <= MAX for p in raws)
    assert all(p[:1] == b"\x78" for p in raws if len(p) > 4096)  # zlib where it pays


def test_big_events_are_split_under_the_128_kb_cap(mosquitto: Any, node_config: Any, start_node: Any,
                                                    upstream: Any) -> None:
    node = start_node(node_config(mosquitto.url))
    ids = []
    for i in range(300):  # ~4 KB of incompressible text each: 500 of them would be 2 MB
        ev = ShopperEvent(session=os.urandom(2000).hex(), sku=f"sku-{i}", action="pick", zone="dairy")
        ids.append(ev.id)
        node.store.append_event(ev, upstream=node.room.topics.events)
    got = upstream.wait_for(lambda: len(upstream.of("/events")) >= 300 and upstream.of("/events"), 20)
    assert [e["id"] for e in got] == ids
    raws = [p for t, p, _ in upstream.raw if t.endswith("/events")]
    assert len(raws) >= 5 and max(len(p) for p in raws) <= MAX  # ~1.3 MB raw, ~0.65 MB zlib: split


def test_a_broker_with_a_smaller_packet_cap_gets_smaller_messages(mosquitto: Any, node_config: Any,
                                                                  start_node: Any, upstream: Any) -> None:
    mosquitto.extra = ["max_packet_size 20000"]  # announced in CONNACK as Maximum Packet Size
    mosquitto.restart()
    assert upstream.wait_for(lambda: upstream.c.is_connected(), 15)  # the listener re-subscribes
    time.sleep(0.5)
    node = start_node(node_config(mosquitto.url))
    assert node.room.link.max_packet == 20000
    ids = []
    for i in range(200):
        ev = ShopperEvent(session=os.urandom(600).hex(), sku=f"sku-{i}", action="pick", zone="dairy")
        ids.append(ev.id)
        node.store.append_event(ev, upstream=node.room.topics.events)
    got = upstream.wait_for(lambda: len(upstream.of("/events")) >= 200 and upstream.of("/events"), 20)
    assert got, (node.room.drainer.health(), node.room.link.health(), len(upstream.of("/events")))
    assert [e["id"] for e in got] == ids
    raws = [p for t, p, _ in upstream.raw if t.endswith("/events")]
    assert max(len(p) for p in raws) <= 20000 - 512 and node.room.drainer.stats["refused"] == 0


def test_backlog_is_bounded_oldest_low_value_first_and_counted(tmp_path: Path) -> None:
    with Store(tmp_path / "db.sqlite", flush_interval_ms=5) as store:
        for i in range(300):
            store.enqueue("t/events", json.dumps({"id": f"lo-{i}"}), id=f"lo-{i}", priority=0)
            store.enqueue("t/events", json.dumps({"id": f"mid-{i}"}), id=f"mid-{i}", priority=1)
        for i in range(50):
            store.enqueue("t/release/status", json.dumps({"id": f"hi-{i}"}), id=f"hi-{i}", priority=2)
        store.flush()
        res = evict(store, max_rows=400, max_age_s=3600).result(10)
        assert res == {"aged": 0, "capped": 250}
        left = {r["id"] for r in store.query("SELECT id FROM outbox")}
        assert len(left) == 400
        assert {f"hi-{i}" for i in range(50)} <= left and {f"mid-{i}" for i in range(300)} <= left
        assert {f"lo-{i}" for i in range(250, 300)} <= left  # the newest low-value ones survive
        store.submit(lambda c: c.execute("UPDATE outbox SET created = created - 7200 WHERE id LIKE 'mid-%'")).result()
        res = evict(store, max_rows=400, max_age_s=3600).result(10)
        assert res == {"aged": 300, "capped": 0}
        assert store.meta_get("sync.evicted") == "550"


# -- processes: the real node, the real ingest ---------------------------------------------------
def start_ingest(mosquitto: Any, out: Path, client_id: str = "test-ingest") -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-m", "edge", "cloud", "ingest", "--broker", mosquitto.url, "--out",
                          str(out), "--client-id", client_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert p.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if "subscribed" in line:
            return p
        assert line, "cloud ingest exited before subscribing"
    raise AssertionError("cloud ingest did not subscribe")


def stop_ingest(p: subprocess.Popen[str]) -> dict[str, Any]:
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def parquet_ids(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    ids: list[str] = []
    for f in sorted(out.glob("*.parquet")):
        ids += pq.read_table(f, columns=["id"]).column("id").to_pylist()
    return ids


def start_harness(config: Any, tmp: Path, *extra: str) -> subprocess.Popen[bytes]:
    cfg = tmp / "node-config.json"
    cfg.write_text(config.model_dump_json(by_alias=True))
    return subprocess.Popen([sys.executable, str(HERE / "node_harness.py"), str(cfg), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def status(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_node_kill9_mid_stream_then_restart_loses_nothing_accepted(mosquitto: Any, node_config: Any,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "ingest"
    ing = start_ingest(mosquitto, out)
    config = node_config(mosquitto.url)
    accepted, st = tmp_path / "accepted.txt", tmp_path / "status.json"
    mosquitto.stop()  # the link is down: accepted events pile up in the outbox, then the node dies
    node = start_harness(config, tmp_path, "--events", "100000", "--rate", "500", "--accepted", str(accepted),
                         "--status", str(st), "--fake-model")
    wait(lambda: accepted.exists() and len(accepted.read_text().split()) >= 1000, 30, "1000 accepted events")
    mosquitto.start()
    wait(lambda: status(st).get("connected"), 15, "the node to reconnect")
    time.sleep(0.3)  # mid-drain
    node.send_signal(signal.SIGKILL)
    node.wait(10)
    n_accepted = len(set(accepted.read_text().split()))
    assert n_accepted >= 1000
    node = start_harness(config, tmp_path, "--status", str(st), "--fake-model")  # no new events
    try:
        wait(lambda: status(st).get("pid") == node.pid and status(st).get("pending") == 0, 60, "the outbox to drain")
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(20)
    want = set(accepted.read_text().split())
    wait(lambda: want <= set(parquet_ids(out)), 20, "every accepted event at the ingest")
    summary = stop_ingest(ing)
    ids = parquet_ids(out)
    assert want <= set(ids)
    assert len(ids) == len(set(ids))  # deduped
    assert summary["unique"] >= len(want) and summary["received"] >= summary["unique"]


@pytest.mark.slow
def test_broker_sigkilled_for_30s_at_500_events_per_s_every_event_arrives_once(
        mosquitto: Any, node_config: Any, tmp_path: Path) -> None:
    out = tmp_path / "ingest"
    ing = start_ingest(mosquitto, out)
    config = node_config(mosquitto.url)
    accepted, st = tmp_path / "accepted.txt", tmp_path / "status.json"
    node = start_harness(config, tmp_path, "--events", "18500", "--rate", "500", "--accepted", str(accepted),
                         "--status", str(st), "--fake-model")
    try:
        wait(lambda: status(st).get("connected") and status(st).get("sent", 0) >= 1000, 30, "events flowing")
        mosquitto.kill()  # SIGKILL
        sent_at_kill = status(st)["sent"]
        time.sleep(30)
        backlog = status(st)["pending"]
        assert status(st)["sent"] - sent_at_kill >= 14000  # it kept accepting at ~500/s throughout
        assert backlog >= 10000
        mosquitto.start()
        wait(lambda: status(st).get("sent") == 18500, 30, "all events sent")
        wait(lambda: status(st).get("pending") == 0, 60, "the outbox to drain")
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(20)
    want = set(accepted.read_text().split())
    assert len(want) == 18500
    wait(lambda: want <= set(parquet_ids(out)), 30, "every event at the ingest")
    summary = stop_ingest(ing)
    ids = parquet_ids(out)
    assert set(ids) == want and len(ids) == len(want)  # every event arrived, none twice after dedupe
    assert summary["unique"] == len(want)

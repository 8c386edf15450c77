"""Wall-clock steps and the outbox / event retention (a Pi without a real-time clock syncs NTP late).

Real SQLite files and a real Mosquitto. The store takes a clock (``edge.clock.Clock``: wall + monotonic) so a
step can be made here without touching this machine's clock; rows "stamped before a step" are also written
directly with the stamps such a step leaves behind, which the old code mishandled on its own clock."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edge.clock import Clock
from edge.events import ShopperEvent
from edge.store import Store
from edge.sync.outbox import evict

DAY = 86400.0
MAX_AGE = 14 * DAY


def _fill(store: Store, fc: Any, n: int = 20) -> list[str]:
    ids = []
    for i in range(n):
        ev = ShopperEvent(session="s1", sku=f"sku-{i}", action="pick", zone="dairy", t=fc.w)
        ids.append(ev.id)
        store.append_event(ev, upstream="shelfcast/v1/s1/n1/events")
    store.flush(timeout=10)
    return ids


def _pending_ids(store: Store) -> list[str]:
    return [r["id"] for r in store.outbox_peek(limit=10_000)]


def test_a_step_forward_of_a_year_keeps_the_outbox_and_the_recent_events(tmp_path: Path, fake_clock: Any) -> None:
    fc = fake_clock()
    with Store(tmp_path / "db.sqlite", flush_interval_ms=5, retention_days=14, clock=fc.clock()) as store:
        ids = _fill(store, fc)
        fc.elapse(60)
        fc.step(365 * DAY)  # NTP: the node had booted a year behind
        res = evict(store, max_rows=100_000, max_age_s=MAX_AGE).result(10)
        assert res == {"aged": 0, "capped": 0}
        assert _pending_ids(store) == ids  # all still queued for the cloud, in order
        # the cloud gets each stamp as made and the step beside it: t + clock_shift is when it happened
        items = [json.loads(r["payload"]) for r in store.outbox_peek(limit=100)]
        assert all(it["clock_shift"] == 365 * DAY and it["t"] + it["clock_shift"] == fc.w - 60 for it in items)
        store.run_maintenance()
        assert store.event_count() == 20
        assert store.health()["clock_step"]["s"] == 365 * DAY
        # ageing goes on in elapsed time: 15 days later they do go
        fc.elapse(15 * DAY)
        assert evict(store, max_rows=100_000, max_age_s=MAX_AGE).result(10)["aged"] == 20
        store.run_maintenance()
        assert store.event_count() == 0


def test_a_step_back_of_a_year_does_not_keep_rows_forever(tmp_path: Path, fake_clock: Any) -> None:
    fc = fake_clock()
    fc.w += 365 * DAY  # the clock is a year ahead (and the right time, after the step, is after BUILD_FLOOR)
    with Store(tmp_path / "db.sqlite", flush_interval_ms=5, retention_days=14, clock=fc.clock()) as store:
        _fill(store, fc)
        fc.step(-365 * DAY)  # NTP puts it right
        fc.elapse(13 * DAY)
        assert evict(store, max_rows=100_000, max_age_s=MAX_AGE).result(10)["aged"] == 0  # not yet
        fc.elapse(2 * DAY)
        assert evict(store, max_rows=100_000, max_age_s=MAX_AGE).result(10)["aged"] == 20
        store.run_maintenance()
        assert store.event_count() == 0


def test_rows_of_an_earlier_run_keep_their_stamps(tmp_path: Path, fake_clock: Any) -> None:
    """Only this run's rows are re-stamped: an earlier run's rows came from its own (set) clock."""
    fc = fake_clock()
    with Store(tmp_path / "db.sqlite", flush_interval_ms=5, clock=fc.clock()) as store:
        _fill(store, fc, 5)
    before = fc.w
    fc.elapse(30)
    with Store(tmp_path / "db.sqlite", flush_interval_ms=5, clock=fc.clock()) as store:
        _fill(store, fc, 5)
        fc.step(3600.0)
        store.append_event(ShopperEvent(session="s2", sku="x", action="pick", zone="dairy", t=fc.w),
                           upstream="t/events")
        store.flush(timeout=10)
        created = [float(r["created"]) for r in store.outbox_peek(limit=100)]
        shifts = [json.loads(r["payload"]).get("clock_shift") for r in store.outbox_peek(limit=100)]
    assert shifts == [None] * 5 + [3600.0] * 5 + [None]
    assert created[:5] == [before] * 5  # the earlier run's rows
    assert created[5:10] == [before + 30 + 3600.0] * 5  # this run's, moved with the step
    assert created[10] == before + 30 + 3600.0


def test_rows_stamped_by_an_unset_clock_are_not_aged_out(tmp_path: Path) -> None:
    """A node that ran at 1970 (no fake-hwclock) and restarted after NTP: its rows are not 56 years old."""
    with Store(tmp_path / "db.sqlite", flush_interval_ms=5, retention_days=14) as store:
        def write(conn: Any) -> None:
            for i in range(10):
                t = 86400.0 * 3 + i  # 1970-01-04
                ev = ShopperEvent(session="s", sku=f"k{i}", action="pick", zone=None, t=t)
                conn.execute("INSERT INTO events (id, type, t, session, payload) VALUES (?,?,?,?,?)",
                             (ev.id, ev.TYPE, t, "s", ev.to_json()))
                conn.execute("INSERT INTO outbox (id, topic, payload, created, priority) VALUES (?,?,?,?,1)",
                             (ev.id, "t/events", ev.to_json(), t))

        store.submit(write).result(10)
        assert evict(store, max_rows=100_000, max_age_s=MAX_AGE).result(10) == {"aged": 0, "capped": 0}
        assert store.outbox_pending() == 10
        store.run_maintenance()
        assert store.event_count() == 10
        # the row cap still bounds them
        assert evict(store, max_rows=4, max_age_s=MAX_AGE).result(10) == {"aged": 0, "capped": 6}


def test_rows_stamped_before_a_step_back_leave_at_once(mosquitto: Any, node_config: Any, start_node: Any,
                                                       upstream: Any) -> None:
    """Rows stamped an hour "ahead" (the clock stepped back since): a partial batch is due, not young.
    The old drainer waited out the hour before sending them."""
    node = start_node(node_config(mosquitto.url))
    topic = node.room.topics.events
    ahead = time.time() + 3600.0
    evs = [ShopperEvent(session="s", sku=f"k{i}", action="pick", zone=None, t=ahead) for i in range(3)]

    def write(conn: Any) -> None:
        for ev in evs:
            conn.execute("INSERT INTO outbox (id, topic, payload, created, priority) VALUES (?,?,?,?,1)",
                         (ev.id, topic, ev.to_json(), ahead))

    node.store.submit(write).result(10)
    got = upstream.wait_for(lambda: len(upstream.of("/events")) >= 3 and upstream.of("/events"), 5)
    assert got and [e["id"] for e in got] == [ev.id for ev in evs], node.room.drainer.health()
    assert json.loads(evs[0].to_json())["t"] == ahead  # what the cloud gets is the stamp as made


def _envelopes(upstream: Any) -> list[dict[str, Any]]:
    from edge.sync.outbox import decode_payload

    return [decode_payload(p) for t, p, _ in list(upstream.raw) if t.endswith("/events")]


def test_batches_sent_while_the_clock_is_unsynced_say_so(mosquitto: Any, node_config: Any, start_node: Any,
                                                         upstream: Any) -> None:
    """Until NTP has synced (kernel adjtimex) and the clock is past the build date, each batch envelope carries
    "clock_unsynced": true, so the cloud knows its items' t may be off; once synced, the flag goes."""
    synced = [False]
    node = start_node(node_config(mosquitto.url))
    node.room.drainer.clock = Clock(synced=lambda: synced[0])
    node.room.drainer._unsynced = (False, -1e9)  # look again now, not within 5 s
    first = ShopperEvent(session="s", sku="a", action="pick", zone=None)
    node.store.append_event(first, upstream=node.room.topics.events)
    assert upstream.wait_for(lambda: len(upstream.of("/events")) >= 1, 5)
    assert node.room.health()["clock_unsynced"] is True  # and in the state topic
    synced[0] = True
    node.room.drainer._unsynced = (False, -1e9)
    second = ShopperEvent(session="s", sku="b", action="pick", zone=None)
    node.store.append_event(second, upstream=node.room.topics.events)
    assert upstream.wait_for(lambda: len(upstream.of("/events")) >= 2, 5)
    envs = _envelopes(upstream)
    flags = {it["id"]: env.get("clock_unsynced") for env in envs for it in env["items"]}
    assert flags == {first.id: True, second.id: None}
    assert node.room.health()["clock_unsynced"] is False
    # a clock before the build date is unsynced whatever the kernel says
    assert Clock(wall=lambda: 86400.0, synced=lambda: True).unsynced()

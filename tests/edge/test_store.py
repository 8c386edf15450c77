"""The SQLite cache: one writer, batched commits, caches, migrations, corruption recovery."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from edge.events import ShopperEvent
from edge.store import SCHEMA_VERSION, Product, Profile, Store


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "sc.db", flush_interval_ms=5).open()
    yield s
    s.close()


def test_products_stock_planogram_profiles_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sc.db"
    with Store(path) as s:
        s.upsert_products([Product("1", "Milk", department="GROCERY", price=1.5, unit_weight_g=1000)]).result(5)
        s.set_stock({"1": 3}).result(5)
        s.set_planogram([("dairy-1", 0, "1")]).result(5)
        s.upsert_profiles([Profile("h" * 16, {"age": "35-44"}, (("1", 1.7e9, 2.0),), visits=4)]).result(5)
        s.adjust_stock("1", -5)
        assert s.stock("1") == 0  # never below zero
    with Store(path) as s:
        assert s.product("1") == Product("1", "Milk", department="GROCERY", price=1.5, unit_weight_g=1000)
        assert s.stock("1") == 0 and s.stock("unknown") is None
        assert s.planogram_slot("dairy-1", 0) == "1"
        p = s.profile("h" * 16)
        assert p is not None and p.demographics == {"age": "35-44"} and p.history == (("1", 1.7e9, 2.0),)


def test_concurrent_writers_never_see_locked(store: Store) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            futs = [store.append_event(ShopperEvent(f"v{n}", str(i), "pick", "z"), upstream="up")
                    for i in range(300)]
            for f in futs:
                f.result(10)
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    # a reader hammering at the same time
    for _ in range(50):
        store.outbox_pending()
    for t in threads:
        t.join()
    assert errors == []
    assert store.event_count() == 1800 and store.outbox_pending() == 1800
    assert store.health()["batches"] < 1800  # batched, not one commit per event


def test_event_ids_are_idempotent_and_outbox_acks(store: Store) -> None:
    ev = ShopperEvent("v1", "1", "pick", "z")
    store.append_event(ev, upstream="up").result(5)
    store.append_event(ev, upstream="up").result(5)
    assert store.event_count() == 1
    rows = store.outbox_peek(10)
    assert [r["id"] for r in rows] == [ev.id]
    assert store.outbox_ack([rows[0]["seq"]]).result(5) == 1
    assert store.outbox_pending() == 0


def test_one_bad_op_does_not_sink_the_batch(store: Store) -> None:
    bad = store.submit(lambda c: c.execute("INSERT INTO nope VALUES (1)"))
    good = store.append_event(ShopperEvent("v", "1", "pick", None))
    with pytest.raises(sqlite3.OperationalError):
        bad.result(5)
    good.result(5)
    assert store.event_count() == 1


def test_corrupt_file_moved_aside_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "sc.db"
    with Store(path) as s:
        s.append_event(ShopperEvent("v", "1", "pick", None)).result(5)
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(4096 - 100)  # smash the header page's schema
    path.write_bytes(bytes(data))
    with Store(path) as s:
        h = s.health()
        assert h["recovered_from"] is not None and Path(h["recovered_from"]["path"]).exists()
        assert s.event_count() == 0  # fresh, usable
        s.append_event(ShopperEvent("v", "2", "pick", None)).result(5)


def test_old_schema_is_backed_up_then_migrated(tmp_path: Path) -> None:
    path = tmp_path / "sc.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('k', 'v')")
    conn.execute("PRAGMA user_version=0")
    conn.commit()
    conn.close()
    # version 0 with data: pretend it is an older release by bumping to a fake old version is not possible
    # (we have one migration), so check the newer-than-us refusal and the fresh-path instead.
    with Store(path) as s:
        assert s.meta_get("k") == "v"
        assert s.read().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(Exception, match="newer than this ShelfCast"):
        Store(path).open()


def test_retention_drops_old_events(tmp_path: Path) -> None:
    with Store(tmp_path / "sc.db", retention_days=1, max_events=1000) as s:
        # three days old by a set clock (a stamp before the build date came from an unset clock: test_clock_outbox)
        s.append_event(ShopperEvent("v", "old", "pick", None, t=time.time() - 3 * 86400)).result(5)
        for i in range(1005):
            s.append_event(ShopperEvent("v", str(i), "pick", None, t=2e9 + i))
        s.flush()
        res = s.run_maintenance()
        assert res["aged_out"] == 1 and res["capped"] == 5
        assert s.event_count() == 1000


def test_accepted_events_survive_kill_9(tmp_path: Path) -> None:
    """Events whose future resolved are on disk even if the process is SIGKILLed right after."""
    path = tmp_path / "sc.db"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from edge.store import Store
        from edge.events import ShopperEvent
        s = Store({str(path)!r}, flush_interval_ms=5).open()
        acked = 0
        for i in range(400):
            f = s.append_event(ShopperEvent("v", str(i), "pick", None), upstream="up")
            if i % 50 == 49:
                f.result(10); acked = i + 1
        print(acked, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    acked = int(proc.stdout.strip())
    with Store(path) as s:
        assert s.outbox_pending() >= acked == 400


def test_record_event_writes_event_outbox_and_stock_in_one_op(tmp_path: Path) -> None:
    """The hot path's fire-and-forget form: event, outbox row and stock change land together."""
    path = tmp_path / "sc.db"
    with Store(path, flush_interval_ms=20) as s:
        s.upsert_products([Product("1", "Milk")]).result(5)
        s.set_stock({"1": 2}).result(5)
        ops = s.health()["ops"]
        evs = [ShopperEvent("v", "1", "pick", "z") for _ in range(3)]
        for ev in evs:
            assert s.record_event(ev, upstream="up", stock=("1", -1)) is None
        assert s.stock("1") == 0  # the cache moves at once, never below zero
        s.record_event(ShopperEvent("v", "unknown", "pick", "z"), stock=("unknown", -1))  # no stock row: untouched
        assert s.stock("unknown") is None
        s.flush()
        assert s.health()["ops"] - ops == 5  # one op per event (+ the flush marker), not two
        assert s.event_count() == 4 and s.outbox_pending() == 3
    with Store(path) as s:
        assert s.stock("1") == 0
        assert {r["id"] for r in s.outbox_peek(10)} == {ev.id for ev in evs}


def test_a_cancelled_future_does_not_kill_the_writer(tmp_path: Path) -> None:
    """A caller that gives up (cancels its future, e.g. a timed-out await) must not take the writer down."""
    with Store(tmp_path / "sc.db", flush_interval_ms=50) as s:
        f = s.append_event(ShopperEvent("v", "1", "pick", None))
        assert f.cancel()  # still pending: the batch commits at the end of the interval
        s.append_event(ShopperEvent("v", "2", "pick", None)).result(5)  # the writer is alive
        assert s.event_count() == 2


def test_ops_run_as_they_come_and_commit_once_per_interval(tmp_path: Path) -> None:
    """Inside a batch the writer runs queued ops a slice at a time (no GIL-hogging burst at the end), but
    commits once per interval: readers see nothing and futures stay pending until then."""
    import time

    with Store(tmp_path / "sc.db", flush_interval_ms=3000) as s:
        s.flush()
        batches = s.health()["batches"]
        ran: list[int] = []
        futs = []
        for i in range(3):
            futs.append(s.submit(lambda c, i=i: ran.append(i)))
            s.record_event(ShopperEvent("v", str(i), "pick", None))
        deadline = time.monotonic() + 2.5
        while len(ran) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ran == [0, 1, 2]  # applied inside the open transaction, before the interval is over
        assert not any(f.done() for f in futs) and s.event_count() == 0  # not committed: not visible
        for f in futs:
            f.result(10)
        assert s.event_count() == 3 and s.health()["batches"] == batches + 1  # one commit for all


def test_event_rows_land_in_queue_order_with_ops_and_many_at_once(tmp_path: Path) -> None:
    """``record_event`` queues plain rows that the writer writes a run at a time (multi-row statements):
    every row lands (runs longer than one statement, runs split by ops), the outbox ``seq`` follows the
    queue, and the stock level is the last one applied, also when a ``set_stock`` sits between picks."""
    path = tmp_path / "sc.db"
    with Store(path, flush_interval_ms=20) as s:
        s.upsert_products([Product("1", "Milk"), Product("2", "Bread")]).result(5)
        s.set_stock({"1": 500, "2": 5}).result(5)
        evs = [ShopperEvent("v", "1" if i % 3 else "2", "pick", "z") for i in range(203)]
        for ev in evs[:150]:
            s.record_event(ev, upstream="up", stock=(ev.sku, -1))
        s.set_stock({"2": 100})  # an op between two runs of rows: applied in between
        for ev in evs[150:]:
            s.record_event(ev, upstream="up", stock=(ev.sku, -1))
        s.flush()
        assert s.event_count() == 203 and s.outbox_pending() == 203
        assert [r["id"] for r in s.outbox_peek(500)] == [ev.id for ev in evs]
        picks_2_late = sum(1 for ev in evs[150:] if ev.sku == "2")
        assert s.stock("2") == 100 - picks_2_late
        assert s.stock("1") == 500 - sum(1 for ev in evs if ev.sku == "1")
        ops = s.health()["ops"]
    with Store(path) as s:
        assert s.stock("2") == 100 - picks_2_late and s.stock("1") == 500 - sum(1 for ev in evs if ev.sku == "1")
        row = s.query("SELECT * FROM events WHERE id=?", (evs[7].id,))[0]
        assert (row["type"], row["t"], row["session"], row["payload"]) == ("shopper", evs[7].t, "v", evs[7].to_json())
    assert ops > 0


def test_a_bad_event_row_does_not_sink_the_others(tmp_path: Path) -> None:
    """A run whose multi-row statement fails is retried row by row: only the bad row is lost (counted)."""
    with Store(tmp_path / "sc.db", flush_interval_ms=20) as s:
        good = [ShopperEvent("v", str(i), "pick", None) for i in range(5)]
        for ev in good[:2]:
            s.record_event(ev, upstream="up")
        row = s._event_row(ShopperEvent("v", "x", "pick", None), None, "up", 1, None)
        s._q.put(("bad", row[1], row[2], {"not": "bindable"}, *row[4:]))  # sqlite cannot bind a dict
        for ev in good[2:]:
            s.record_event(ev, upstream="up")
        s.flush()
        ids = {r["id"] for r in s.query("SELECT id FROM events")}
        assert {ev.id for ev in good} <= ids and "bad" not in ids
        assert s.health()["errors"] >= 1

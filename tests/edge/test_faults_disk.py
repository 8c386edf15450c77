"""A full disk under a running store: a real SQLite file on a real, really full tmpfs.

The node must degrade (say so in ``health()``), keep what it was given in memory (bounded), and write it
all by itself once space comes back: no restart, no lost event, each event id once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.events import ShopperEvent
from edge.store import Store


def _wait(pred, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def test_events_recorded_while_the_disk_is_full_are_written_once_space_is_back(
        tiny_disk: Path, fill_disk: Callable[[Path], Path]) -> None:
    s = Store(tiny_disk / "shelfcast.db", flush_interval_ms=20).open()
    try:
        s.flush()
        filler = fill_disk(tiny_disk)
        ids = []
        for i in range(1000):  # ~0.7 MB of event + outbox rows: fits once the filler is gone
            ev = ShopperEvent(f"v{i % 7}", str(i), "pick", "z")
            ids.append(ev.id)
            s.record_event(ev, upstream="up")
            if i % 200 == 199:
                time.sleep(0.02)
        assert _wait(lambda: s.health()["status"] == "degraded" and s.health()["queue"] == 0)
        h = s.health()
        assert "full" in h["last_error"], h
        assert h["held"] > 0, h  # kept in memory, not dropped
        assert h["dropped"] == 0, h
        filler.unlink()  # the technician frees space; the node is not restarted
        assert _wait(lambda: s.event_count() == len(ids), 20.0), s.health()
        s.flush()
        assert s.health()["held"] == 0, s.health()
        assert s.health()["status"] == "ok", s.health()
        got = [r["id"] for r in s.query("SELECT id FROM outbox ORDER BY seq")]
        assert got == ids  # every event, once, in the order it came
        assert s.event_count() == len(ids)
    finally:
        s.close()


def test_a_node_booting_on_a_full_disk_keeps_its_database_waits_and_starts_once_space_is_back(
        tiny_disk: Path, fill_disk: Callable[[Path], Path]) -> None:
    """Old code: the open's "disk I/O error" (no room for the -shm file) was taken for corruption, the good
    database (outbox included) was moved aside as *.corrupt-*, and the node then died in start()."""
    from edge.app import Node
    from edge.config import NodeConfig

    cfg = NodeConfig.model_validate({
        "node": {"data_dir": str(tiny_disk), "store_id": "s1", "node_id": "n1"},
        "signage": {"enabled": False}, "shelves": {"enabled": False}})

    async def run() -> None:
        node = Node(cfg)  # a first boot seeds the catalogue and leaves an event for the cloud in the outbox
        await node.start()
        products = len(node.store.products())
        node.store.append_event(ShopperEvent("v1", "1", "pick", "z"), upstream="up").result(5)
        await node.stop()
        filler = fill_disk(tiny_disk)

        node = Node(cfg)
        start = asyncio.ensure_future(node.start())
        await asyncio.sleep(2.5)
        assert not start.done(), start  # waiting, not dead (old code: OperationalError out of start())
        assert not list(tiny_disk.glob("*.corrupt-*"))  # the database stays where it is
        h = node.store_room.health()
        assert h["status"] == "failed" and "full or failing" in h["last_error"], h
        filler.unlink()
        await asyncio.wait_for(start, 40)
        try:
            assert len(node.store.products()) == products
            assert node.store.outbox_pending() == 1  # the event still waits for the cloud
            assert node.health()["rooms"]["store"]["status"] == "ok"
            assert not list(tiny_disk.glob("*.corrupt-*"))
        finally:
            await node.stop()

    asyncio.run(run())


def test_doctor_on_a_full_disk_says_full_not_corrupted(tiny_disk: Path, fill_disk: Callable[[Path], Path]) -> None:
    """Old code: "shelfcast.db is corrupted: disk I/O error" with the fix "restart the node", on a good file."""
    from edge.doctor import check_data_dir, check_database

    with Store(tiny_disk / "shelfcast.db") as s:
        s.append_event(ShopperEvent("v1", "1", "pick", "z"), upstream="up").result(5)
    filler = fill_disk(tiny_disk)
    assert check_data_dir(tiny_disk).status == "fail"
    c = check_database(tiny_disk)
    assert c.status == "fail", c
    assert "corrupted" not in c.detail and "full or failing" in c.detail, c
    assert "free space" in c.fix and "restart" not in c.fix, c
    filler.unlink()
    c = check_database(tiny_disk)
    assert c.status == "pass" and "1 in outbox" in c.detail, c


def test_a_node_waiting_for_disk_space_keeps_systemd_from_timing_out_its_start(
        tiny_disk: Path, fill_disk: Callable[[Path], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under systemd (Type=notify, TimeoutStartSec=120) a node waiting for space was killed and restarted every
    ~2 minutes, a model load each time: it now extends its start timeout and says why it waits."""
    import socket

    from edge.app import StoreRoom
    from edge.config import NodeConfig

    sock_path = str(tmp_path / "notify.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(sock_path)
    rx.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    cfg = NodeConfig.model_validate({"node": {"data_dir": str(tiny_disk), "store_id": "s1", "node_id": "n1"}})
    filler = fill_disk(tiny_disk)

    async def run() -> list[str]:
        room = StoreRoom(cfg)
        start = asyncio.ensure_future(room.start())
        await asyncio.sleep(2.5)
        assert not start.done()
        got = []
        while True:
            try:
                got.append(rx.recv(4096).decode())
            except TimeoutError:
                break
        filler.unlink()
        await asyncio.wait_for(start, 40)
        await room.stop()
        return got

    try:
        got = asyncio.run(run())
    finally:
        rx.close()
    assert got, "no sd_notify datagram while waiting"
    lines = [ln for g in got for ln in g.splitlines()]
    ext = [int(ln.split("=", 1)[1]) for ln in lines if ln.startswith("EXTEND_TIMEOUT_USEC=")]
    assert ext and min(ext) >= 60_000_000, lines
    assert any(ln.startswith("STATUS=waiting for disk space") for ln in lines), lines

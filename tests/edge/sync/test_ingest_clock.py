"""The cloud ingest honours the node's clock flags, so no wrong hour reaches a model.

Real nodes (``Store`` + ``SyncRoom``, real SQLite, a clock the test moves) send real batches through a real
Mosquitto to a real ``shelfcast cloud ingest`` process; its Parquet goes through ``models.data.clean``.

- node-1 booted with an unset clock (no RTC), stamped picks, then NTP stepped the clock: the queued picks carry
  ``clock_shift``; the ingest writes ``t`` = stamp + shift (when they happened), not marked.
- node-2's kernel says NTP is not synced: its batches say ``"clock_unsynced": true``; the ingest marks their
  rows ``clock_unsynced`` and ``clean`` drops them (their hour and weekday are unknown).

Old code: ``t`` was the stamp as made (the picks of node-1 landed 40 days early, at another hour), and nothing
marked node-2's rows: both reached the hour and weekday features."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq  # the dev install has it (the cloud side's Parquet)

from edge.bus import Bus
from edge.clock import BUILD_FLOOR, Clock
from edge.config import NodeConfig
from edge.events import ShopperEvent
from edge.store import Store
from edge.sync.room import SyncRoom

DAY = 86400.0
REPO = Path(__file__).resolve().parents[3]


class _Node:
    """A node side on its own event-loop thread, its store on ``wall`` / ``mono`` / ``synced`` the test sets."""

    def __init__(self, config: NodeConfig, wall: float, synced: bool) -> None:
        self.w, self.m, self.synced = wall, 1000.0, synced
        clock = Clock(wall=lambda: self.w, mono=lambda: self.m, synced=lambda: self.synced)
        self.store = Store(Path(config.node.data_dir) / "shelfcast.db", flush_interval_ms=5, clock=clock).open()
        self.config = config
        self.ids: list[str] = []

    def pick(self, n: int) -> None:
        for i in range(n):
            self.w, self.m = self.w + 1.0, self.m + 1.0  # a pick a second
            ev = ShopperEvent(session="v1", sku=f"sku-{i % 3}", action="pick", zone="dairy", t=self.w)
            self.ids.append(ev.id)
            self.store.append_event(ev, upstream=f"shelfcast/v1/s1/{self.config.node.node_id}/events")
        self.store.flush(timeout=10)

    def send(self, wait_for: Callable[..., Any]) -> None:
        """Start the sync room, wait until the outbox is empty (all acknowledged by the broker), stop."""
        loop = asyncio.new_event_loop()
        th = threading.Thread(target=loop.run_forever, daemon=True)
        th.start()
        room = SyncRoom(self.config, self.store, Bus())
        try:
            asyncio.run_coroutine_threadsafe(room.start(), loop).result(15)
            assert room.link.wait_connected(10), room.link.last_error
            assert wait_for(lambda: room.drain(1.0), 15), "the outbox did not drain"
        finally:
            asyncio.run_coroutine_threadsafe(room.stop(), loop).result(15)
            loop.call_soon_threadsafe(loop.stop)
            th.join(5)
            self.store.close()


def test_the_ingest_applies_clock_shift_and_marks_unsynced_batches_which_training_drops(
        tmp_path: Path, mosquitto: Any, node_config: Callable[..., NodeConfig],
        wait_for: Callable[..., Any]) -> None:
    out = tmp_path / "cloud"
    ingest = subprocess.Popen([sys.executable, "-m", "edge", "cloud", "ingest", "--broker", mosquitto.url, "--out",
                               str(out), "--flush-s", "0.1", "--expect", "12"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert ingest.stderr is not None
        line = ingest.stderr.readline()
        assert "subscribed" in line, line + ingest.stderr.read()

        # node-1: booted 40 days and 3 h behind (before the build date: an unset clock), 6 picks, then NTP steps
        real = 1_795_996_800.0 + 14.5 * 3600  # the time it really is (after BUILD_FLOOR): 14:30 UTC
        off = 40 * DAY + 11_000.0
        n1 = _Node(node_config(mosquitto.url, data_dir=tmp_path / "n1", node_id="node-1"), real - off, False)
        assert n1.w < BUILD_FLOOR
        n1.pick(6)  # stamped 11:27 UTC 40 days back; they happened at 14:30:01 .. 14:30:06
        n1.w, n1.m, n1.synced = n1.w + off + 5.0, n1.m + 5.0, True  # 5 s later NTP steps the wall clock by off
        # the first write after the step re-stamps this run's queued rows (edge.store._follow_clock)
        n1.store.append_event(ShopperEvent(session="v2", sku="sku-9", action="pick", zone="dairy", t=n1.w),
                              upstream="shelfcast/v1/s1/node-1/events")
        n1.store.flush(timeout=10)
        n1.send(wait_for)

        # node-2: a plausible clock, but the kernel says NTP never synced (a store network that blocks UDP 123)
        n2 = _Node(node_config(mosquitto.url, data_dir=tmp_path / "n2", node_id="node-2"), real + 3 * 3600, False)
        n2.pick(5)
        n2.send(wait_for)

        stdout, err = ingest.communicate(timeout=30)  # --expect 12: it stops by itself
    finally:
        if ingest.poll() is None:
            ingest.kill()
            ingest.wait(10)
    assert ingest.returncode == 0, err
    rows = pd.concat([pq.read_table(f).to_pandas() for f in sorted(out.glob("*.parquet"))], ignore_index=True)
    assert len(rows) == 12 and rows["id"].is_unique, rows
    by = rows.set_index("id")
    first6 = by.loc[n1.ids]
    # when they happened: the stamp plus the step
    assert list(first6["t"]) == [real + i for i in range(1, 7)], list(first6["t"])
    assert (first6["clock_shift"] == off).all(), first6["clock_shift"]
    assert not first6["clock_unsynced"].any(), "node-1's clock was synced when they left"
    assert not by.loc[by["node"] == "node-1", "clock_unsynced"].any()
    n2rows = by.loc[by["node"] == "node-2"]
    assert len(n2rows) == 5 and n2rows["clock_unsynced"].all() and (n2rows["clock_shift"] == 0).all(), n2rows
    assert '"clock_shift"' in first6["payload"].iloc[0]  # the item as sent is kept
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["clock_unsynced"] == 5 and summary["clock_shifted"] == 6, summary

    # the training side: a transactions table from these rows (one basket per visit) keeps node-1's picks at
    # the hour they happened and drops node-2's
    from models.data import SplitConfig, clean

    tx = pd.DataFrame({"household_id": "h1", "store_id": rows["store"], "basket_id": rows["session"],
                       "product_id": [p.split('"sku":"')[1].split('"')[0] for p in rows["payload"]],
                       "quantity": 1, "sales_value": 1.0, "timestamp": pd.to_datetime(rows["t"], unit="s", utc=True),
                       "clock_unsynced": rows["clock_unsynced"]})
    products = pd.DataFrame({"product_id": [f"sku-{i}" for i in (0, 1, 2, 9)], "department": "DAIRY",
                             "category": "MILK", "product_type": "MILK", "brand": "B"})
    lines, _, _, stats = clean({"transactions": tx, "products": products}, SplitConfig(timezone="UTC"))
    assert stats["dropped_clock_unsynced"] == 5 and len(lines) == 7, stats
    assert set(lines["hour"]) == {14}, lines["hour"]  # 14:30 UTC, not the unset clock's hour
    assert "clock_unsynced" not in lines
    # a table without the column: cleaned as before, no new count
    _, _, _, plain = clean({"transactions": tx.drop(columns=["clock_unsynced"]), "products": products},
                           SplitConfig(timezone="UTC"))
    assert "dropped_clock_unsynced" not in plain and plain["lines_out"] == 12

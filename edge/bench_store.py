"""``shelfcast bench store --json``: the SQLite cache's write and read latency.

Measures what the hot path pays: accepted-event latency (append → COMMIT, the
batching writer), sustained events/s, in-memory hot reads (product, stock,
planogram slot, profile) and bytes written to disk per 1,000 events.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.events import ShopperEvent
from edge.procstats import io_write_bytes
from edge.store import Product, Profile, Store


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs), q)), 2)


def run(events: int = 5000, rate: float = 1000.0, flush_interval_ms: int = 500) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sc-bench-") as d:
        path = Path(d) / "bench.db"
        store = Store(path, flush_interval_ms=flush_interval_ms).open()
        try:
            products = [Product(str(i), f"Item {i}", price=1.0, sales_heat=i) for i in range(10_000)]
            store.upsert_products(products).result(30)
            store.set_stock({p.sku: 10 for p in products}).result(30)
            store.upsert_profiles([Profile(f"c{i:06d}", {"age": "35-44"}, (("1", 1.7e9, 1.0),) * 50)
                                   for i in range(2000)]).result(30)
            store.flush()
            store.submit(lambda c: None).result(5)
            _checkpoint(path)  # the seed data's checkpoint must not count against the events
            os.sync()
            io0 = io_write_bytes()
            lat: list[float] = []
            done: list[float] = []
            interval = 1.0 / rate
            t_start = time.perf_counter()
            futs = []
            for i in range(events):
                target = t_start + i * interval
                ahead = target - time.perf_counter()
                if ahead > 0.0005:
                    time.sleep(ahead)  # sleep, not spin: a spinning producer starves the writer thread
                t0 = time.perf_counter()
                f = store.append_event(ShopperEvent(f"v{i % 50}", str(i % 10_000), "pick", "z"), upstream="up")
                f.add_done_callback(functools.partial(_record, lat, t0))
                futs.append(f)
            for f in futs:
                f.result(30)
            elapsed = time.perf_counter() - t_start
            done.append(elapsed)
            store.flush()
            os.sync()
            io1 = io_write_bytes()
            written = None if io0 is None or io1 is None else io1 - io0
            # hot reads
            reads: dict[str, list[float]] = {"product": [], "stock": [], "planogram": [], "profile": []}
            store.set_planogram([("s1", 0, "1")]).result(5)
            for i in range(20_000):
                sku = str(i % 10_000)
                t0 = time.perf_counter_ns()
                store.product(sku)
                t1 = time.perf_counter_ns()
                store.stock(sku)
                t2 = time.perf_counter_ns()
                store.planogram_slot("s1", 0)
                t3 = time.perf_counter_ns()
                store.profile(f"c{i % 2000:06d}")
                t4 = time.perf_counter_ns()
                reads["product"].append((t1 - t0) / 1e3)
                reads["stock"].append((t2 - t1) / 1e3)
                reads["planogram"].append((t3 - t2) / 1e3)
                reads["profile"].append((t4 - t3) / 1e3)
            q: list[float] = []
            for _ in range(200):
                t0 = time.perf_counter()
                store.outbox_pending()
                q.append((time.perf_counter() - t0) * 1e3)
            health = store.health()
        finally:
            store.close()
    return {
        "events": events,
        "rate": rate,
        "flush_interval_ms": flush_interval_ms,
        "commit_latency_p50_ms": _pct(lat, 50),
        "commit_latency_p99_ms": _pct(lat, 99),
        "events_per_s": round(events / done[0], 1),
        "batches": health["batches"],
        "bytes_written_per_1000_events": None if written is None else int(written * 1000 / events),
        **{f"read_{k}_p50_us": _pct(v, 50) for k, v in reads.items()},
        **{f"read_{k}_p99_us": _pct(v, 99) for k, v in reads.items()},
        "count_query_p50_ms": _pct(q, 50),
    }


def _record(out: list[float], t0: float, _f: object) -> None:
    out.append((time.perf_counter() - t0) * 1e3)


def _checkpoint(path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def main(args: argparse.Namespace) -> int:
    from edge.cli import print_result

    print_result(run(events=args.events, rate=args.rate, flush_interval_ms=args.flush_interval_ms), args.json)
    return 0

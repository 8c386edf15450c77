"""``shelfcast bench hotpath``: the node's per-pick ranking path alone, as CPU time per pick.

``bench e2e`` measures latency, which on a shared machine depends on what
else runs (its CPU per pick rose from 0.75 to 0.94 ms with two training jobs
beside). This drives the same code the e2e bench ranks with, in-process and
on one thread: the bench e2e node's config (4 shelves, their screens, the
bundled catalogue, catalogue-only ranking, stock, frequency caps), the
``Recommender`` room with the ``RankerScorer`` adapter and the shipped
model (or the popularity fallback), with ``ShopperEvent`` picks cycling over
each shelf's slots so each shelf's anonymous visit grows to thousands of
picks, as in ``bench e2e``. No pty, broker or screens: the number printed is
thread CPU time per pick of event handling + ranking + the set, the figure
to compare between code versions.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from edge.events import RecommendationSet, ShopperEvent

__all__ = ["run_hotpath"]

WARMUP = 200


async def _run(picks: int, model: bool) -> dict[str, Any]:
    from edge.app import Node
    from edge.signage.bench import bench_config

    tmp = Path(tempfile.mkdtemp(prefix="shelfcast-hotpath-"))
    try:
        cfg = bench_config(tmp / "node", [], None, 4)
        cfg = cfg.model_copy(update={"shelves": cfg.shelves.model_copy(update={"enabled": False}),
                                     "signage": cfg.signage.model_copy(update={"enabled": False})})
        node = Node(cfg)
        await node.start()
        if node.recommender is not None:  # a simulation: learn its picks whatever the host's NTP state
            from edge.clock import SIMULATED

            node.recommender.fallback.watch_clock(SIMULATED)
        try:
            rec = node.recommender
            assert rec is not None
            if not model:
                rec.model = None
            rec._loop = None  # rank each pick at once, on this thread (no coalescing: one ranking per pick)
            sets: list[RecommendationSet] = []
            node.bus.subscribe(RecommendationSet, sets.append)
            t0 = 1_764_500_000.0
            rec.clock = lambda: t0 + len(sets) * 0.001
            shelves = cfg.layout.shelves
            events = []
            for n in range(picks + WARMUP):
                sh = shelves[n % len(shelves)]
                sl = sh.slots[(n // len(shelves)) % len(sh.slots)]
                events.append(ShopperEvent(session=f"anon-{sh.id}", sku=sl.sku or "", action="pick", zone=sh.zone,
                                           shelf=sh.id, slot=sl.slot, t=t0 + n * 0.001, attributed=False))
            for ev in events[:WARMUP]:
                rec.on_shopper_event(ev)
            n_sets = len(sets)
            per: list[float] = []
            cpu0 = time.thread_time()
            for ev in events[WARMUP:]:
                s = time.perf_counter_ns()
                rec.on_shopper_event(ev)
                per.append((time.perf_counter_ns() - s) / 1000)
            cpu = time.thread_time() - cpu0
            per.sort()
            stats = dict(rec.stats)
            version = getattr(rec.model, "version", None) if rec.model is not None else None
            return {
                "picks": picks,
                "sets": len(sets) - n_sets,
                "cpu_us_per_pick": round(cpu / picks * 1e6, 1) if picks else None,
                "wall_p50_us": round(per[len(per) // 2], 1) if per else None,
                "wall_p99_us": round(per[min(len(per) - 1, int(0.99 * len(per)))], 1) if per else None,
                "model_version": version or "fallback",
                "model_rankings": stats.get("model"),
                "fallback_rankings": stats.get("fallback"),
                "cap_resets": stats.get("cap_resets"),
                "visit_length_max": max((len(v.picked) for v in rec.visits.values()), default=0),
            }
        finally:
            await node.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_hotpath(picks: int = 10_000, model: bool = True) -> dict[str, Any]:
    return asyncio.run(_run(picks, model))

"""``shelfcast bench serial``: throughput, latency and detection quality of the shelf link.

- ``frames_per_s``: SAMPLES frames (8 slots) written as fast as possible into a
  real pty and consumed by ``ShelfBridge`` (decode, CRC, parse, detector).
- ``event_latency_p50_us`` / ``_p99_us``: from the simulator's ``write()`` of
  the SAMPLES frame that completes a pick to the ``ShelfEvent`` callback
  (pty → event loop reader → decoder → detector → callback). The simulated
  controllers run in their own process, as real ones are separate devices;
  ``perf_counter_ns`` is CLOCK_MONOTONIC, comparable across processes.
  ``event_processing_*`` is the node's own share: from the ``os.read`` that
  returned the frame to the callback. ``load_avg_1m`` says how busy the
  machine was (scheduling delays dominate the tail on a loaded machine).
- ``pick_detection_recall``, ``unit_count_accuracy``,
  ``false_events_per_shelf_hour``: ``--shelf-hours`` of simulated noisy shelves
  fed straight to the detector (faster than real time), split over the cores;
  the ``pty_*`` keys are the same measures for the scripted run through the
  real pty and driver.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import struct
import threading
import time
import tty
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from cobs import cobs

from edge.config import default_config
from edge.events import ShelfEvent
from firmware_bridge import protocol as P
from firmware_bridge.evaluate import Observed, Score, offline, score
from firmware_bridge.room import ShelfBridge
from firmware_bridge.sim import SimulatedStore

__all__ = ["pty_quality", "run_bench", "throughput"]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


async def _throughput(frames: int) -> float:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    path = os.ttyname(slave)
    cfg = default_config(shelves={"ports": [{"port": path}]})
    bridge = ShelfBridge(cfg, lambda e: None)
    await bridge.start()
    try:
        hello = P.Hello("bench", "SC-LC8-r2", (1, 0, 0), 8, 20).frame(1)
        os.write(master, hello)
        c = bridge.controllers[path]
        for _ in range(200):
            if c.hello is not None:
                break
            await asyncio.sleep(0.01)
        payload = [P.Samples(50 * i, 0, tuple(500_000 + (i * 7 + k) % 900 for k in range(8))).frame(i & 0xFF)
                   for i in range(2, frames + 2)]
        blob = b"".join(payload)
        base = c.frames
        done = threading.Event()

        def writer() -> None:
            view = memoryview(blob)
            while view:
                n = os.write(master, view[:65536])
                view = view[n:]
            done.set()

        t0 = time.perf_counter()
        th = threading.Thread(target=writer, daemon=True)
        th.start()
        while c.frames - base < frames and time.perf_counter() - t0 < 120:
            await asyncio.sleep(0.005)
        dt = time.perf_counter() - t0
        th.join(5)
        return (c.frames - base) / dt
    finally:
        await bridge.stop()
        os.close(master)
        os.close(slave)


def throughput(frames: int = 50_000) -> float:
    return asyncio.run(_throughput(frames))


def _sim_process(conn: Any, seconds: float, controllers: int, seed: int) -> None:
    """The controllers in their own process (own GIL), as real controllers are their own devices."""
    rng = random.Random(seed)
    writes: dict[tuple[str, int], int] = {}

    def trace_write(cid: str, frame: bytes, ns: int) -> None:
        try:
            raw = cobs.decode(frame[:-1])
        except cobs.DecodeError:
            return
        if len(raw) > 7 and raw[1] == P.Samples.TYPE:
            writes[(cid, struct.unpack_from("<I", raw, 3)[0])] = ns

    with SimulatedStore(seed=seed) as sim:
        sim.trace = trace_write
        cids = [f"bench-{i}" for i in range(controllers)]
        for cid in cids:
            sim.add_controller(cid, slot_count=8)
        units = {cid: list(sim.controllers[cid].physics.unit_g) for cid in cids}
        conn.send(([sim.port(c) for c in cids], units, time.time() - sim.t_phys()))
        conn.recv()  # go
        t_end = time.monotonic() + seconds
        busy: dict[tuple[str, int], float] = {}
        while time.monotonic() < t_end - 4.0:
            cid = rng.choice(cids)
            slot = rng.randrange(8)
            now = time.monotonic()
            for s2 in (slot, slot + 1):  # sometimes the neighbour is picked at the same moment
                if s2 >= 8 or busy.get((cid, s2), 0) > now or (s2 != slot and rng.random() > 0.3):
                    continue
                phys = sim.controllers[cid].physics
                n = rng.choice((1, 1, 1, 2, 3))
                tr = sim.pick(cid, s2, n) if phys.units[s2] > n else sim.put(cid, s2, 6)
                busy[(cid, s2)] = now + (tr.t1 - tr.t0) + 3.0
            if rng.random() < 0.1:
                sim.knock(rng.choice(cids))
            time.sleep(rng.uniform(0.1, 0.4))
        time.sleep(max(0.0, t_end - time.monotonic()))
        conn.send(({c: list(sim.truths[c]) for c in cids}, writes))
        conn.recv()  # the node has stopped reading: close the ptys


def _recv(conn: Any, proc: Any, timeout: float) -> Any:
    """Wait for the simulator process; fail loudly (not hang) if it died."""
    deadline = time.monotonic() + timeout
    while not conn.poll(0.1):
        if not proc.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"simulator process ended or hung (exit code {proc.exitcode}); run "
                               "`python -m firmware_bridge.sim` to see why")
    return conn.recv()


async def _pty_quality(seconds: float, controllers: int, seed: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_sim_process, args=(child, seconds, controllers, seed), daemon=True)
    proc.start()
    loop = asyncio.get_running_loop()
    try:
        ports, units, wall0 = await loop.run_in_executor(None, _recv, parent, proc, 60.0)
        seen: dict[str, list[Observed]] = {cid: [] for cid in units}
        events: list[tuple[str, int, int, int]] = []  # controller, t_ms, arrival ns, event ns

        def on_event(ev: ShelfEvent) -> None:
            seen.setdefault(ev.controller, []).append(Observed(ev.slot, ev.delta_units, ev.t - wall0))

        def trace(ev: ShelfEvent, port: str, ns: int, t_ms: int) -> None:
            events.append((ev.controller, t_ms, ns, time.perf_counter_ns()))

        cfg = default_config(
            layout={"zones": [{"id": "bench", "polygon": [[0, 0], [1, 0], [1, 1]]}],
                    "shelves": [{"id": cid, "zone": "bench", "position": [0.5, 0.5], "controller": cid}
                                for cid in units]},
            shelves={"ports": [{"port": p} for p in ports]})
        bridge = ShelfBridge(cfg, on_event, planogram=lambda shelf, slot: (None, units[shelf][slot]))
        bridge.trace = trace
        await bridge.start()
        await asyncio.sleep(1.5)  # handshake + the detector's first stable level
        parent.send("go")
        truths, writes = await loop.run_in_executor(None, _recv, parent, proc, seconds + 60.0)
        health = bridge.health()
        await bridge.stop()
        parent.send("done")
    finally:
        await loop.run_in_executor(None, proc.join, 10)
        if proc.is_alive():
            proc.kill()
    lat = [(ns - writes[(c, t)]) / 1000.0 for c, t, _, ns in events if (c, t) in writes]
    proc_us = [(ns - arr) / 1000.0 for _, _, arr, ns in events]
    total = Score(0, 0, 0, 0, 0.0)
    for cid, trs in truths.items():
        total = total + score(trs, seen.get(cid, []), seconds / 3600.0)
    return {"score": total, "latency_us": lat, "processing_us": proc_us, "health": health}


def pty_quality(seconds: float = 20.0, controllers: int = 4, seed: int = 1) -> dict[str, Any]:
    return asyncio.run(_pty_quality(seconds, controllers, seed))


def _offline_part(args: tuple[float, int]) -> Score:
    hours, seed = args
    return offline(hours, seed=seed)


def run_bench(shelf_hours: float = 24.0, pty_seconds: float = 20.0, frames: int = 50_000,
              seed: int = 1) -> dict[str, Any]:
    t0 = time.perf_counter()
    fps = throughput(frames)
    pq = pty_quality(pty_seconds, 4, seed)
    parts = max(1, round(shelf_hours))
    jobs = [(shelf_hours / parts, seed * 1000 + i) for i in range(parts)]
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers) as ex:
        scores = list(ex.map(_offline_part, jobs))
    off = Score(0, 0, 0, 0, 0.0)
    for s in scores:
        off = off + s
    ps: Score = pq["score"]
    lat = pq["latency_us"]
    return {
        "frames_per_s": round(fps, 1),
        "event_latency_p50_us": round(_pct(lat, 0.5), 1),
        "event_latency_p99_us": round(_pct(lat, 0.99), 1),
        "event_processing_p50_us": round(_pct(pq["processing_us"], 0.5), 1),
        "event_processing_p99_us": round(_pct(pq["processing_us"], 0.99), 1),
        "pick_detection_recall": round(off.recall, 5),
        "unit_count_accuracy": round(off.unit_accuracy, 5),
        "false_events_per_shelf_hour": round(off.false_per_shelf_hour, 4),
        "shelf_hours": round(off.shelf_hours, 2),
        "picks": off.truths,
        "false_events": off.false_events,
        "pty_seconds": pty_seconds,
        "pty_picks": ps.truths,
        "pty_recall": round(ps.recall, 5),
        "pty_unit_count_accuracy": round(ps.unit_accuracy, 5),
        "pty_false_events": ps.false_events,
        "pty_events_timed": len(lat),
        "bench_seconds": round(time.perf_counter() - t0, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }

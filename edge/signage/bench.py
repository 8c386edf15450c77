"""``shelfcast bench e2e``: shelf event at the serial port → screen update received.

What runs, all real: one pseudo-terminal per shelf controller; a writer thread
plays the controllers, writing protocol-v1 SAMPLES frames (8 slots, 20 Hz
controller clock) in which one slot at a time loses one unit of weight; the
node's ``ShelfBridge`` (pty reader, COBS/CRC decoder, per-slot detector) turns
them into ``ShelfEvent``; ``edge.fusion`` attributes each to a session (no
camera: the shelf's anonymous session); the ``Recommender`` ranks; the
``SignageRoom`` pushes over SSE to N screen clients and over MQTT to a local
Mosquitto, both read by another process (``benchclient``) that stamps every
arrival.

A slot's weight must be stable for ~0.75 s of *controller* time before the
detector accepts a change, so the controllers' clock runs faster than the
wall clock (a time-lapse) to reach 1,000 pick-ups per second with 4 shelves;
the detector, the bytes and the code path are the same.

Latency of one event = arrival at the screen client of the first set with a
``seq`` at least that of the first set published for the pick's visit after
the pick (picks coalesce: one ranking covers the picks of a visit that came in
the same loop iteration; and a later set covers an earlier one) − the
``write()`` of the SAMPLES frame that completed the pick. ``dropped`` = (event, screen client) pairs never covered,
plus clients the node dropped.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.app import Node, bundled_catalogue
from edge.config import NodeConfig
from edge.events import RecommendationSet, ShelfEvent, ShopperEvent

__all__ = ["BenchOptions", "run"]

from edge.signage.benchshelves import FRAME_MS, PERIOD, SLOTS

ZONES = ("produce", "dairy", "bakery", "drinks")


@dataclass(frozen=True)
class BenchOptions:
    rate: float = 1000.0
    duration: float = 10.0
    screens: int = 50  # connected SSE screen clients
    mqtt: bool = True
    shelves: int = 4
    model: bool = True  # False: rank with the popularity fallback only (isolates the rest of the path)
    stage2_skip_after_ms: float | None = None  # None: the config default of model.stage2_skip_after_ms
    samples_path: str | None = None  # write one JSON line per measured pick (its timeline) to this file
    arrivals: str = "lockstep"  # "staggered": each controller on its own clock phase (edge.signage.benchshelves)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 3)


def _cpu_s() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def bench_config(data_dir: Path, ports: list[str], mqtt_url: str | None, shelves: int,
                 stage2_skip_after_ms: float | None = None) -> NodeConfig:
    cat = [p for p in bundled_catalogue() if p.unit_weight_g and p.price]
    zones, shelf_rows, screens = [], [], []
    for z in range(shelves):
        zid = ZONES[z % len(ZONES)] + ("" if z < len(ZONES) else f"-{z}")
        x0 = 4.0 * z
        zones.append({"id": zid, "polygon": [[x0, 0], [x0 + 4, 0], [x0 + 4, 10], [x0, 10]]})
        slots = [{"slot": j, "sku": cat[(z * SLOTS + j) % len(cat)].sku} for j in range(SLOTS)]
        shelf_rows.append({"id": f"shelf-{z}", "zone": zid, "position": [x0 + 2, 1.0], "controller": f"bench-{z}",
                           "slots": slots})
        screens.append({"id": f"screen-{z}", "kind": "full", "position": [x0 + 2, 5.0], "zone": zid})
    raw = {
        "node": {"store_id": "bench", "node_id": "bench-node", "data_dir": str(data_dir)},
        "layout": {"zones": zones, "shelves": shelf_rows, "screens": screens},
        "shelves": {"enabled": True, "ports": [{"port": p} for p in ports]},
        "camera": {"enabled": False},
        "signage": {"host": "127.0.0.1", "port": 0},
        "mqtt": {"local": {"url": mqtt_url}},
    }
    if stage2_skip_after_ms is not None:
        raw["model"] = {"stage2_skip_after_ms": stage2_skip_after_ms}
    return NodeConfig.model_validate(raw)


class _Broker:
    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"user root\nlistener {self.port} 127.0.0.1\nallow_anonymous true\n"
                        # without it the broker's Nagle holds small retained sets: MQTT p99 18 ms -> 4 ms
                        "max_queued_messages 100000\nset_tcp_nodelay true\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start for the bench")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _run(opts: BenchOptions) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="shelfcast-bench-"))
    broker: _Broker | None = None
    client: subprocess.Popen[str] | None = None
    ctrl: subprocess.Popen[str] | None = None
    pairs = [os.openpty() for _ in range(opts.shelves)]
    for m, s in pairs:
        tty.setraw(m)
        tty.setraw(s)
    ports = [os.ttyname(s) for _, s in pairs]
    try:
        if opts.mqtt and shutil.which("mosquitto"):
            broker = _Broker(tmp)
        config = bench_config(tmp / "node", ports, broker.url if broker else None, opts.shelves,
                              opts.stage2_skip_after_ms)
        node = Node(config)
        await node.start()
        if node.recommender is not None:  # a simulation: learn its picks whatever the host's NTP state
            from edge.clock import SIMULATED

            node.recommender.fallback.watch_clock(SIMULATED)
        if not opts.model and node.recommender is not None:
            node.recommender.model = None
        model_version = getattr(node.recommender.model if node.recommender else None, "version", None)
        units_g = []
        for sh in config.layout.shelves:
            units_g.append([float(node.store.product(sl.sku or "").unit_weight_g or 250.0)  # type: ignore[union-attr]
                            for sl in sh.slots])
        bus = node.bus

        # -- attribution: fusion, as the node will run it (camera off: per-shelf sessions) --------------------
        fusion_room = next((r for r in node.rooms if callable(getattr(r, "on_shelf_event", None))), None)
        own_fusion = None
        if fusion_room is None:
            from edge.fusion import Fusion

            own_fusion = Fusion(config, bus.publish)
        # -- tracing: which set covers each pick ------------------------------------------------------------------
        # A tap on ShopperEvent, subscribed ahead of the recommend room, notes each pick's visit and the highest
        # set seq published so far; the first set published after it for that visit (any seq above) covers it,
        # whether ranking runs at once or at the end of the loop iteration (bursts coalesce: one set may cover
        # several picks). The shelf room calls ``trace`` right after the ShelfEvent was handled: that gives
        # the pick its controller, frame clock (matched to the write) and read time.
        last_seq = [0]
        waiting: dict[str, list[int]] = {}  # visit -> picks not covered yet
        seq0: list[int] = []  # per pick: sets up to this seq were out before it
        ev_sets: list[tuple[tuple[str, int], ...]] = []  # per pick: (screen, seq) of its covering set
        ranked: list[int] = []  # per pick: perf_counter_ns when its covering set was accepted (0: none yet)
        events: list[tuple[int, int, int]] = []  # (pick index, controller, t_ms)
        stamps: list[tuple[int, int, int]] = []  # (controller, t_ms, arrival ns)
        current = [-1]
        measuring = [False]

        def tap(ev: ShopperEvent) -> None:
            current[0] = -1
            if measuring[0] and ev.action == "pick":
                current[0] = len(seq0)
                seq0.append(last_seq[0])
                ev_sets.append(())
                ranked.append(0)
                waiting.setdefault(ev.session, []).append(current[0])

        def on_set(rs: RecommendationSet) -> None:
            last_seq[0] = max(last_seq[0], rs.seq)
            idxs = waiting.get(rs.session or "")
            if not idxs:
                return
            now = time.perf_counter_ns()
            keep = []
            for i in idxs:
                if rs.seq > seq0[i]:
                    ev_sets[i] = ((rs.screen, rs.seq),)
                    ranked[i] = now
                else:
                    keep.append(i)
            if keep:
                waiting[rs.session or ""] = keep
            else:
                del waiting[rs.session or ""]

        if own_fusion is not None:
            bus.subscribe(ShelfEvent, own_fusion.on_shelf_event)
        bus.subscribe(ShopperEvent, tap, first=True)
        bus.subscribe(RecommendationSet, on_set)
        port_index = {p: i for i, p in enumerate(ports)}
        shelves_room = node.shelves
        if shelves_room is None:
            raise RuntimeError("the node has no shelf room (shelves.enabled is off?)")

        def trace(ev: ShelfEvent, port: str, ns: int, t_ms: int) -> None:
            i, current[0] = current[0], -1
            if i >= 0 and measuring[0] and ev.delta_units < 0:
                events.append((i, port_index.get(port, -1), t_ms))
                stamps.append((port_index.get(port, -1), t_ms, ns))

        shelves_room.trace = trace
        signage = node.signage
        assert signage is not None and signage.port
        # the controllers, in their own process: handshake, first stable levels, then wait for "go"
        fds = [m for m, _ in pairs]
        ctrl = subprocess.Popen(
            [sys.executable, "-m", "edge.signage.benchshelves", "--fds", ",".join(map(str, fds)),
             "--units", json.dumps(units_g), "--rate", str(opts.rate), "--duration", str(opts.duration),
             "--arrivals", opts.arrivals],
            pass_fds=fds, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert ctrl.stderr is not None and ctrl.stdin is not None
        line = await asyncio.to_thread(ctrl.stderr.readline)
        if "warm" not in line:
            raise RuntimeError(f"bench controllers did not start: {line}{ctrl.stderr.read()}")
        online = sum(1 for c in shelves_room.controllers.values() if c.hello is not None)
        if online < opts.shelves:
            raise RuntimeError(f"only {online} of {opts.shelves} bench controllers completed the handshake")
        await asyncio.sleep(0.3)
        rss_before = _rss_mb()
        # -- the screens: SSE clients + an MQTT player in another process -----------------------------------
        screens = [s.id for s in config.layout.screens]
        cmd = [sys.executable, "-m", "edge.signage.benchclient", "--port", str(signage.port),
               "--clients", str(opts.screens)]
        if broker is not None:
            cmd += ["--mqtt", broker.url, "--topic", f"{config.mqtt.topic_prefix}/bench/bench-node/screens/+/"
                    "recommendations"]
        client = subprocess.Popen([*cmd, *screens], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        if opts.screens:
            assert client.stderr is not None
            line = await asyncio.to_thread(client.stderr.readline)
            if "ready" not in line:
                raise RuntimeError(f"bench screens did not start: {line}")
        await asyncio.sleep(0.3)
        connected = signage.hub.count()
        signage.latencies.clear()
        measuring[0] = True
        t_start = time.perf_counter()
        cpu0 = _cpu_s()
        loop_cpu0 = time.thread_time()  # this coroutine runs on the loop thread: the event loop's own CPU
        ctrl.stdin.write("go\n")
        ctrl.stdin.flush()
        line = await asyncio.to_thread(ctrl.stderr.readline)
        sent_s = time.perf_counter() - t_start
        cpu_s = _cpu_s() - cpu0
        loop_cpu_s = time.thread_time() - loop_cpu0
        expected = int(line.split()[1]) if line.startswith("done ") else 0
        deadline = time.monotonic() + 20  # a loaded machine may lag: wait for every pick to be detected
        while len(events) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # and for the last pushes to arrive
        measuring[0] = False
        rss = _rss_mb()
        node_push = signage.push_quantiles()
        hub_stats = dict(signage.hub.stats)
        mq = signage.mqtt.health()
        ctl_out, ctl_err = await asyncio.to_thread(ctrl.communicate, "", 30)
        if not ctl_out.strip():
            raise RuntimeError(f"the bench controllers failed: {ctl_err[-2000:]}")
        played = json.loads(ctl_out)
        out, _err = await asyncio.to_thread(client.communicate, "", 30)  # closing stdin ends the screens
        got: dict[str, Any] = json.loads(out) if out.strip() else {"sse": {}, "mqtt": {}, "connected": 0}
        detected = len(events)
        rec_stats = dict(node.recommender.stats) if node.recommender is not None else {}
        await node.stop()
    finally:
        for proc in (client, ctrl):
            if proc is not None and proc.poll() is None:
                proc.kill()
        if broker is not None:
            broker.stop()
        for m, s in pairs:
            with contextlib.suppress(OSError):
                os.close(m)
            with contextlib.suppress(OSError):
                os.close(s)
        shutil.rmtree(tmp, ignore_errors=True)

    # -- latency: write of the completing frame → first covering arrival ----------------------------------------
    by_screen: dict[str, list[tuple[list[int], list[int]]]] = {}
    for key, recs in got["sse"].items():
        screen = key.split("#", 1)[0]
        recs.sort()
        by_screen.setdefault(screen, []).append(([r[0] for r in recs], [r[1] for r in recs]))
    mq_by_screen: dict[str, tuple[list[int], list[int]]] = {}
    for screen, recs in got["mqtt"].items():
        recs.sort()
        mq_by_screen[screen] = ([r[0] for r in recs], [r[1] for r in recs])
    writes = {(ci, t_ms): ns for ci, t_ms, ns in played["writes"]}
    read_ms: list[float] = []
    ranked_ms: list[float] = []
    for ci, t_ms, arrived in stamps:
        w = writes.get((ci, t_ms))
        if w is not None:
            read_ms.append((arrived - w) / 1e6)
    sse_ms: list[float] = []
    mqtt_ms: list[float] = []
    missing = 0
    no_set = 0
    # burst position: the controllers write the frames of one round (same controller clock t_ms) back to back;
    # a pick's position is its rank, by the node's read time, among the picks completed in its round (1st..4th)
    rounds: dict[int, list[tuple[int, int]]] = {}
    for n, (_i, _ci, t_ms) in enumerate(events):
        rounds.setdefault(t_ms, []).append((stamps[n][2], n))
    position = [0] * len(events)
    for members in rounds.values():
        members.sort()
        for p, (_ns, n) in enumerate(members):
            position[n] = p
    sse_by_pos: list[list[float]] = []
    samples: list[dict[str, Any]] | None = [] if opts.samples_path else None
    for n, (i, ci, t_ms) in enumerate(events):
        w = writes.get((ci, t_ms))
        sets = ev_sets[i]
        if w is None or not sets:
            no_set += 1
            continue
        ranked_ms.append((ranked[i] - w) / 1e6)
        while len(sse_by_pos) <= position[n]:
            sse_by_pos.append([])
        pos_ms = sse_by_pos[position[n]]
        arrivals: list[int] = []
        for screen, seq in sets:
            for seqs, nss in by_screen.get(screen, ()):
                k = bisect.bisect_left(seqs, seq)
                if k == len(seqs):
                    missing += 1
                else:
                    sse_ms.append((min(nss[k:k + 1] or [0]) - w) / 1e6)
                    pos_ms.append(sse_ms[-1])
                    arrivals.append(nss[k])
            if broker is not None:
                seqs, nss = mq_by_screen.get(screen, ([], []))
                k = bisect.bisect_left(seqs, seq)
                if k < len(seqs):
                    mqtt_ms.append((nss[k] - w) / 1e6)
        if samples is not None:
            samples.append({"controller": ci, "t_ms": t_ms, "position": position[n], "write_ns": w,
                            "read_ns": stamps[n][2], "ranked_ns": ranked[i], "screen": sets[0][0],
                            "seq": sets[0][1], "sse_ns": arrivals})
    if samples is not None and opts.samples_path:
        with open(opts.samples_path, "w") as f:
            for rec in samples:
                f.write(json.dumps(rec) + "\n")
    return {
        "rate": opts.rate,
        "arrivals": opts.arrivals,
        "achieved_rate": round(detected / sent_s, 1) if sent_s else 0.0,
        "events": detected,
        "picks_written": played["picks"],
        "push_p50_ms": _pct(sse_ms, 0.50),
        "push_p99_ms": _pct(sse_ms, 0.99),
        "push_max_ms": _pct(sse_ms, 1.0),
        "mqtt_p50_ms": _pct(mqtt_ms, 0.50),
        "mqtt_p99_ms": _pct(mqtt_ms, 0.99),
        "read_p50_ms": _pct(read_ms, 0.50),  # write → the driver's reader thread has the frame
        "read_p99_ms": _pct(read_ms, 0.99),
        # the p99 of the picks that were the 1st, 2nd, ... of their controller round to reach the node (the
        # controllers write in lockstep: later ones wait for the earlier ones' ranking)
        "push_p99_ms_by_burst_position": [_pct(xs, 0.99) for xs in sse_by_pos],
        "ranked_p50_ms": _pct(ranked_ms, 0.50),  # write → detected, attributed, ranked, set accepted
        "ranked_p99_ms": _pct(ranked_ms, 0.99),
        "node_push_p50_ms": node_push["p50_ms"],
        "node_push_p99_ms": node_push["p99_ms"],
        "dropped": missing + hub_stats["dropped_slow"],
        "events_without_set": no_set,
        "picks_coalesced": rec_stats.get("coalesced"),  # picks ranked together with a later one of their visit
        # sets ranked by the model's first stage alone by the overload guard (model.stage2_skip_after_ms)
        "stage2_skipped": rec_stats.get("stage2_skipped"),
        "stage2_skip_after_ms": config.model.stage2_skip_after_ms,
        "screens_connected": connected,
        "sse_frames": hub_stats["frames_sent"],
        "sse_superseded": hub_stats["superseded"],
        "mqtt": bool(broker),
        "model_version": model_version or "fallback",
        "mqtt_published": mq.get("published"),
        "node_cpu_ms_per_event": round(cpu_s * 1000 / detected, 3) if detected else None,
        "node_cpu_util": round(cpu_s / sent_s, 2) if sent_s else None,  # cores busy in the node process
        # the event loop thread alone (no store writer, serial supervisors): the hot path's share
        "loop_cpu_ms_per_event": round(loop_cpu_s * 1000 / detected, 3) if detected else None,
        "rss_mb": rss,
        "rss_mb_before_screens": rss_before,
        # the screen clients' reading loop (the instrument) shares the machine: its CPU while reading, in cores
        "screens_cpu_util": got.get("cpu_util"),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews the latencies
        "cpus": os.cpu_count(),
        "duration_s": round(sent_s, 2),
        "shelves": opts.shelves,
        "controller_clock_speedup": round(opts.rate / (opts.shelves * SLOTS / PERIOD) * FRAME_MS / 1000, 1),
    }


def run(opts: BenchOptions) -> dict[str, Any]:
    return asyncio.run(_run(opts))

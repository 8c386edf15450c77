"""``shelfcast bench soak``: a real node run for a long time under a busy store's load; what grows, per hour.

What runs, all real: a node process (``shelfcast run``'s code, in a child that hands it the synthetic camera's
scene, which only ``shelfcast demo`` otherwise makes) on the bundled demo layout; its 8 shelf controllers are
simulators (``firmware_bridge``) behind real ptys, driven by simulated shoppers at a busy store's rate (several
picks/s); a local Mosquitto on a free loopback port is its cloud link, stopped and started again every few minutes
(outage cycles); SSE screen clients connect, read a while and disconnect (churn), and one connects and never
reads; every few minutes a burst of check-ins (new and returning customers); two signed model releases (the
shipped model re-versioned, ``edge.sync.publish``) are published at 1/3 and 2/3 of the run.

Every ``interval`` seconds it samples the node process: RSS, PSS (``/proc/PID/smaps_rollup``, if readable), open
fds, threads, asyncio tasks (``/api/health``), the SQLite database and WAL sizes, outbox rows, the data dir's
size and the bytes the node logged; and what a model release leaves in RAM, which the node child writes every
2 s: its anonymous memory, the ``Ranker`` objects alive (``models_in_ram``: serving + previous at most) and the
bytes glibc's malloc holds free (``malloc_free_mb``). The result gives each one's start and end value and its
growth per hour, a least-squares line over the second half of the run (start-up warm-up excluded), plus every
WARNING/ERROR line the node logged (counted by message) and how the node exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["SoakOptions", "fit_per_hour", "run_soak"]

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "shipped"
METRICS = ("rss_mb", "pss_mb", "fds", "threads", "asyncio_tasks", "db_mb", "wal_mb", "outbox_rows",
           "data_dir_mb", "log_bytes", "active_visits", "profiles_in_ram", "anon_mb", "models_in_ram",
           "malloc_free_mb")
MEMORY_ENV = "SHELFCAST_SOAK_MEMORY"  # where the node child writes what it holds in RAM (``_memory_watch``)
MEMORY_EVERY_S = 2.0
ADMIN_TOKEN = "soak-admin-token-0123456789"


@dataclass(frozen=True)
class SoakOptions:
    minutes: float = 45.0
    interval_s: float = 30.0  # between samples (shorter runs sample at least 6 times)
    shoppers: int = 8  # simulated shoppers at once; each acts every ~1.5 s: ~5 picks/s
    screen_clients: int = 6  # SSE clients in churn (plus one that never reads)
    outage_every_s: float = 240.0  # a cloud outage starts this often (shorter runs: one, at the middle)
    outage_s: float = 45.0
    checkin_every_s: float = 300.0
    checkin_burst: int = 40
    releases: int = 2
    seed: int = 0
    keep_dir: Path | None = None  # keep the run's files here (data dir, node log, broker log)


def fit_per_hour(points: list[tuple[float, float]]) -> float | None:
    """The least-squares slope of (t seconds, value) over the second half of the points, per hour."""
    pts = [(t, v) for t, v in points if v is not None]
    half = pts[len(pts) // 2:] if len(pts) >= 4 else pts
    if len(half) < 2:
        return None
    n = len(half)
    mt = sum(t for t, _ in half) / n
    mv = sum(v for _, v in half) / n
    den = sum((t - mt) ** 2 for t, _ in half)
    if den == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in half) / den * 3600.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


class _Broker:
    """A Mosquitto we own on a fixed port (the node reconnects to the same URL after each outage)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "data").mkdir(exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {workdir / 'data'}/\nautosave_interval 10\n"
                             "max_queued_messages 1000000\n"
                             f"log_dest file {workdir / 'mosquitto.log'}\n"
                             + ("user root\n" if os.geteuid() == 0 else ""))
        self.proc: subprocess.Popen[bytes] | None = None
        self.outages = 0

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if not _wait_port(self.port, 10):
            raise RuntimeError(f"mosquitto did not start on port {self.port} (log: {self.workdir}/mosquitto.log)")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def soak_config(tmp: Path, ports: list[str], cloud_url: str, public_key: Path, signage_port: int) -> Path:
    """The demo store's config for the soak node: its shelves on ``ports``, the cloud on ``cloud_url``."""
    import yaml

    raw = yaml.safe_load(resources.files("edge").joinpath("data/demo_store.yaml").read_text())
    raw["node"]["data_dir"] = str(tmp / "data")
    raw["node"]["node_id"] = "soak-node"
    raw["shelves"] = {"enabled": True, "ports": [{"port": p} for p in ports]}
    raw["signage"]["port"] = signage_port
    raw["signage"]["admin_token"] = ADMIN_TOKEN
    raw["mqtt"] = {"cloud": {"url": cloud_url}}
    raw["model"] = {"public_key": str(public_key)}
    (tmp / "salt").write_text("soak-retailer-salt-not-the-demo-one\n")
    raw["fusion"] = {"customer_salt": f"file:{tmp / 'salt'}"}
    path = tmp / "shelfcast.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# -- the node process ------------------------------------------------------------------------------------------


def node_main(config: str) -> int:
    """``shelfcast run --config CONFIG`` with the synthetic camera's scene handed to the node (``edge.demo``
    does the same in its own process) and the popularity fallback learning on the simulated clock."""
    from edge import app
    from edge.cli import main as cli_main

    orig_init, orig_start = app.Node.__init__, app.Node.start

    def init(self: app.Node, cfg: Any) -> None:
        orig_init(self, cfg)
        cam = cfg.camera
        if cam.enabled and cam.source == "synthetic":
            from edge.vision import SyntheticScene

            self.synthetic_scene = SyntheticScene(cfg.layout, n_shoppers=6, seed=1, width=cam.width,
                                                  height=cam.height, t0=time.time(), stop_s=(2.5, 6.0),
                                                  picks_per_stop=(1, 3), pick_probability=0.95,
                                                  start_at_shelves=True)

    async def start(self: app.Node) -> None:
        await orig_start(self)
        if self.recommender is not None:  # the host's NTP state is not the soak's subject
            from edge.clock import SIMULATED

            self.recommender.fallback.watch_clock(SIMULATED)

    app.Node.__init__ = init  # type: ignore[method-assign, assignment]
    app.Node.start = start  # type: ignore[method-assign]
    memory = os.environ.get(MEMORY_ENV)
    if memory:
        _memory_watch(Path(memory))
    trace = os.environ.get("SHELFCAST_SOAK_TRACEMALLOC")
    if trace:  # diagnosis: where does the memory go? each SIGUSR1 writes a tracemalloc snapshot to TRACE.N
        import tracemalloc

        tracemalloc.start(8)
        dumps = [0]

        def dump(_sig: int, _frame: Any) -> None:
            dumps[0] += 1
            tracemalloc.take_snapshot().dump(f"{trace}.{dumps[0]}")

        signal.signal(signal.SIGUSR1, dump)
    return cli_main(["run", "--config", config])


def _memory_watch(path: Path) -> None:
    """(The node child.) Every ``MEMORY_EVERY_S`` write to ``path`` what a release leaves in RAM: the ``Ranker``
    objects alive (a model dropped by a swap must be gone: not held by a reference) and the bytes glibc's
    ``malloc`` holds free (``mallinfo2``: a dropped model's memory the allocator kept instead of returning it)."""
    import ctypes
    import threading
    import weakref

    try:
        from edge.ranking.ranker import Ranker
    except ImportError:  # no model runtime: nothing to count
        return
    alive: weakref.WeakSet[Any] = weakref.WeakSet()
    orig = Ranker.__init__

    def init(self: Any, *a: Any, **kw: Any) -> None:
        orig(self, *a, **kw)
        alive.add(self)

    Ranker.__init__ = init  # type: ignore[method-assign]

    class _Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
        mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):  # not glibc >= 2.33
        mallinfo2 = None

    def watch() -> None:
        while True:
            versions = sorted(str(getattr(r, "version", "?")) for r in list(alive))
            free = mallinfo2().fordblks / (1 << 20) if mallinfo2 is not None else None
            anon = None
            with contextlib.suppress(OSError, ValueError):
                for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
                    if line.startswith("Anonymous:"):
                        anon = int(line.split()[1]) / 1024
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({"models": versions, "malloc_free_mb": free, "anon_mb": anon}))
            os.replace(tmp, path)
            time.sleep(MEMORY_EVERY_S)

    threading.Thread(target=watch, name="soak-memory", daemon=True).start()


def _memory(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


# -- sampling --------------------------------------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "Threads"):
                out[k] = int(v.split()[0])
    return out


def _pss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _dir_bytes(d: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(d):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _outbox_rows(db: Path) -> int | None:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
        try:
            return int(con.execute("SELECT count(*) FROM outbox").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return None


async def _http_json(port: int, path: str) -> Any:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}",
                                                   timeout=aiohttp.ClientTimeout(total=10)) as r:
        return await r.json()


async def _sample(pid: int, port: int, data_dir: Path, log: Path,
                  memory: Path | None = None) -> dict[str, float | None]:
    st = _proc_status(pid)
    mem = _memory(memory) if memory is not None else {}
    pss = _pss_kb(pid)
    try:
        fds: int | None = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    tasks = visits = profiles = None
    try:
        h = await _http_json(port, "/api/health")
        rooms = h.get("rooms", {})
        tasks = h.get("process", {}).get("asyncio_tasks")
        visits = rooms.get("recommend", {}).get("active_visits")
        profiles = rooms.get("store", {}).get("profiles")
    except Exception:
        pass
    db = data_dir / "shelfcast.db"
    mb = 1024 * 1024
    return {
        "rss_mb": round(st["VmRSS"] / 1024, 1) if "VmRSS" in st else None,
        "pss_mb": round(pss / 1024, 1) if pss is not None else None,
        "fds": fds,
        "threads": st.get("Threads"),
        "asyncio_tasks": tasks,
        "db_mb": round(_size(db) / mb, 3),
        "wal_mb": round(_size(Path(str(db) + "-wal")) / mb, 3),
        "outbox_rows": await asyncio.to_thread(_outbox_rows, db),
        "data_dir_mb": round(await asyncio.to_thread(_dir_bytes, data_dir) / mb, 3),
        "log_bytes": _size(log),
        "active_visits": visits,
        "profiles_in_ram": profiles,
        "anon_mb": round(mem["anon_mb"], 1) if isinstance(mem.get("anon_mb"), int | float) else None,
        "models_in_ram": len(mem["models"]) if isinstance(mem.get("models"), list) else None,
        "malloc_free_mb": round(mem["malloc_free_mb"], 1) if isinstance(mem.get("malloc_free_mb"), int | float)
        else None,
    }


# -- load ------------------------------------------------------------------------------------------------------


@dataclass
class _Counters:
    actions: int = 0
    sse_connects: int = 0
    sse_frames: int = 0
    sse_errors: int = 0
    silent_connects: int = 0
    checkins: int = 0
    checkin_errors: int = 0
    releases: list[dict[str, Any]] = field(default_factory=list)


async def _sse_churn(port: int, screens: list[str], rng: random.Random, c: _Counters, stop: asyncio.Event) -> None:
    """Connect to a screen's stream, read for 2-40 s, disconnect; again."""
    import aiohttp

    while not stop.is_set():
        screen = rng.choice(screens)
        hold = rng.uniform(2, 40)
        try:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/api/screens/{screen}/stream",
                                                           timeout=aiohttp.ClientTimeout(sock_connect=5)) as r:
                c.sse_connects += 1
                end = time.monotonic() + hold
                while time.monotonic() < end and not stop.is_set():
                    try:
                        line = await asyncio.wait_for(r.content.readline(), max(0.1, end - time.monotonic()))
                    except TimeoutError:
                        break
                    if not line:
                        break
                    if line.startswith(b"data:"):
                        c.sse_frames += 1
        except (TimeoutError, aiohttp.ClientError, OSError):
            c.sse_errors += 1
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(0.2, 3.0))


async def _silent_client(port: int, screen: str, c: _Counters, stop: asyncio.Event) -> None:
    """A screen that opens its stream and never reads (the node drops it; it comes back)."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            writer.write(f"GET /api/screens/{screen}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await writer.drain()
            c.silent_connects += 1
            while not stop.is_set() and not reader.at_eof() and not writer.is_closing():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5)
                if sock is not None and sock.fileno() < 0:
                    break
                # never read: only notice the node closing us (EOF shows once the buffer is read: peek cheaply)
                if _peer_closed(sock):
                    break
            writer.close()
        except OSError:
            pass
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 5)


def _peer_closed(sock: Any) -> bool:
    """True when the node has closed the connection (a peek sees EOF or an error), without reading data."""
    if sock is None:
        return True
    try:
        tcp_info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
        return tcp_info[0] not in (1,)  # TCP_ESTABLISHED = 1; CLOSE_WAIT etc. once the node closed it
    except OSError:
        return True


async def _checkins(port: int, rng: random.Random, screens: list[str], n: int, c: _Counters) -> None:
    import aiohttp

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            # half returning customers (a few hundred loyalty ids), half first-time ones
            cust = f"loyalty-{rng.randrange(300)}" if rng.random() < 0.5 else f"new-{rng.getrandbits(48):x}"
            try:
                async with s.post(f"http://127.0.0.1:{port}/api/checkin", headers=headers,
                                  json={"customer": cust, "screen": rng.choice(screens)},
                                  timeout=aiohttp.ClientTimeout(total=10)) as r:
                    await r.read()
                    if r.status == 200:
                        c.checkins += 1
                    else:
                        c.checkin_errors += 1
            except (TimeoutError, aiohttp.ClientError, OSError):
                c.checkin_errors += 1


def _publish_release(tmp: Path, key_path: Path, broker: _Broker, version: str) -> dict[str, Any]:
    from edge.sync.link import LinkSettings
    from edge.sync.publish import build_release, load_private_key, publish_release
    from edge.sync.topics import Topics

    d = tmp / "releases" / version
    shutil.copytree(SHIPPED, d)
    man = json.loads((d / "manifest.json").read_text())
    man["version"] = version
    (d / "manifest.json").write_text(json.dumps(man))
    rel = build_release("model", d, None, load_private_key(key_path))
    t0 = time.monotonic()
    publish_release(LinkSettings(url=broker.url, client_id=f"soak-publisher-{version}"),
                    Topics("shelfcast/v1", "demo-store", "soak-node"), rel)
    shutil.rmtree(d, ignore_errors=True)
    return {"version": version, "published_s": round(time.monotonic() - t0, 2), "bytes": len(rel.blob)}


# -- the run ---------------------------------------------------------------------------------------------------

_LEVEL = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")
_NUMS = re.compile(r"\d+(\.\d+)?")
_RUNNING = re.compile(rb"node \S+ running$", re.M)  # shelfcast run's line once every room has started


def _log_problems(log: Path) -> dict[str, Any]:
    """ERROR/CRITICAL/Traceback lines (all, up to 50) and WARNING lines counted by message (numbers masked)."""
    errors: list[str] = []
    warnings: dict[str, int] = {}
    with contextlib.suppress(OSError), log.open(errors="replace") as f:
        for line in f:
            m = _LEVEL.search(line)
            if not m:
                continue
            text = line.rstrip()
            if m.group(0) == "WARNING":
                msg = text.split(" WARNING ", 1)[-1]
                key = _NUMS.sub("N", msg)[:200]
                warnings[key] = warnings.get(key, 0) + 1
            elif len(errors) < 50:
                errors.append(text[:500])
    return {"errors": errors, "warnings": warnings}


async def _run(opts: SoakOptions) -> dict[str, Any]:
    from edge.demo import DemoOptions, ShopperSim, demo_config
    from edge.sync.publish import keygen
    from firmware_bridge.demo_shelves import DemoShelves

    if shutil.which("mosquitto") is None:
        raise RuntimeError("the soak needs mosquitto as the node's cloud link: `sudo apt-get install -y mosquitto`")
    tmp = Path(tempfile.mkdtemp(prefix="shelfcast-soak-")) if opts.keep_dir is None else opts.keep_dir
    tmp.mkdir(parents=True, exist_ok=True)
    total_s = opts.minutes * 60.0
    interval = min(opts.interval_s, max(2.0, total_s / 6))
    rng = random.Random(opts.seed)
    key_path, pub_path = keygen(tmp / "keys")
    broker = _Broker(tmp / "mosquitto")
    broker.start()
    layout_cfg = demo_config(DemoOptions(), tmp / "unused")
    shelves = DemoShelves(layout_cfg, seed=opts.seed)
    port = _free_port()
    cfg_path = soak_config(tmp, shelves.ports, broker.url, pub_path, port)
    data_dir = tmp / "data"
    log_path = tmp / "node.log"
    logf = log_path.open("wb")
    memory = tmp / "memory.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           MEMORY_ENV: str(memory)}
    node = subprocess.Popen([sys.executable, "-m", "edge.soak", "--node", str(cfg_path)], stdout=logf,
                            stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    c = _Counters()
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    exit_code: int | None = None
    t_start = time.monotonic()
    try:
        deadline = time.monotonic() + 90
        # serving: every room started (the "running" line comes after node.start()), not only the HTTP port
        while not (_wait_port(port, 0.5) and _RUNNING.search(log_path.read_bytes())):
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the soak node did not start serving; its log: {log_path}\n"
                                   + log_path.read_text(errors="replace")[-3000:])
        startup_s = time.monotonic() - t_start
        screens = [s.id for s in layout_cfg.layout.screens if s.kind == "full"]
        tasks = [asyncio.create_task(_sse_churn(port, screens, random.Random(opts.seed + i), c, stop))
                 for i in range(opts.screen_clients)]
        tasks.append(asyncio.create_task(_silent_client(port, screens[0], c, stop)))
        heat = {p.sku: p.sales_heat for p in _catalogue()}
        sim = ShopperSim(layout_cfg, heat, n=opts.shoppers, seed=opts.seed)
        t0 = time.monotonic()
        end = t0 + total_s
        # outage cycles: every outage_every_s (a short run: one, at its middle)
        if total_s >= 2 * opts.outage_every_s:
            outages = [(t, t + opts.outage_s) for t in
                       _frange(opts.outage_every_s * 0.75, total_s - opts.outage_s - 30, opts.outage_every_s)]
        else:
            outages = [(total_s / 2, total_s / 2 + min(opts.outage_s, total_s / 6))]  # after the releases
        # releases in the first half (at 1/6, 2/6 of the run for two): the second half, where the growth is fitted,
        # is steady state; what one release adds is reported per release (rss_step_mb)
        release_at = [total_s / 2 * (i + 1) / (opts.releases + 1) for i in range(opts.releases)]
        checkin_at = list(_frange(min(20.0, total_s / 4), total_s - 5, opts.checkin_every_s))
        next_sample = t0
        pending: list[asyncio.Task[Any]] = []
        while True:
            now = time.monotonic()
            el = now - t0
            if now >= next_sample or now >= end:
                s = await _sample(node.pid, port, data_dir, log_path, memory)
                s["t"] = round(el, 1)
                samples.append(s)
                next_sample += interval
                if now >= end:
                    break
            if node.poll() is not None:
                break
            for a in sim.step(time.time()):
                shelves.act(a)
                c.actions += 1
            for k in list(shelves._pending):  # not attached to a bus: nothing matches them up, keep it small
                q = shelves._pending[k]
                while len(q) > 4:
                    q.popleft()
            for o in outages:
                if o[0] <= el < o[1] and broker.up:
                    broker.stop()
                    broker.outages += 1
                elif el >= o[1] and el < o[1] + 5 and not broker.up:
                    broker.start()
            if release_at and el >= release_at[0] and broker.up:
                release_at.pop(0)
                version = f"soak-{opts.releases - len(release_at)}-{int(time.time())}"
                pending.append(asyncio.create_task(_release_task(tmp, key_path, broker, version, c, el)))
            if checkin_at and el >= checkin_at[0]:
                checkin_at.pop(0)
                pending.append(asyncio.create_task(_checkins(port, rng, screens, opts.checkin_burst, c)))
            await asyncio.sleep(0.05)
        stop.set()
        for t in pending:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 60)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        if node.poll() is None:
            node.send_signal(signal.SIGINT)
            try:
                exit_code = await asyncio.to_thread(node.wait, 60)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait(10)
                exit_code = None
        else:
            exit_code = node.returncode
        logf.close()
        shelves.close()
        if not broker.up:
            with contextlib.suppress(RuntimeError):
                broker.start()
        broker.stop()
    elapsed = time.monotonic() - t0
    series: dict[str, Any] = {}
    for m in METRICS:
        pts = [(float(s["t"]), float(s[m])) for s in samples if s.get(m) is not None]
        if not pts:
            series[m] = {"start": None, "end": None, "per_hour": None}
            continue
        slope = fit_per_hour(pts)
        series[m] = {"start": pts[0][1], "end": pts[-1][1], "max": max(v for _, v in pts),
                     "per_hour": round(slope, 3) if slope is not None else None}
    _release_steps(c.releases, samples)
    problems = _log_problems(log_path)
    result: dict[str, Any] = {
        "minutes": round(elapsed / 60, 2),
        "startup_s": round(startup_s, 1),
        "interval_s": interval,
        "samples": len(samples),
        "metrics": series,
        "node_exit": exit_code,
        "node_exited_cleanly": exit_code == 0,
        "load": {"shelf_actions": c.actions, "picks_per_s": round(c.actions / elapsed, 2) if elapsed else 0,
                 "sse_connects": c.sse_connects, "sse_frames": c.sse_frames, "sse_errors": c.sse_errors,
                 "silent_connects": c.silent_connects, "checkins": c.checkins, "checkin_errors": c.checkin_errors,
                 "outages": broker.outages, "releases": c.releases},
        "errors": problems["errors"],
        "warnings": problems["warnings"],
        "series": samples,
        "dir": str(tmp) if opts.keep_dir is not None else None,
    }
    if opts.keep_dir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


async def _release_task(tmp: Path, key: Path, broker: _Broker, version: str, c: _Counters, at: float) -> None:
    try:
        rel = await asyncio.to_thread(_publish_release, tmp, key, broker, version)
    except Exception as exc:
        rel = {"version": version, "error": str(exc)}
    c.releases.append({**rel, "at_s": round(at, 1)})


def _release_steps(releases: list[dict[str, Any]], samples: list[dict[str, Any]]) -> None:
    """Each release's RSS step: the last sample before it was published to the first one 20 s or more after."""
    for rel in releases:
        at = rel["at_s"]
        before = [s["rss_mb"] for s in samples if s["t"] <= at and s.get("rss_mb") is not None]
        after = [s["rss_mb"] for s in samples if s["t"] >= at + 20 and s.get("rss_mb") is not None]
        rel["rss_step_mb"] = round(after[0] - before[-1], 1) if before and after else None
        rel["rss_after_mb"] = after[0] if after else None
        models = [s["models_in_ram"] for s in samples if s["t"] >= at + 20 and s.get("models_in_ram") is not None]
        rel["models_in_ram_after"] = models[0] if models else None


def _catalogue() -> list[Any]:
    from edge.app import bundled_catalogue

    return list(bundled_catalogue())


def _frange(a: float, b: float, step: float) -> list[float]:
    out = []
    while a <= b:
        out.append(a)
        a += step
    return out


def run_soak(opts: SoakOptions) -> dict[str, Any]:
    return asyncio.run(_run(opts))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--node":
        sys.exit(node_main(sys.argv[2]))
    sys.exit("usage: python -m edge.soak --node CONFIG (run by `shelfcast bench soak`)")

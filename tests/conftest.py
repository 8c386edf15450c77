"""Shared fixtures: real services, cleaned up afterwards.

- ``mosquitto``: a real Mosquitto broker on a free loopback port, with its own
  config and persistence dir (``autosave_interval 1`` so broker-crash tests
  keep queued messages). It can be stopped, killed and restarted on the same
  port.
- ``pty_pair``: a real pseudo-terminal pair (master fd, slave path), raw mode.
- ``node_process``: starts real ``shelfcast run`` processes (``python -m edge run --config``), waits for
  "running", stops them with SIGINT; any left running are killed at the end.
- ``retained``: ``retained(port, topic, timeout=3.0)``, what a new MQTT subscriber gets as the retained message.
- ``node_thread``: ``with node_thread(config_path): ...``, a real ``edge.app.Node`` running in this process (its
  own event-loop thread) for the block.
- ``fake_clock``: ``fc = fake_clock(wall=None, mono=1000.0)``, wall and monotonic time the test moves, for the
  rooms that take an ``edge.clock.Clock`` (``fc.clock()``).
- ``demo_yaml``: ``demo_yaml(d, camera={...}, ...)``, the bundled demo store's config as ``d/shelfcast.yaml`` (data
  on ``d/data``), the given sections replaced whole.
- ``mqtt_spy``: ``spy = mqtt_spy(port, topic="#")``, a subscriber recording every (topic, payload), outbox batches
  decompressed.
- ``run_cli``: ``r = run_cli("model", "keygen", ...)``, the real command line in-process (``r.returncode``,
  ``r.stdout``, ``r.stderr``).
- ``doctor_json``: ``checks = doctor_json(config_path)``, the real ``shelfcast doctor --json`` in a subprocess, its
  checks by name.
- ``free_port``: ``free_port()``, a loopback TCP port free right now.
- ``visit_config`` / ``visit_run``: the demo store in-process for visit tests, a started node on a FakeClock;
  ``screen_session(node, screen="dairy-screen")``, the visit a screen serves (None: the zone's popular items);
  ``async with checkin_node(cfg, token) as (node, check_in)``, a started node and ``POST /api/checkin`` with the
  admin token (``await check_in(body)``: status, JSON); ``stored_checkins(cfg)``, the check-ins the node stored.
- ``admin_node_yaml``: ``admin_node_yaml(d, port=, cloud=, token=, salt=None)``, the demo store for a real
  ``shelfcast run`` with the screens port and an admin token; ``admin_http(port, path, body=None, token=)``, a GET
  (or POST of ``body`` with the token) to it: status, raw answer.

Fixtures skip only when the binary is missing on a developer's machine; CI sets
``SHELFCAST_REQUIRE_SERVICES=1`` which turns that skip into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tty
import urllib.error
import urllib.request
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml


def require_or_skip(what: str, fix: str) -> None:
    if os.environ.get("SHELFCAST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required in CI: {fix}")
    pytest.skip(f"{what} not available: {fix}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """``free_port()``: a TCP port nothing listens on at 127.0.0.1 right now (for a node, a browser's DevTools)."""
    return free_port


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class Mosquitto:
    """A real broker process we own. ``extra`` lines go into its config (TLS listeners, …)."""

    workdir: Path
    port: int
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        lines = [
            "user root",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 1",
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            f"log_dest file {self.workdir / 'mosquitto.log'}",
            *self.extra,
        ]
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> None:
        conf = self.write_config()
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port)
        except TimeoutError:
            log = (self.workdir / "mosquitto.log")
            raise RuntimeError(f"mosquitto did not start: {log.read_text() if log.exists() else ''}") from None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    if shutil.which("mosquitto") is None:
        require_or_skip("mosquitto", "install it: sudo apt-get install -y mosquitto")
    broker = Mosquitto(workdir=tmp_path / "mosquitto", port=free_port())
    broker.workdir.mkdir(parents=True, exist_ok=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


def _retained(port: int, topic: str, timeout: float = 3.0, *, protocol: int = mqtt.MQTTv5) -> bytes | None:
    """What a new subscriber on the broker at ``port`` gets as the retained message on ``topic`` (None: none
    within ``timeout``). ``protocol``: the subscriber's MQTT version (``mqtt.MQTTv311`` as mosquitto_sub)."""
    got: list[bytes] = []
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}", protocol=protocol)

    def on_message(cl: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got.append(msg.payload)
            done.set()

    c.on_message = on_message
    c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(timeout)
    c.loop_stop()
    c.disconnect()
    return got[-1] if got else None


@pytest.fixture
def retained() -> Callable[..., bytes | None]:
    """``retained(port, topic, timeout=3.0, protocol=mqtt.MQTTv5)``: the retained message a new subscriber gets,
    or None."""
    return _retained


@contextlib.contextmanager
def _node_thread(config_path: Path, timeout: float = 60.0) -> Iterator[None]:
    """A real node (``edge.app.Node`` on ``config_path``) started on its own event-loop thread for the block;
    stopped (``Node.stop``) and its loop closed after it."""
    from edge.app import Node
    from edge.config import load_config

    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        node = Node(load_config(config_path))
        await node.start()
        started.set()
        try:
            await stop.wait()
        finally:
            await node.stop()

    t = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    t.start()
    try:
        assert started.wait(timeout), f"the node on {config_path} did not start in {timeout:.0f} s"
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        t.join(timeout)
        loop.close()


@pytest.fixture
def node_thread() -> Callable[..., contextlib.AbstractContextManager[None]]:
    """``with node_thread(config_path, timeout=60.0): ...``: a real node running in this process for the block."""
    return _node_thread


class FakeClock:
    """Wall and monotonic time moved by the test: ``elapse`` moves both (time passes), ``step`` only the wall
    (NTP stepping a clock that had no real-time clock). ``wall`` None: now."""

    def __init__(self, wall: float | None = None, mono: float = 1000.0) -> None:
        self.w = time.time() if wall is None else wall
        self.m = mono

    def elapse(self, s: float) -> None:
        self.w += s
        self.m += s

    def step(self, s: float) -> None:
        self.w += s

    def clock(self) -> Any:
        """An ``edge.clock.Clock`` reading this fake."""
        from edge.clock import Clock

        return Clock(wall=lambda: self.w, mono=lambda: self.m)


@pytest.fixture
def fake_clock() -> type[FakeClock]:
    """``fake_clock(wall=None, mono=1000.0)``: a ``FakeClock`` (``.w``, ``.m``, ``elapse``, ``step``, ``clock()``)."""
    return FakeClock


VISIT_SALT = "acme-visit-salt-0f3a9c1e7d5b2468"


def _visit_config(tmp: Path, *, signage: dict[str, Any] | None = None, **fusion: Any) -> Any:
    """The demo store for an in-process visit test: camera, shelves and MQTT off (shelf events go on the bus; the
    test sets fusion's camera status), signage off unless ``signage`` gives its keys, the store flushing every
    20 ms, fusion with a retailer salt and ``fusion`` keys set."""
    from importlib import resources

    from edge.config import NodeConfig, parse_config

    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp / "data")
    raw["camera"]["enabled"] = False
    raw["shelves"]["enabled"] = False
    raw["signage"]["enabled"] = signage is not None
    raw["signage"].update(signage or {})
    raw["mqtt"]["local"]["url"] = None
    raw["store"]["flush_interval_ms"] = 20
    raw["fusion"].update(customer_salt=VISIT_SALT, **fusion)
    return NodeConfig.model_validate(raw)


@pytest.fixture
def visit_config() -> Callable[..., Any]:
    """``visit_config(tmp, signage=None, **fusion)``: a NodeConfig of the demo store for in-process visit tests."""
    return _visit_config


def _visit_run(cfg: Any, camera: str, scenario: Callable[[Any, FakeClock, list[Any]], Any]) -> None:
    """``await scenario(node, clock, picks)`` on a started in-process Node whose recommender runs on a FakeClock.
    ``camera``: "disabled" (no locator), "down" (fusion the locator, camera_ok False), "on" (camera_ok True)."""
    from edge.app import Node
    from edge.events import ShopperEvent

    async def main() -> None:
        node = Node(cfg)
        await node.start()
        try:
            fc = FakeClock()
            rec = node.recommender
            assert rec is not None and node.fusion is not None
            rec.clock = lambda: fc.w
            if camera != "disabled":
                rec.locator = node.fusion
            node.fusion.set_camera_status(camera == "on")
            picks: list[ShopperEvent] = []
            node.bus.subscribe(ShopperEvent, picks.append)
            await scenario(node, fc, picks)
        finally:
            await node.stop()

    asyncio.run(main())


@pytest.fixture
def visit_run() -> Callable[..., None]:
    """``visit_run(cfg, camera, scenario)``: ``await scenario(node, clock, picks)`` on a started in-process node
    (camera "disabled", "down" or "on"), stopped afterwards."""
    return _visit_run


def _screen_session(node: Any, screen: str = "dairy-screen") -> str | None:
    """The visit the screen serves now (signage asks this every second) and the session of the set it would push:
    the two agree and the set has items (asserted)."""
    rec = node.recommender
    assert rec is not None
    v = rec.serving(screen)
    rs = rec.refresh(screen)
    assert rs.session == (v.session if v is not None else None) and rs.items
    return rs.session


@pytest.fixture
def screen_session() -> Callable[..., str | None]:
    """``screen_session(node, screen="dairy-screen")``: the session the screen serves (None: popular items)."""
    return _screen_session


CheckInHttp = Callable[[dict[str, Any]], Awaitable[tuple[int, Any]]]


@contextlib.asynccontextmanager
async def _checkin_node(cfg: Any, token: str) -> AsyncIterator[tuple[Any, CheckInHttp]]:
    """A started in-process Node of ``cfg`` (signage on, ``token`` its admin token) and ``check_in(body)``: the
    real ``POST /api/checkin`` with the token, (status, JSON answer). The node is stopped on leaving."""
    import aiohttp

    from edge.app import Node

    node = Node(cfg)
    await node.start()
    try:
        assert node.signage is not None and node.recommender is not None and node.fusion is not None
        url = f"http://127.0.0.1:{node.signage.port}/api/checkin"
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async def check_in(body: dict[str, Any]) -> tuple[int, Any]:
                async with http.post(url, json=body, headers=auth) as r:
                    return r.status, await r.json()

            yield node, check_in
    finally:
        await node.stop()


@pytest.fixture
def checkin_node() -> Callable[..., contextlib.AbstractAsyncContextManager[tuple[Any, CheckInHttp]]]:
    """``async with checkin_node(cfg, token) as (node, check_in)``: a started node, ``await check_in(body)``."""
    return _checkin_node


def _stored_checkins(cfg: Any) -> list[tuple[str, str]]:
    """(session, customer) of every check-in in the events table of ``cfg``'s database, oldest first (read with
    plain sqlite3, after the node stopped)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(Path(cfg.node.data_dir) / "shelfcast.db")) as conn:
        return [(s, json.loads(p)["customer"]) for s, p in
                conn.execute("SELECT session, payload FROM events WHERE type = 'checkin' ORDER BY t")]


@pytest.fixture
def stored_checkins() -> Callable[[Any], list[tuple[str, str]]]:
    """``stored_checkins(cfg)``: [(session, customer)] of the check-ins the node of ``cfg`` stored, oldest first."""
    return _stored_checkins


def _node_cert(d: Path, *ips: str) -> tuple[Path, Path]:
    """A self-signed EC certificate for ``ips`` (and 127.0.0.1) and its key, PEM, in ``d`` (made by openssl, as a
    technician would)."""
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "node.crt", d / "node.key"
    san = ",".join(f"IP:{ip}" for ip in ("127.0.0.1", *ips))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "90", "-subj", "/CN=shelfcast-node",
                    "-addext", f"subjectAltName={san}"], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def node_cert() -> Callable[..., tuple[Path, Path]]:
    """``node_cert(dir, *lan_ips) -> (cert, key)``: the HTTPS tests' certificate."""
    return _node_cert


def _demo_yaml(d: Path, **sections: Any) -> Path:
    """``d/shelfcast.yaml``: the bundled demo store's config (``edge/data/demo_store.yaml``) with its data dir on
    ``d/data`` and each section given replaced whole (``camera={"enabled": False}``, ``node={...}``)."""
    from importlib import resources

    raw = yaml.safe_load(resources.files("edge").joinpath("data/demo_store.yaml").read_text())
    raw["node"]["data_dir"] = str(d / "data")
    raw.update(sections)
    path = d / "shelfcast.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def demo_yaml() -> Callable[..., Path]:
    """``demo_yaml(d, **sections)``: the demo store's config written to ``d/shelfcast.yaml`` (data on ``d/data``)."""
    return _demo_yaml


def _admin_node_yaml(d: Path, *, port: int, cloud: str | None, token: str, salt: str | None = None) -> Path:
    """The demo store for a real ``shelfcast run`` on ``d`` (store s1, node n1, camera and shelves off): the screens
    on 127.0.0.1:``port`` with ``token`` as admin token (``d/token``), fusion.customer_salt ``salt`` (``d/salt``;
    None: the demo salt) and a cloud link to ``cloud`` (None: no cloud link)."""
    (d / "token").write_text(token + "\n")
    sections: dict[str, Any] = {}
    if salt is not None:
        (d / "salt").write_text(salt + "\n")
        sections["fusion"] = {"customer_salt": f"file:{d / 'salt'}"}
    if cloud is not None:
        sections["mqtt"] = {"cloud": {"url": cloud}}
    return _demo_yaml(d, node={"store_id": "s1", "node_id": "n1", "data_dir": str(d / "data")},
                      camera={"enabled": False}, shelves={"enabled": False},
                      signage={"host": "127.0.0.1", "port": port, "admin_token": f"file:{d / 'token'}"}, **sections)


@pytest.fixture
def admin_node_yaml() -> Callable[..., Path]:
    """``admin_node_yaml(d, port=, cloud=, token=, salt=None)``: the demo store's config with screens and a token."""
    return _admin_node_yaml


def _admin_http(port: int, path: str, body: dict[str, Any] | None = None, *, token: str) -> tuple[int, bytes]:
    """A GET of ``path`` on the screens port, or with ``body`` a POST of it as JSON with the admin token: the
    status and the raw answer (an error status too)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=None if body is None else
                                 json.dumps(body).encode(), method="GET" if body is None else "POST",
                                 headers={} if body is None else {"Authorization": f"Bearer {token}",
                                                                   "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, bytes(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def admin_http() -> Callable[..., tuple[int, bytes]]:
    """``admin_http(port, path, body=None, token=)``: (status, raw answer) of a GET, or a POST with the token."""
    return _admin_http


class MqttSpy:
    """A subscriber on the broker at ``port`` that records (topic, payload) of every message on ``topic``; an outbox
    batch (zlib, first byte ``x``) is recorded decompressed. ``client`` can publish too."""

    def __init__(self, port: int, topic: str = "#") -> None:
        self._seen: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"spy-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        data = bytes(m.payload)
        if data[:1] == b"x":  # an outbox batch, zlib-compressed
            try:
                data = zlib.decompress(data)
            except zlib.error:
                pass
        with self._lock:
            self._seen.append((m.topic, data))

    def messages(self) -> list[tuple[str, bytes]]:
        """(topic, payload) of what arrived so far, in order."""
        with self._lock:
            return list(self._seen)

    def payloads(self) -> list[bytes]:
        return [d for _t, d in self.messages()]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def mqtt_spy() -> Iterator[Callable[..., MqttSpy]]:
    """``mqtt_spy(port, topic="#")``: a started ``MqttSpy``; ``close()`` it to stop recording (done at the end
    anyway)."""
    spies: list[MqttSpy] = []

    def make(port: int, topic: str = "#") -> MqttSpy:
        spies.append(MqttSpy(port, topic))
        return spies[-1]

    yield make
    for s in spies:
        s.close()


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """The CLI in-process (the same ``main`` the console script runs; a subprocess per call costs seconds of
    imports): exit code, stdout, stderr. stdin is not a terminal here, as in a script."""
    from edge.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


@dataclass
class PtyPair:
    master_fd: int
    slave_fd: int
    slave_path: str

    def close(self) -> None:
        for fd in (self.master_fd, self.slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def pty_pair() -> Iterator[PtyPair]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    pair = PtyPair(master, slave, os.ttyname(slave))
    try:
        yield pair
    finally:
        pair.close()


def _fill_disk(d: Path) -> Path:
    """Fill the filesystem of ``d`` to the last byte with one file; returns it (delete it to free the space)."""
    filler = d / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        while True:
            try:
                f.write(chunk)
            except OSError:
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return filler


@pytest.fixture
def fill_disk() -> Callable[[Path], Path]:
    """``fill_disk(d)``: fill the filesystem of ``d`` to the last byte (one file, returned)."""
    return _fill_disk


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB tmpfs, to make a disk really full (needs root: CI and the node image run the tests as root)."""
    if os.geteuid() != 0:
        if os.environ.get("SHELFCAST_REQUIRE_SERVICES") == "1":
            pytest.fail("mounting a 2 MB tmpfs needs root: run this test as root")
        pytest.skip("mounting a 2 MB tmpfs needs root")
    d = tmp_path / "tiny"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: nothing may pass by not running."""
    if os.environ.get("SHELFCAST_REQUIRE_SERVICES") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped and session.exitstatus == 0:
        print(f"\nCI: {skipped} test(s) skipped; every test must run in CI")
        session.exitstatus = 1


ROOT = Path(__file__).resolve().parents[1]


class NodeProcesses:
    """Real ``shelfcast run`` processes on a config file, from this checkout."""

    def __init__(self) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.started: list[subprocess.Popen[str]] = []

    @staticmethod
    def minimal_config(d: Path, extra: str = "") -> Path:
        """``d/n.yaml``: a node on ``d/data`` with no shelves and the screens port on a free one."""
        cfg = d / "n.yaml"
        cfg.write_text(f"node:\n  data_dir: {d / 'data'}\nshelves:\n  enabled: false\nsignage:\n  port: 0\n" + extra)
        return cfg

    def start(self, cfg: Path) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=self.env, cwd=ROOT)
        self.started.append(p)
        return p

    def wait_running(self, p: subprocess.Popen[str], timeout: float = 60.0) -> str:
        """Its output up to the "running" line (asserted)."""
        assert p.stdout is not None
        lines = []
        deadline = time.monotonic() + timeout
        for line in p.stdout:
            lines.append(line)
            if "running" in line or time.monotonic() > deadline:
                break
        out = "".join(lines)
        assert "running" in out, out
        return out

    def stop(self, p: subprocess.Popen[str]) -> str:
        """SIGINT, as Ctrl-C or systemd's stop; the rest of its output."""
        if p.poll() is not None:
            return p.communicate()[0] or ""
        p.send_signal(signal.SIGINT)
        try:
            return p.communicate(timeout=60)[0] or ""
        except subprocess.TimeoutExpired:
            p.kill()
            return p.communicate()[0] or ""


@pytest.fixture
def node_process() -> Iterator[NodeProcesses]:
    procs = NodeProcesses()
    try:
        yield procs
    finally:
        for p in procs.started:
            if p.poll() is None:
                p.kill()
                p.communicate()


def _doctor_json(cfg: Path) -> dict[str, dict[str, str]]:
    r = subprocess.run([sys.executable, "-m", "edge.doctor", "doctor", "--config", str(cfg), "--json",
                        "--no-firmware", "--timeout", "1"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert r.returncode in (1, 2), r.stderr  # other checks fail on a test machine (no node running)
    return {c["name"]: c for c in json.loads(r.stdout)["checks"]}


@pytest.fixture
def doctor_json() -> Callable[[Path], dict[str, dict[str, str]]]:
    """``doctor_json(cfg)``: ``shelfcast doctor --config cfg --json --no-firmware --timeout 1`` run from this
    checkout in a subprocess; its checks by name (``{"status", "detail", "fix", ...}``). Exit 1 or 2 is asserted:
    other checks fail on a test machine, where no node runs."""
    return _doctor_json

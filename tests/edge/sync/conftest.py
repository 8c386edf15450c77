"""Fixtures for the sync tests: node configs, signing keys, the fake model loader, an upstream listener."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.bus import Bus
from edge.config import NodeConfig
from edge.store import Store
from edge.sync.link import LinkSettings
from edge.sync.outbox import decode_payload
from edge.sync.publish import publish_release
from edge.sync.room import SyncRoom
from edge.sync.topics import Topics

HERE = Path(__file__).parent


def load_helpers(name: str, filename: str) -> ModuleType:
    """The file ``filename`` beside this conftest, loaded as module ``name`` (tests cannot import each other under
    --import-mode=importlib)."""
    spec = importlib.util.spec_from_file_location(name, HERE / filename)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def fakes() -> ModuleType:
    return load_helpers("sync_test_fakes", "fakes.py")


@pytest.fixture(scope="session")
def tls() -> ModuleType:
    """test_tls.py's helpers (test PKI, a TLS listener on the broker, the link's error): ``tls.start_tls`` ..."""
    return load_helpers("sync_test_tls_helpers", "test_tls.py")


class Keys:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.private = Ed25519PrivateKey.generate()
        self.other = Ed25519PrivateKey.generate()
        self.public_path = root / "release.pub"
        self.public_path.write_bytes(self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.private_path = root / "release.key"
        self.private_path.write_bytes(self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


@pytest.fixture
def node_config(tmp_path: Path) -> Callable[..., NodeConfig]:
    def make(url: str | None, *, data_dir: Path | None = None, public_key: Path | None = None,
             node_id: str = "node-1", sync: dict[str, Any] | None = None, **mqtt_extra: Any) -> NodeConfig:
        raw: dict[str, Any] = {
            "node": {"data_dir": str(data_dir or tmp_path / "node"), "store_id": "s1", "node_id": node_id},
            "mqtt": {"cloud": {"url": url, **mqtt_extra}, "sync": sync or {}},
            "model": {"public_key": str(public_key) if public_key else None},
            "signage": {"enabled": False},
            "shelves": {"enabled": False},
        }
        return NodeConfig.model_validate(raw)

    return make


def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``pred`` every 50 ms until it returns something truthy (returned) or ``timeout`` passes (its last
    value is returned: the caller asserts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    """``wait_for(pred, timeout=10.0)``: ``pred()``'s first truthy value, or its last one after ``timeout``."""
    return wait_for


class Upstream:
    """Subscribes to everything under shelfcast/v1/# and decodes batch envelopes."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.raw: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"upstream-{time.monotonic_ns()}",
                             protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        ready = threading.Event()
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_connect = lambda c, *a: c.subscribe("shelfcast/v1/#", qos=1)
        self.c.connect(host, int(port))
        self.c.loop_start()
        assert ready.wait(5), "upstream listener did not subscribe"

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.raw.append((msg.topic, msg.payload, bool(msg.retain)))
            try:
                env = decode_payload(msg.payload, msg.properties)
            except ValueError:
                return
            for it in env["items"]:
                self.items.append((msg.topic, it))

    def of(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [it for t, it in self.items if t.endswith(suffix)]

    def wait_for(self, pred: Callable[[], Any], timeout: float = 10.0) -> Any:
        return wait_for(pred, timeout)

    def wait_step(self, version: str, step: str, timeout: float = 15.0) -> list[tuple[str, bool, str]]:
        """The release status reports of ``step`` for ``version`` (asserted: at least one within ``timeout``)."""
        got = self.wait_for(lambda: [s for s in release_steps(self, version) if s[0] == step], timeout)
        assert got, f"no {step!r} report for {version}; got {release_steps(self, version)}"
        return got  # type: ignore[no-any-return]

    def last_raw(self, suffix: str) -> bytes | None:
        with self._lock:
            got = [p for t, p, _ in self.raw if t.endswith(suffix)]
        return got[-1] if got else None

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def upstream(mosquitto: Any) -> Iterator[Upstream]:
    u = Upstream(mosquitto.url)
    try:
        yield u
    finally:
        u.close()


def release_steps(up: Upstream, version: str) -> list[tuple[str, bool, str]]:
    return [(r["step"], r["ok"], r["detail"]) for r in up.of("/release/status") if r["version"] == version]


@pytest.fixture
def steps() -> Callable[[Upstream, str], list[tuple[str, bool, str]]]:
    return release_steps


RELEASE_TOPICS = Topics("shelfcast/v1", "s1", "node-1")  # the node node_config() makes (store s1)


@pytest.fixture
def node(mosquitto: Any, node_config: Callable[..., NodeConfig], keys: Keys, start_node: Callable[..., Any]) -> Any:
    """A running node (s1 / node-1) on the test broker that trusts ``keys``: what the release tests publish to."""
    return start_node(node_config(mosquitto.url, public_key=keys.public_path))


@pytest.fixture
def publish(mosquitto: Any) -> Callable[..., None]:
    """``publish(rel, **kw)``: publish a built release (``build_release``) for store s1 on the test broker."""
    def pub(rel: Any, **kw: Any) -> None:
        publish_release(LinkSettings(url=mosquitto.url, client_id=f"publisher-{time.monotonic_ns()}"),
                        RELEASE_TOPICS, rel, **kw)

    return pub


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


class Running:
    """A SyncRoom on its own event-loop thread, serving a fake model through a recommender stand-in."""

    def __init__(self, config: Any, fakes: Any, *, model: Any = None, **room_kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.store = Store(Path(config.node.data_dir) / "shelfcast.db", flush_interval_ms=20).open()
        self.rec = SimpleNamespace(model=model if model is not None else fakes.FakeScorer("v1", "good"))
        loader = room_kw.pop("loader", fakes.load)
        self.room = SyncRoom(config, self.store, Bus(), recommender=self.rec, loader=loader, **room_kw)
        if loader is fakes.load:
            self.room.canary.set_requests(fakes.canary_requests())
        self.run(self.room.start())
        assert self.room.link.wait_connected(10), self.room.link.last_error

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.room.stop())
        self.store.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)



@pytest.fixture
def start_node(fakes: ModuleType) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(config: NodeConfig, **kw: Any) -> Running:
        r = Running(config, fakes, **kw)
        started.append(r)
        return r

    yield start
    for r in reversed(started):
        r.close()


class Harness:
    """``node_harness.py`` as a real node process (its own Python, the fake model): ``start`` one on a config,
    read the status file it keeps (``status``), wait until that status shows something (``wait_status``)."""

    @staticmethod
    def start(config: NodeConfig, tmp: Path, st: Path) -> subprocess.Popen[bytes]:
        """Write ``config`` to ``tmp/node-config.json`` and start the node on it, its status going to ``st``."""
        cfg = tmp / "node-config.json"
        cfg.write_text(config.model_dump_json(by_alias=True))
        return subprocess.Popen([sys.executable, str(HERE / "node_harness.py"), str(cfg), "--status", str(st),
                                 "--fake-model"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @staticmethod
    def status(path: Path) -> dict[str, Any]:
        """The node's last status (``{}`` while there is none, or it is being rewritten)."""
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    @staticmethod
    def wait_status(st: Path, proc: subprocess.Popen[bytes], pred: Callable[[dict[str, Any]], Any], timeout: float,
                    what: str) -> dict[str, Any]:
        """Poll ``st`` every 50 ms until a status written by ``proc`` (its ``pid``) satisfies ``pred``, and return
        it; fails at once if ``proc`` exits meanwhile, and after ``timeout`` with the last status seen."""
        deadline = time.monotonic() + timeout
        s: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the node exited ({proc.returncode}) waiting for {what}"
            s = Harness.status(st)
            if s.get("pid") == proc.pid and pred(s):
                return s
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last status {s}")


@pytest.fixture
def harness() -> type[Harness]:
    """``harness.start(config, tmp_path, st)``: a real node process (``node_harness.py``); ``harness.status(st)``;
    ``harness.wait_status(st, proc, pred, timeout, what)``."""
    return Harness

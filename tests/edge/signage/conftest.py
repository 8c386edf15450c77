"""A real node (demo layout, temp data dir, free HTTP port) on its own event-loop thread, and headless Chromium.

Tests talk to it the way screens and players do: HTTP, SSE, MQTT, a browser.
Events go in through ``run.publish`` (thread-safe: scheduled on the node's loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from edge.app import Node
from edge.config import NodeConfig, parse_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's Chromium (skips on a developer machine without it; a failure in CI)."""
    if not os.path.exists(CHROMIUM) or shutil.which("chromium") is None:
        if os.environ.get("SHELFCAST_REQUIRE_SERVICES") == "1":
            pytest.fail("chromium is required in CI: sudo apt-get install -y chromium")
        pytest.skip("chromium not available: sudo apt-get install -y chromium")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    """Headless Chromium driven by Playwright (no browser downloads), one per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def demo_config(tmp: Path, mqtt_url: str | None = None, extra_screens: tuple[dict[str, Any], ...] = (),
                **signage: Any) -> NodeConfig:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp)
    for sc in extra_screens:  # a new screen, or one that replaces the demo's screen of that id
        raw["layout"]["screens"] = [s for s in raw["layout"]["screens"] if s["id"] != sc["id"]] + [sc]
    raw["signage"].update({"port": 0, **signage})
    raw["mqtt"]["local"]["url"] = mqtt_url
    raw["store"]["flush_interval_ms"] = 20
    return NodeConfig.model_validate(raw)


class RunningNode:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.node = Node(config)
        self._thread = threading.Thread(target=self.loop.run_forever, name="node-loop", daemon=True)
        self._thread.start()
        self.call(self.node.start())

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a plain function on the node's loop and return its result."""
        async def wrap() -> Any:
            return fn(*args)
        return self.call(wrap())

    def publish(self, ev: Any) -> None:
        self.sync(self.node.bus.publish, ev)

    @property
    def port(self) -> int:
        assert self.node.signage is not None and self.node.signage.port
        return int(self.node.signage.port)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET",
            body: bytes | None = None) -> tuple[int, str, str]:
        req = urllib.request.Request(self.base + path, headers=headers or {}, method=method, data=body)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read().decode()

    def json(self, path: str) -> Any:
        status, _, text = self.get(path)
        assert status == 200, text
        return json.loads(text)

    def stop(self) -> None:
        try:
            self.call(self.node.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., RunningNode]]:
    nodes: list[RunningNode] = []

    def make(config: NodeConfig | None = None, mqtt_url: str | None = None,
             extra_screens: tuple[dict[str, Any], ...] = (), **signage: Any) -> RunningNode:
        n = RunningNode(config or demo_config(tmp_path / f"node{len(nodes)}", mqtt_url, extra_screens, **signage))
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.stop()

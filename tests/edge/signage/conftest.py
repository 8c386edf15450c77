"""A real node (demo layout, temp data dir, free HTTP port) on its own event-loop thread, and headless Chromium.

Tests talk to it the way screens and players do: HTTP, SSE, MQTT, a browser.
Events go in through ``run.publish`` (thread-safe: scheduled on the node's loop).
``kiosk(url)`` starts the kiosk launcher (deploy/shelfcast-kiosk) the way systemd does, with real Chromium.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
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
KIOSK_LAUNCHER = Path(__file__).resolve().parents[3] / "deploy" / "shelfcast-kiosk"
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


def _lan_address() -> str | None:
    """A non-loopback IPv4 address of this machine (the source address of its default route), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))  # TEST-NET-1: nothing is sent
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


@pytest.fixture
def lan() -> str:
    """A non-loopback IPv4 address of this machine, to bind a node to and connect from as a device on the store
    network would (the node's own loopback clients are treated apart); skips on a machine without one."""
    addr = _lan_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    return addr


class SseStream:
    """A screen's SSE stream on a raw socket (HTTP/1.1, chunked: the frames are read as plain text), from
    ``source`` when given (a device on the store network). ``status`` and ``head`` are the response's; ``buf`` is
    everything read so far."""

    def __init__(self, host: str, port: int, screen: str = "dairy-screen", source: str | None = None) -> None:
        self.sock = socket.socket()
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(10)
        self.sock.connect((host, port))
        self.sock.sendall(f"GET /api/screens/{screen}/stream HTTP/1.1\r\nHost: x\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
        self.buf = b""
        assert self._read(b"\r\n\r\n", 0, 10), f"no response head within 10 s: {self.buf[:300]!r}"
        head = self.buf.split(b"\r\n\r\n", 1)[0]
        self.status = int(head.split(b" ", 2)[1])
        self.head = head.decode("latin-1")

    def _read(self, needle: bytes, start: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while needle not in self.buf[start:] and time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            self.buf += chunk
        return needle in self.buf[start:]

    def wait_for(self, needle: bytes, timeout: float = 10) -> bool:
        """``needle`` anywhere in what was read, reading on for up to ``timeout`` seconds."""
        return self._read(needle, 0, timeout)

    def more(self, needle: bytes, timeout: float = 10) -> bool:
        """``needle`` in what arrives from now on, within ``timeout`` seconds."""
        return self._read(needle, len(self.buf), timeout)

    def refused_body(self) -> bytes:
        """The rest of a refused response, until the server closes the connection."""
        self.sock.settimeout(10)
        while chunk := self.sock.recv(65536):
            self.buf += chunk
        return self.buf.split(b"\r\n\r\n", 1)[1]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sse_stream() -> Iterator[Callable[..., SseStream]]:
    """``sse_stream(host, port, screen="dairy-screen", source=None)``: a screen's live stream on a raw socket
    (``status``, ``head``, ``buf``, ``wait_for(needle)``, ``more(needle)``, ``refused_body()``, ``close()``);
    any left open are closed at the end."""
    opened: list[SseStream] = []

    def open_stream(host: str, port: int, screen: str = "dairy-screen", source: str | None = None) -> SseStream:
        st = SseStream(host, port, screen, source)
        opened.append(st)
        return st

    yield open_stream
    for st in opened:
        st.close()


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


KIOSK_WRAPPER = """#!{python}
import os, sys
args = [a for a in sys.argv[1:] if not a.startswith("--ozone-platform")]
with open(os.environ["KIOSK_ARGS_FILE"], "a") as f:  # one line per browser start, its arguments NUL-separated
    f.write("\\x00".join(args) + "\\n")
os.execv({chromium!r}, [{chromium!r}, "--headless", "--no-sandbox", "--disable-gpu",
         "--remote-debugging-port=" + os.environ["KIOSK_CDP_PORT"], *args])
"""


class Kiosk:
    """deploy/shelfcast-kiosk, started as systemd would (its own process group, output to a log), as on a Pi with
    a desktop session (``DISPLAY`` set: no ``cage``). ``chromium`` on its PATH is a small wrapper that starts
    Debian's Chromium headless with a DevTools port on loopback, through which a test looks at the screen
    (Playwright ``connect_over_cdp``)."""

    def __init__(self, tmp: Path, chromium: str, url: str | None, cdp: int) -> None:
        bindir = tmp / "bin"
        bindir.mkdir(parents=True)
        wrapper = bindir / "chromium"
        wrapper.write_text(KIOSK_WRAPPER.format(python=sys.executable, chromium=chromium))
        wrapper.chmod(0o755)
        self.args_file = tmp / "chromium-args.txt"
        self.cdp = cdp
        self.run = tmp / "run"
        env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "DISPLAY": ":kiosk-test",
               "RUNTIME_DIRECTORY": str(self.run), "KIOSK_ARGS_FILE": str(self.args_file),
               "KIOSK_CDP_PORT": str(self.cdp)}
        env.pop("WAYLAND_DISPLAY", None)
        env.pop("SHELFCAST_KIOSK_URL", None)
        if url is not None:
            env["SHELFCAST_KIOSK_URL"] = url
        self.log_path = tmp / "kiosk.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(["sh", str(KIOSK_LAUNCHER)], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.monotonic()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def browser_starts(self) -> int:
        return len(self.args_file.read_text().splitlines()) if self.args_file.exists() else 0

    def last_args(self) -> list[str]:
        """The arguments the launcher gave the browser it started last."""
        return self.args_file.read_text().splitlines()[-1].split("\x00")

    def screen(self, pw: Any, within: float = 20) -> Any:
        """The page on screen now, over a fresh DevTools connection (a crashed page's old handle is dead); fails
        if no browser shows up within ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            try:
                b = pw.chromium.connect_over_cdp(f"http://127.0.0.1:{self.cdp}", timeout=2000)
                pages = [p for c in b.contexts for p in c.pages]
                if pages:
                    return pages[0]
            except Exception:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no browser on the screen within {within:.0f} s (launcher exit code "
                                     f"{self.proc.poll()}); its output: {self.output()[-800:]!r}")
            time.sleep(0.3)

    @staticmethod
    def shown(page: Any) -> dict[str, Any]:
        """What a shopper sees: the address, the page's text, and the signage page's mode and product."""
        return dict(page.evaluate("""() => ({
            url: location.href, text: document.body ? document.body.innerText : '',
            card: !!document.getElementById('shelfcast-waiting'),
            mode: (document.getElementById('app') || {dataset: {}}).dataset.mode || null,
            link: (document.getElementById('app') || {dataset: {}}).dataset.link || null,
            seq: (document.getElementById('app') || {dataset: {}}).dataset.seq || null,
            mark: window.__kioskTestMark || null,
            strip: !!document.querySelector('#app.strip'),
            hero: (document.querySelector('#hero .name') || {}).textContent || '',
            connects: window.__shelfcast ? window.__shelfcast.connects : null,
            messages: window.__shelfcast ? window.__shelfcast.messages : null })"""))

    def wait_for(self, pw: Any, what: str, check: Callable[[dict[str, Any]], bool], within: float) -> dict[str, Any]:
        """Poll what the screen shows (a fresh connection each time) until ``check`` holds; fails naming it."""
        deadline = time.monotonic() + within
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = self.shown(self.screen(pw, within=max(1.0, deadline - time.monotonic())))
                if check(last):
                    return last
            except AssertionError as exc:  # no browser at all (the launcher ended)
                last = {"error": str(exc)[:300]}
                break
            except Exception as exc:  # the page is navigating or has just crashed
                last = {"error": str(exc)[:200]}
            time.sleep(0.3)
        raise AssertionError(f"the screen did not show {what} within {within:.0f} s; it showed {last!r}; "
                             f"the kiosk said: {self.output()[-1200:]!r}")

    def chromium_processes(self) -> dict[int, str]:
        """This kiosk's Chromium processes (its profile on the command line): pid -> command line (renderers
        forked by the zygote rewrite theirs into one string)."""
        found = {}
        mark = f"--user-data-dir={self.run}/profile"
        for d in Path("/proc").iterdir():
            try:
                cmd = (d / "cmdline").read_bytes().decode(errors="replace").replace("\x00", " ") + " "
            except OSError:
                continue
            if d.name.isdigit() and mark + " " in cmd:
                found[int(d.name)] = cmd
        return found

    def renderer_pids(self) -> list[int]:
        return [p for p, c in self.chromium_processes().items() if " --type=renderer " in c]

    def browser_pid(self) -> int:
        pids = [p for p, c in self.chromium_processes().items() if " --type=" not in c
                and "kiosk-watchdog.py" not in c]  # the watchdog's own arguments name the profile too
        assert len(pids) == 1, f"not one Chromium browser process: {pids}"
        return pids[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def kiosk(tmp_path: Path, chromium: str, free_port: Callable[[], int]) -> Iterator[Callable[[str | None], Kiosk]]:
    """``kiosk(url)``: the kiosk launcher showing ``url`` (None: SHELFCAST_KIOSK_URL unset), stopped at the end.
    Its helpers: ``screen(pw)``, ``shown(page)``, ``wait_for(pw, what, check, within)``, ``output()``,
    ``browser_starts()``, ``last_args()``, ``browser_pid()``, ``renderer_pids()``, ``stop()``."""
    started: list[Kiosk] = []

    def start(url: str | None) -> Kiosk:
        k = Kiosk(tmp_path / f"kiosk{len(started)}", chromium, url, free_port())
        started.append(k)
        return k

    yield start
    for k in started:
        k.stop()

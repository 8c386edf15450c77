"""The kiosk launcher (deploy/shelfcast-kiosk) with real Chromium: what the screen shows before the node is up.

The launcher runs as on a Pi with a desktop session (``DISPLAY`` set, so it execs the browser without
``cage``); ``chromium`` on its PATH is a small wrapper that starts Debian's Chromium headless with a DevTools
port, so the test can look at the screen through Playwright (``connect_over_cdp``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

LAUNCHER = Path(__file__).resolve().parents[3] / "deploy" / "shelfcast-kiosk"

WRAPPER = """#!{python}
import os, sys
args = [a for a in sys.argv[1:] if not a.startswith("--ozone-platform")]
with open(os.environ["KIOSK_ARGS_FILE"], "w") as f:
    f.write("\\n".join(args))
os.execv({chromium!r}, [{chromium!r}, "--headless", "--no-sandbox", "--disable-gpu",
         "--remote-debugging-port=" + os.environ["KIOSK_CDP_PORT"], *args])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Kiosk:
    def __init__(self, tmp: Path, chromium: str, url: str) -> None:
        bindir = tmp / "bin"
        bindir.mkdir(parents=True)
        wrapper = bindir / "chromium"
        wrapper.write_text(WRAPPER.format(python=sys.executable, chromium=chromium))
        wrapper.chmod(0o755)
        self.args_file = tmp / "chromium-args.txt"
        self.cdp = free_port()
        self.run = tmp / "run"
        env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "DISPLAY": ":kiosk-test",
               "SHELFCAST_KIOSK_URL": url, "RUNTIME_DIRECTORY": str(self.run),
               "KIOSK_ARGS_FILE": str(self.args_file), "KIOSK_CDP_PORT": str(self.cdp)}
        env.pop("WAYLAND_DISPLAY", None)
        self.log_path = tmp / "kiosk.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(["sh", str(LAUNCHER)], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.started = time.monotonic()

    def screen(self, pw: Any, within: float) -> Any:
        """The page on screen, via the browser's DevTools port (fails if no browser shows up in time)."""
        deadline = self.started + within
        while True:
            try:
                b = pw.chromium.connect_over_cdp(f"http://127.0.0.1:{self.cdp}", timeout=2000)
                pages = [p for c in b.contexts for p in c.pages]
                if pages:
                    return pages[0]
            except Exception:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no browser on the screen {within:.0f} s after the kiosk started "
                                     f"(launcher exit code {self.proc.poll()}); its output: "
                                     f"{self.log_path.read_text()[-600:]!r}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def kiosk(tmp_path: Path, chromium: str) -> Iterator[Callable[[str], Kiosk]]:
    started: list[Kiosk] = []

    def start(url: str) -> Kiosk:
        k = Kiosk(tmp_path / f"kiosk{len(started)}", chromium, url)
        started.append(k)
        return k

    yield start
    for k in started:
        k.stop()


def text_of(page: Any) -> str:
    try:
        return str(page.evaluate("document.body ? document.body.innerText : ''"))
    except Exception:  # navigating right now
        return ""


def test_kiosk_shows_a_welcome_card_before_the_node_is_up_then_the_page(
        kiosk: Callable[[str], Kiosk], make_node: Callable[..., Any]) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}/screens/dairy-screen"
    k = kiosk(url)
    with sync_playwright() as pw:
        # boot race: the node is not up. Within seconds the screen shows a welcome card, not a browser error
        page = k.screen(pw, within=15)
        page.wait_for_selector("#shelfcast-waiting", timeout=5000)
        assert "Welcome" in text_of(page)
        time.sleep(6)  # several failed checks later: still the card (Chromium's error page would be here now)
        assert page.url.startswith("file://"), page.url
        assert "Welcome" in text_of(page) and "can't be reached" not in text_of(page)
        assert url in text_of(page)  # the technician's line names what it waits for
        args = k.args_file.read_text().splitlines()
        assert "--kiosk" in args and args[-1] == f"file://{k.run}/waiting.html"
        # the node comes up (late, on its port): the screen switches to the signage page by itself
        t0 = time.monotonic()
        make_node(port=port)
        page.wait_for_function(f"location.href === {url!r} && !!document.querySelector(\"#app[data-mode='live']\")",
                               timeout=10000)
        assert time.monotonic() - t0 < 8
        assert page.inner_text("#hero .name").strip()


@pytest.mark.parametrize("bad", ["127.0.0.1:8080/screens/dairy-screen", "http://127.0.0.1:8080/screens/my screen",
                                 "http://x/\"</script>"])
def test_kiosk_refuses_a_url_it_cannot_open_and_names_the_fix(kiosk: Callable[[str], Kiosk], bad: str) -> None:
    k = kiosk(bad)
    try:
        rc = k.proc.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the launcher did not refuse SHELFCAST_KIOSK_URL={bad!r} (still running after 10 s)")
    out = k.log_path.read_text()
    assert rc == 1
    assert "SHELFCAST_KIOSK_URL" in out and "/etc/shelfcast/kiosk.env" in out and "systemctl restart" in out, out
    assert "Traceback" not in out
    assert not k.args_file.exists()  # no browser started

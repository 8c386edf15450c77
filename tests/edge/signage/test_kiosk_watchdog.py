"""The kiosk launcher's watchdog (deploy/shelfcast-kiosk) with real Chromium and a real ``shelfcast run`` process.

What a shopper must never see: a crashed tab ("Aw, Snap!", which Chromium leaves on screen for good), a browser
error page, or the node's list of screens (``/`` and the 404 page for an unknown screen id). The launcher runs
as on a Pi with a desktop session (``DISPLAY`` set: no ``cage``); ``chromium`` on its PATH is a small wrapper
that starts Debian's Chromium headless and adds a DevTools port on loopback, through which the test looks at
the screen (Playwright ``connect_over_cdp``) and crashes its renderer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

LAUNCHER = Path(__file__).resolve().parents[3] / "deploy" / "shelfcast-kiosk"
SCREEN = "aisle-screen"
TOKEN = "kiosk-test-admin-token-0123"

WRAPPER = """#!{python}
import os, sys
args = [a for a in sys.argv[1:] if not a.startswith("--ozone-platform")]
with open(os.environ["KIOSK_ARGS_FILE"], "a") as f:  # one line per browser start, its arguments NUL-separated
    f.write("\\x00".join(args) + "\\n")
os.execv({chromium!r}, [{chromium!r}, "--headless", "--no-sandbox", "--disable-gpu",
         "--remote-debugging-port=" + os.environ["KIOSK_CDP_PORT"], *args])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Kiosk:
    """deploy/shelfcast-kiosk, started as systemd would (its own process group, output to a log)."""

    def __init__(self, tmp: Path, chromium: str, url: str | None) -> None:
        bindir = tmp / "bin"
        bindir.mkdir(parents=True)
        wrapper = bindir / "chromium"
        wrapper.write_text(WRAPPER.format(python=sys.executable, chromium=chromium))
        wrapper.chmod(0o755)
        self.args_file = tmp / "chromium-args.txt"
        self.cdp = free_port()
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
        self.proc = subprocess.Popen(["sh", str(LAUNCHER)], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.started = time.monotonic()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def browser_starts(self) -> int:
        return len(self.args_file.read_text().splitlines()) if self.args_file.exists() else 0

    def screen(self, pw: Any, within: float = 20) -> Any:
        """The page on screen now, over a fresh DevTools connection (a crashed page's old handle is dead)."""
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

    def wait_for(self, pw: Any, what: str, check: Callable[[dict[str, Any]], bool], within: float) -> dict[str, Any]:
        """Poll what the screen shows (a fresh connection each time) until ``check`` holds; fails naming it."""
        deadline = time.monotonic() + within
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = shown(self.screen(pw, within=max(1.0, deadline - time.monotonic())))
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


def live(url: str) -> Callable[[dict[str, Any]], bool]:
    return lambda s: s.get("url") == url and s.get("mode") in ("live", "attract") and bool(s.get("hero", "").strip())


@pytest.fixture
def kiosk(tmp_path: Path, chromium: str) -> Iterator[Callable[[str | None], Kiosk]]:
    started: list[Kiosk] = []

    def start(url: str | None) -> Kiosk:
        k = Kiosk(tmp_path / f"kiosk{len(started)}", chromium, url)
        started.append(k)
        return k

    yield start
    for k in started:
        k.stop()


def node_config(d: Path, port: int, kind: str = "full") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "n.yaml"
    cfg.write_text(f"""node:
  data_dir: {d / 'data'}
shelves:
  enabled: false
signage:
  host: 127.0.0.1
  port: {port}
  admin_token: {TOKEN}
layout:
  zones:
  - {{id: dairy, name: Dairy, polygon: [[0, 0], [8, 0], [8, 5], [0, 5]]}}
  screens:
  - {{id: {SCREEN}, kind: {kind}, position: [1, 1], zone: dairy}}
""")
    return cfg


def refresh(base: str) -> str:
    """A new set for the screen (the admin refresh), as after a pick; its seq."""
    req = urllib.request.Request(f"{base}/api/screens/{SCREEN}/refresh", method="POST", data=b"",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return str(json.loads(r.read())["seq"])


@pytest.fixture
def node(tmp_path: Path, node_process: Any) -> Callable[..., tuple[str, Any]]:
    """``node(port=None, kind='full')``: a real ``shelfcast run`` serving one screen; (its base URL, process)."""
    def start(port: int | None = None, kind: str = "full") -> tuple[str, Any]:
        port = port or free_port()
        p = node_process.start(node_config(tmp_path / f"node-{port}-{kind}", port, kind))
        node_process.wait_running(p)
        return f"http://127.0.0.1:{port}", p
    return start


@pytest.mark.parametrize("crash", ["Page.crash", "SIGSEGV", "hang"])
def test_a_crashed_renderer_comes_back_showing_items(kiosk: Callable[[str | None], Kiosk],
                                                      node: Callable[..., tuple[str, Any]], crash: str) -> None:
    from playwright.sync_api import sync_playwright

    base, _ = node()
    url = f"{base}/screens/{SCREEN}"
    k = kiosk(url)
    with sync_playwright() as pw:
        k.wait_for(pw, "the signage page", live(url), within=30)
        page = k.screen(pw)
        page.evaluate("window.__kioskTestMark = 'before the crash'")  # gone once the page is loaded again
        if crash == "Page.crash":  # DevTools' own renderer crash (as chrome://crash)
            cdp = page.context.new_cdp_session(page)
            try:
                cdp.send("Page.crash")
            except Exception:
                pass  # the renderer is gone before it answers
        elif crash == "SIGSEGV":  # the renderers die of a segfault
            pids = k.renderer_pids()
            assert pids, "no renderer process found"
            for pid in pids:
                os.kill(pid, signal.SIGSEGV)
        else:  # the page's script never returns (Chromium's "Page unresponsive")
            page.evaluate("setTimeout(() => { for (;;) {} }, 0)")
        t0 = time.monotonic()
        # Chromium itself leaves a crashed tab (its "Aw, Snap!") or a hung one on screen for good
        back = k.wait_for(pw, "the signage page loaded again", lambda s: live(url)(s) and not s["mark"], within=30)
        took = time.monotonic() - t0
    assert back["hero"].strip() and back["mode"] in ("live", "attract")
    assert took < (20 if crash == "hang" else 10), f"the page took {took:.1f} s to come back"
    out = k.output()
    assert ("did not answer" if crash == "hang" else "crashed") in out and "Traceback" not in out, out
    assert k.browser_starts() == 1  # the page was loaded again in the running browser, not by restarting it
    print(f"{crash}: the page was back {took:.1f} s after it")


def test_a_killed_browser_is_started_again_and_shows_the_page(
        kiosk: Callable[[str | None], Kiosk], node: Callable[..., tuple[str, Any]]) -> None:
    from playwright.sync_api import sync_playwright

    base, _ = node()
    url = f"{base}/screens/{SCREEN}"
    k = kiosk(url)
    with sync_playwright() as pw:
        k.wait_for(pw, "the signage page", live(url), within=30)
        os.kill(k.browser_pid(), signal.SIGKILL)  # as the OOM killer would
        t0 = time.monotonic()
        k.wait_for(pw, "the signage page in a new browser", lambda s: live(url)(s) and k.browser_starts() == 2,
                   within=30)
        took = time.monotonic() - t0
    assert k.proc.poll() is None  # the launcher (its watchdog) kept running
    # the restarted browser shows no "Restore pages?" bubble (looked at by hand under Xvfb: headless has none)
    args = k.args_file.read_text().splitlines()[-1].split("\x00")
    assert "--hide-crash-restore-bubble" in args and "--remote-debugging-pipe" in args
    assert "exited with code" in k.output() or "stopped answering" in k.output()
    print(f"killed browser: the page was back {took:.1f} s after the kill")


def test_without_a_url_the_screen_shows_the_welcome_card_and_the_line_to_add(
        kiosk: Callable[[str | None], Kiosk]) -> None:
    from playwright.sync_api import sync_playwright

    for url in (None, ""):
        k = kiosk(url)
        with sync_playwright() as pw:
            s = k.wait_for(pw, "the welcome card naming the missing line",
                           lambda s: bool(s.get("card")) and "SHELFCAST_KIOSK_URL" in s.get("text", ""), within=20)
            time.sleep(5)  # it stays: nothing is opened in front of shoppers
            later = shown(k.screen(pw))
        assert later["card"] and later["url"].startswith("file://"), later
        assert "Welcome" in later["text"] and "/etc/shelfcast/kiosk.env" in s["text"], s
        assert k.proc.poll() is None  # the screen keeps the card (a stopped unit would leave tty1 to the console)
        out = k.output()
        assert "SHELFCAST_KIOSK_URL=http://127.0.0.1:8080/screens/<screen id>" in out, out
        assert "/etc/shelfcast/kiosk.env" in out and "sudo systemctl restart shelfcast-kiosk" in out, out
        assert "Traceback" not in out
        k.stop()


def test_an_unknown_screen_id_keeps_the_card_not_the_nodes_list_of_screens(
        kiosk: Callable[[str | None], Kiosk], node: Callable[..., tuple[str, Any]]) -> None:
    from playwright.sync_api import sync_playwright

    base, _ = node()
    url = f"{base}/screens/aisle-screne"  # a typo in /etc/shelfcast/kiosk.env
    k = kiosk(url)
    seen = []
    with sync_playwright() as pw:
        s = k.wait_for(pw, "the card naming the 404", lambda s: "HTTP 404" in s.get("text", ""), within=20)
        for _ in range(12):  # 6 s: the node's 404 page (which lists the screens) never comes up
            seen.append(shown(k.screen(pw)))
            time.sleep(0.5)
    assert all(x["card"] and x["url"].startswith("file://") for x in seen), [x["url"] for x in seen]
    assert "/etc/shelfcast/kiosk.env" in s["text"] and SCREEN not in s["text"], s["text"]
    assert "HTTP 404" in k.output() and "Traceback" not in k.output()


def test_the_page_keeps_updating_through_node_restarts_and_reloads_into_a_changed_screen(
        kiosk: Callable[[str | None], Kiosk], node: Callable[..., tuple[str, Any]], node_process: Any) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    base, first = node(port)
    url = f"{base}/screens/{SCREEN}"
    k = kiosk(url)
    with sync_playwright() as pw:
        before = k.wait_for(pw, "the signage page", live(url), within=30)
        k.screen(pw).evaluate("window.__kioskTestMark = 'loaded once'")  # gone if the page is reloaded
        node_process.stop(first)
        time.sleep(6)  # the node is away: the page keeps its products (no card, no error page)
        away = shown(k.screen(pw))
        assert away["url"] == url and away["hero"] == before["hero"] and not away["card"], away
        assert away["mark"] == "loaded once" and away["link"] == "down", away
        _, second = node(port)  # the same screen again: the page takes the node's new sets, no reload
        seq = refresh(base)
        k.wait_for(pw, f"the new set {seq} after the restart", lambda s: live(url)(s) and s["seq"] == seq
                   and s["mark"] == "loaded once", within=20)
        node_process.stop(second)
        node(port, kind="strip")  # the screen turned into a shelf-edge strip in the config: the page reloads
        k.wait_for(pw, "the page reloaded as a strip", lambda s: live(url)(s) and s["strip"] and not s["mark"],
                   within=30)
    assert k.browser_starts() == 1
    out = k.output()
    assert "crashed" not in out and "welcome card" not in out, out  # the watchdog left the page alone

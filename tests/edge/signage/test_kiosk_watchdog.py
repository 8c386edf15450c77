"""The kiosk launcher's watchdog (deploy/shelfcast-kiosk) with real Chromium and a real ``shelfcast run`` process.

What a shopper must never see: a crashed tab ("Aw, Snap!", which Chromium leaves on screen for good), a browser
error page, or the node's list of screens (``/`` and the 404 page for an unknown screen id). The launcher runs
as on a Pi with a desktop session (``DISPLAY`` set: no ``cage``); ``chromium`` on its PATH is a small wrapper
that starts Debian's Chromium headless and adds a DevTools port on loopback, through which the test looks at
the screen (Playwright ``connect_over_cdp``) and crashes its renderer (the ``kiosk`` fixture, in conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

SCREEN = "aisle-screen"
TOKEN = "kiosk-test-admin-token-0123"


def live(url: str) -> Callable[[dict[str, Any]], bool]:
    return lambda s: s.get("url") == url and s.get("mode") in ("live", "attract") and bool(s.get("hero", "").strip())


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
def node(tmp_path: Path, node_process: Any, free_port: Callable[[], int]) -> Callable[..., tuple[str, Any]]:
    """``node(port=None, kind='full')``: a real ``shelfcast run`` serving one screen; (its base URL, process)."""
    def start(port: int | None = None, kind: str = "full") -> tuple[str, Any]:
        port = port or free_port()
        p = node_process.start(node_config(tmp_path / f"node-{port}-{kind}", port, kind))
        node_process.wait_running(p)
        return f"http://127.0.0.1:{port}", p
    return start


@pytest.mark.parametrize("crash", ["Page.crash", "SIGSEGV", "hang"])
def test_a_crashed_renderer_comes_back_showing_items(kiosk: Any, node: Callable[..., tuple[str, Any]],
                                                      crash: str) -> None:
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
        kiosk: Any, node: Callable[..., tuple[str, Any]]) -> None:
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
    args = k.last_args()
    assert "--hide-crash-restore-bubble" in args and "--remote-debugging-pipe" in args
    assert "exited with code" in k.output() or "stopped answering" in k.output()
    print(f"killed browser: the page was back {took:.1f} s after the kill")


def test_without_a_url_the_screen_shows_the_welcome_card_and_the_line_to_add(
        kiosk: Any) -> None:
    from playwright.sync_api import sync_playwright

    for url in (None, ""):
        k = kiosk(url)
        with sync_playwright() as pw:
            s = k.wait_for(pw, "the welcome card naming the missing line",
                           lambda s: bool(s.get("card")) and "SHELFCAST_KIOSK_URL" in s.get("text", ""), within=20)
            time.sleep(5)  # it stays: nothing is opened in front of shoppers
            later = k.shown(k.screen(pw))
        assert later["card"] and later["url"].startswith("file://"), later
        assert "Welcome" in later["text"] and "/etc/shelfcast/kiosk.env" in s["text"], s
        assert k.proc.poll() is None  # the screen keeps the card (a stopped unit would leave tty1 to the console)
        out = k.output()
        assert "SHELFCAST_KIOSK_URL=http://127.0.0.1:8080/screens/<screen id>" in out, out
        assert "/etc/shelfcast/kiosk.env" in out and "sudo systemctl restart shelfcast-kiosk" in out, out
        assert "Traceback" not in out
        k.stop()


def test_an_unknown_screen_id_keeps_the_card_not_the_nodes_list_of_screens(
        kiosk: Any, node: Callable[..., tuple[str, Any]]) -> None:
    from playwright.sync_api import sync_playwright

    base, _ = node()
    url = f"{base}/screens/aisle-screne"  # a typo in /etc/shelfcast/kiosk.env
    k = kiosk(url)
    seen = []
    with sync_playwright() as pw:
        s = k.wait_for(pw, "the card naming the 404", lambda s: "HTTP 404" in s.get("text", ""), within=20)
        for _ in range(12):  # 6 s: the node's 404 page (which lists the screens) never comes up
            seen.append(k.shown(k.screen(pw)))
            time.sleep(0.5)
    assert all(x["card"] and x["url"].startswith("file://") for x in seen), [x["url"] for x in seen]
    assert "/etc/shelfcast/kiosk.env" in s["text"] and SCREEN not in s["text"], s["text"]
    assert "HTTP 404" in k.output() and "Traceback" not in k.output()


def test_the_page_keeps_updating_through_node_restarts_and_reloads_into_a_changed_screen(
        kiosk: Any, node: Callable[..., tuple[str, Any]], node_process: Any,
        free_port: Callable[[], int]) -> None:
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
        away = k.shown(k.screen(pw))
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

"""The kiosk launcher (deploy/shelfcast-kiosk) with real Chromium: what the screen shows before the node is up.

The launcher runs as on a Pi with a desktop session (``DISPLAY`` set, so it execs the browser without
``cage``); ``chromium`` on its PATH is a small wrapper that starts Debian's Chromium headless with a DevTools
port, so the test can look at the screen through Playwright (``connect_over_cdp``): the ``kiosk`` fixture, in
conftest.py.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.browser


def text_of(page: Any) -> str:
    try:
        return str(page.evaluate("document.body ? document.body.innerText : ''"))
    except Exception:  # navigating right now
        return ""


def test_kiosk_shows_a_welcome_card_before_the_node_is_up_then_the_page(
        kiosk: Any, make_node: Callable[..., Any], free_port: Callable[[], int]) -> None:
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
        args = k.last_args()
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
def test_kiosk_refuses_a_url_it_cannot_open_and_names_the_fix(kiosk: Any, bad: str) -> None:
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

"""The kiosk page in real headless Chromium (Debian's, driven by Playwright; no downloads)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.events import ShopperEvent

pytestmark = pytest.mark.browser


def title(s: str) -> str:  # what the page does to SHOUTING catalogue names
    import re

    return re.sub(r"\b\w", lambda m: m.group(0).upper(), s.lower()) if s == s.upper() else s


def test_page_shows_the_items_pushed_after_a_pickup(make_node: Callable[..., Any], browser: Any,
                                                    tmp_path: Path) -> None:
    n = make_node()
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(n.base + "/screens/dairy-screen")
    page.wait_for_selector("#app[data-mode='live']")
    assert page.inner_text("#hero .name").strip(), "never blank"
    page.wait_for_function("window.__shelfcast.messages >= 1")  # the stream is up
    n.publish(ShopperEvent(session="browser-1", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
    page.wait_for_function("document.getElementById('app').dataset.session === 'browser-1'", timeout=5000)
    want = n.json("/api/screens/dairy-screen/recommendations")
    assert want["session"] == "browser-1"
    # the page skips products the node has no catalogue entry for (bare sku, no price)
    items = [i for i in want["items"] if not (i["name"] == i["sku"] and i["price"] is None)] or want["items"]
    top = items[0]
    skus = [page.get_attribute("#hero", "data-sku"),
            *page.eval_on_selector_all("#more li", "els => els.map(e => e.dataset.sku)")]
    assert skus == [i["sku"] for i in items[:5]]
    assert page.inner_text("#hero .name").strip() == title(top["name"])
    if top["price"] is not None:
        assert page.inner_text("#hero .price").strip() == f"${top['price']:.2f}"
    assert page.inner_text("#hero .reason").strip() == top["reason"]
    assert "for you" in page.inner_text("#headline")
    # readable at 3 m: product name at least 5 % of the screen height
    px = page.eval_on_selector("#hero .name", "e => parseFloat(getComputedStyle(e).fontSize)")
    assert px >= 0.05 * 1080
    assert not errors, errors


def test_page_reconnects_after_the_server_goes_away(make_node: Callable[..., Any], browser: Any) -> None:
    n = make_node()
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(n.base + "/screens/dairy-screen")
    page.wait_for_function("window.__shelfcast.messages >= 1")
    n.call(n.node.signage.stop_http())  # the link drops: the page keeps what it shows
    page.wait_for_function("document.getElementById('app').dataset.link === 'down'", timeout=5000)
    assert page.inner_text("#hero .name").strip()
    n.publish(ShopperEvent(session="while-down", sku="1029743", action="pick", zone="dairy", shelf="dairy-1",
                           slot=0))
    time.sleep(0.5)
    n.call(n.node.signage.start_http())
    page.wait_for_function("document.getElementById('app').dataset.session === 'while-down'", timeout=15000)
    assert page.evaluate("window.__shelfcast.connects") >= 1
    assert page.get_attribute("#app", "data-link") == "live"


def test_portrait_and_attract_loop(make_node: Callable[..., Any], browser: Any) -> None:
    n = make_node()
    page = browser.new_page(viewport={"width": 1080, "height": 1920})
    page.goto(n.base + "/screens/bakery-screen?attract=5")
    page.wait_for_selector("#app[data-mode='live']")
    cols = page.eval_on_selector("#stage", "e => getComputedStyle(e).gridTemplateColumns.split(' ').length")
    assert cols == 1  # portrait: stacked, not side by side
    page.wait_for_selector("#app[data-mode='attract']", timeout=10000)  # nobody there: the attract loop
    first = page.get_attribute("#attract", "data-sku")
    page.wait_for_function(f"document.getElementById('attract').dataset.sku !== '{first}'", timeout=10000)
    # a shopper arrives: back to live, for them
    n.publish(ShopperEvent(session="b-1", sku="883404", action="pick", zone="bakery", shelf="bakery-1", slot=0))
    page.wait_for_selector("#app[data-mode='live'][data-session='b-1']", timeout=5000)


def open_live(browser: Any, base: str, w: int = 1280, h: int = 720) -> Any:
    """dairy-screen in a new w x h page, once its stream is up and it knows the page version it was served."""
    page = browser.new_page(viewport={"width": w, "height": h})
    page.goto(base + "/screens/dairy-screen")
    page.wait_for_function("window.__shelfcast.messages >= 1 && !!window.__shelfcast.version")
    return page


def wait_page(page: Any, js: str, timeout: float = 15.0) -> None:
    """Like wait_for_function, through reloads (the page's own context goes away while it reloads)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if page.evaluate(js):
                return
        except Exception:  # navigating right now
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{js} not true after {timeout} s")
        time.sleep(0.1)


def test_node_restart_with_the_same_page_keeps_it_without_a_reload(make_node: Callable[..., Any],
                                                                    browser: Any) -> None:
    n = make_node()
    page = open_live(browser, n.base)
    page.evaluate("window.__marker = 1")
    n.call(n.node.signage.stop_http())
    page.wait_for_function("document.getElementById('app').dataset.link === 'down'", timeout=5000)
    for _ in range(10):  # while the node is away the screen keeps its products
        assert page.inner_text("#hero .name").strip()
        time.sleep(0.2)
    n.call(n.node.signage.start_http())
    page.wait_for_function("document.getElementById('app').dataset.link === 'live'", timeout=10000)
    time.sleep(1.5)  # the version check ran: nothing changed, so no reload (no flash)
    assert page.evaluate("window.__marker") == 1
    assert not page.evaluate("window.__shelfcast.reloads")


def test_an_upgraded_page_loads_itself_when_the_node_is_back(make_node: Callable[..., Any], browser: Any,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from edge.signage import http

    n = make_node()
    page = open_live(browser, n.base)
    page.evaluate("window.__marker = 1")
    # an upgrade: the node goes away and comes back serving a new stylesheet
    n.call(n.node.signage.stop_http())
    static = tmp_path / "static"
    shutil.copytree(http.STATIC, static)
    with (static / "screen.css").open("a") as f:
        f.write('\n#app { --release: "2"; }\n')
    monkeypatch.setattr(http, "STATIC", static)
    n.call(n.node.signage.start_http())
    wait_page(page, "!window.__marker && getComputedStyle(document.getElementById('app'))"
                    ".getPropertyValue('--release').trim() === '\"2\"'")
    page.wait_for_selector("#app[data-mode='live']")
    assert page.inner_text("#hero .name").strip()


def test_a_changed_screen_loads_itself_when_the_node_restarts(make_node: Callable[..., Any], browser: Any) -> None:
    first = make_node()
    port = first.port
    page = open_live(browser, first.base, 1920, 1080)
    assert page.get_attribute("#app", "class") and "kind-full" in page.get_attribute("#app", "class")
    # the technician makes dairy-screen a shelf-edge strip and restarts the node (same port)
    first.call(first.node.signage.stop_http())
    make_node(port=port, extra_screens=({"id": "dairy-screen", "kind": "strip", "position": [12, 4.6],
                                         "zone": "dairy", "orientation": "landscape"},))
    wait_page(page, "document.getElementById('app').classList.contains('kind-strip')")
    page.wait_for_selector("#app[data-mode='live']")
    assert page.inner_text("#hero .name").strip()

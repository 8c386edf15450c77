"""What a shopper can read from 3 m, in real headless Chromium: every panel shape, the catalogue's longest names.

Sets are pushed through the node's bus (a ``RecommendationSet`` with a high ``seq``), the way the recommender
pushes them; the page gets them over its live SSE stream.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable
from importlib import resources
from typing import Any

import pytest

from edge.events import RecItem, RecommendationSet

pytestmark = pytest.mark.browser

_seq = itertools.count(10**6)

# every visible name, price and reason: its box, font size, and whether lines of it are hidden (clamped)
LAYOUT_JS = """() => Array.from(document.querySelectorAll('.name, .price, .reason')).filter(e => e.offsetParent &&
  e.textContent.trim()).map(e => { const r = e.getBoundingClientRect(), px = parseFloat(getComputedStyle(e).fontSize);
  return {cls: e.className, where: e.closest('#hero, #more, #attract').id, text: e.textContent, px: px,
          cut: e.scrollHeight - e.clientHeight > px / 3 || e.scrollWidth - e.clientWidth > px / 3,
          left: r.left, top: r.top, right: r.right, bottom: r.bottom}; })"""


def catalogue() -> list[dict[str, str]]:
    text = resources.files("edge").joinpath("data/catalogue.csv").read_text()
    return list(csv.DictReader(text.splitlines()))


def longest(n: int) -> list[dict[str, str]]:
    return sorted(catalogue(), key=lambda r: -len(r["name"]))[:n]


def items(rows: list[dict[str, str]], price: bool = True) -> tuple[RecItem, ...]:
    return tuple(RecItem(r["sku"], r["name"], float(r["price"]) if price else None, 0.5, "Goes with your Whole Milk",
                         r["category"], r["department"]) for r in rows)


def push(node: Any, screen: str, its: tuple[RecItem, ...], session: str | None = "shopper-1",
         zone: str = "dairy") -> int:
    seq = next(_seq)
    node.publish(RecommendationSet(screen=screen, session=session, items=its, model_version="m1", zone=zone, seq=seq))
    return seq


STRIP = ({"id": "dairy-strip", "kind": "strip", "position": [11, 0.6], "zone": "dairy", "orientation": "landscape"},)


def open_screen(browser: Any, node: Any, screen: str, w: int, h: int, query: str = "") -> Any:
    page = browser.new_page(viewport={"width": w, "height": h})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(node.base + f"/screens/{screen}{query}")
    page.wait_for_function("window.__shelfcast.messages >= 1")
    page.errors = errors
    return page


def show(page: Any, node: Any, screen: str, its: tuple[RecItem, ...], session: str | None = "shopper-1") -> None:
    seq = push(node, screen, its, session)
    page.wait_for_function(f"document.getElementById('app').dataset.seq === '{seq}'", timeout=5000)


def assert_readable(page: Any, w: int, h: int, min_px: float, what: str) -> list[dict[str, Any]]:
    boxes: list[dict[str, Any]] = page.evaluate(LAYOUT_JS)
    assert boxes, f"{what}: nothing on screen"
    for b in boxes:
        where = f"{what}: {b['where']} {b['cls']} {b['text']!r}"
        assert not (b["cls"] == "name" and b["cut"]), f"{where} is cut at {b['px']:.0f} px"
        assert b["left"] >= -1 and b["top"] >= -1 and b["right"] <= w + 1 and b["bottom"] <= h + 1, \
            f"{where} runs off the {w}x{h} screen: {b}"
        if b["cls"] in ("name", "price"):
            assert b["px"] >= min_px, f"{where} is {b['px']:.0f} px, under {min_px:.0f} px: unreadable at 3 m"
    assert not page.errors, page.errors
    return boxes


@pytest.mark.parametrize(("w", "h"), [(1920, 1080), (1080, 1920)])
def test_the_longest_catalogue_names_are_shown_whole(make_node: Callable[..., Any], browser: Any, w: int,
                                                     h: int) -> None:
    n = make_node()
    page = open_screen(browser, n, "dairy-screen", w, h)
    # names 44-47 characters long (the bundled catalogue's longest; it abbreviates, "Mneral Wate 405.6 OZ"):
    # the sizes at their ends ("20 OZ" vs "16 OZ") are what tells two rows apart
    show(page, n, "dairy-screen", items(longest(5)))
    boxes = assert_readable(page, w, h, 0.03 * min(w, h), f"{w}x{h} longest names")
    names = [b["text"] for b in boxes if b["cls"] == "name"]
    assert len(names) == 5 and names[0].endswith("405.6 OZ")
    u = h / 100 if w > h else 0.56 * h / 100  # the page's size unit
    hero = next(b for b in boxes if b["cls"] == "name" and b["where"] == "hero")
    assert hero["px"] >= 4 * u  # the hero still reads as the headline
    # the same without prices (a product the catalogue has no price for), and a short name keeps its full size
    show(page, n, "dairy-screen", items(longest(5), price=False))
    assert_readable(page, w, h, 0.03 * min(w, h), f"{w}x{h} longest names, no price")
    banana = next(r for r in catalogue() if r["name"] == "Bananas")
    show(page, n, "dairy-screen", items([banana, *longest(4)]))
    px = page.eval_on_selector("#hero .name", "e => parseFloat(getComputedStyle(e).fontSize)")
    assert px >= 7 * u  # 7.5 units: not shrunk


def test_a_full_screen_on_a_wide_strip_panel_shows_one_product_large(make_node: Callable[..., Any],
                                                                      browser: Any) -> None:
    n = make_node()
    w, h = 1920, 360  # a full-kind screen id opened on a shelf-edge strip panel
    page = open_screen(browser, n, "dairy-screen", w, h)
    show(page, n, "dairy-screen", items(longest(5)))
    boxes = assert_readable(page, w, h, 0.15 * h, "full screen on a 1920x360 strip")
    assert {b["where"] for b in boxes} == {"hero"}  # one product in a row, not five rows of 15 px text
    assert page.is_hidden("#more") and page.is_hidden("header.bar")


def test_strip_and_shelf_display_kinds(make_node: Callable[..., Any], browser: Any) -> None:
    n = make_node(extra_screens=STRIP)
    for screen, (w, h) in (("dairy-strip", (1920, 360)), ("dairy-strip", (1920, 540)), ("dairy-1-edge", (800, 480)),
                           ("dairy-1-edge", (1280, 400))):
        page = open_screen(browser, n, screen, w, h)
        show(page, n, screen, items(longest(1)))
        assert_readable(page, w, h, (0.15 if w / h >= 2.4 else 0.08) * h, f"{screen} at {w}x{h}")
        page.close()


def test_the_attract_loop_fits_portrait_and_strip_screens(make_node: Callable[..., Any], browser: Any) -> None:
    n = make_node(extra_screens=STRIP)
    idle = items(longest(3))
    for screen, (w, h) in (("dairy-screen", (1080, 1920)), ("dairy-screen", (1920, 1080)),
                           ("dairy-strip", (1920, 360))):
        page = open_screen(browser, n, screen, w, h, "?attract=5")
        show(page, n, screen, idle, session=None)  # nobody there
        page.wait_for_selector("#app[data-mode='attract']", timeout=10000)
        boxes = assert_readable(page, w, h, 0.05 * min(w, h), f"attract loop at {w}x{h}")
        assert {b["cls"] for b in boxes} >= {"name", "price"}
        if "strip" not in screen:
            assert "Today in" in page.inner_text("#headline")
            show(page, n, screen, idle[::-1], session=None)  # the minutely refresh of the idle set
            assert page.get_attribute("#app", "data-mode") == "attract"
            assert "Today in" in page.inner_text("#headline"), "the attract headline stays through a refresh"
        # a shopper arrives: back to live, for them, at once
        show(page, n, screen, items(longest(5)), session="shopper-2")
        assert page.get_attribute("#app", "data-mode") == "live"
        page.close()

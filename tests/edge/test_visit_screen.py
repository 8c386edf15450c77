"""A checked-in shopper's visit on the screens with shelf data alone: the same with the camera disabled and with
the camera enabled but down (fusion then the recommender's locator). A real ``edge.app.Node`` in this process (the
demo layout, the bundled model and catalogue, real SQLite), events on its bus, the recommender's clock a fake one.

Old code: the screen returned to the zone's popular items 90 s after the shopper's last action
(``Recommender.present_s``) while the visit lived 300 s (``fusion.session_idle_s``), and a pick after a pause of more
than ``fusion.anonymous_idle_s`` went to an anonymous visit; with the camera enabled but down, fusion's locator kept
the checked-in visit on the screen for its whole life even while another shopper picked there; and the checked-in
visit took every pick of its zone's free shelves for as long as picks kept coming (another shopper's too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.app import Node
from edge.events import CheckIn, ShelfEvent, ShopperEvent
from edge.fusion import hash_customer

SALT = "acme-visit-salt-0f3a9c1e7d5b2468"  # the salt visit_config sets (tests/conftest.py VISIT_SALT)
A = hash_customer("CARD-A", SALT)
SCREEN = "dairy-screen"


def _pick(node: Node, fc: Any, shelf: str, slot: int = 0) -> None:
    node.bus.publish(ShelfEvent(shelf=shelf, slot=slot, sku=None, delta_units=-1, t=fc.w))


@pytest.mark.parametrize("locator", [False, True], ids=["camera_disabled", "camera_down"])
def test_the_checked_in_visit_keeps_its_screen_while_it_lives_and_nobody_else_acts(
        tmp_path: Path, visit_config: Any, visit_run: Any, locator: bool, screen_session: Any) -> None:
    async def scenario(node: Node, fc: Any, picks: list[ShopperEvent]) -> None:
        assert screen_session(node) is None  # nobody there: the zone's popular items
        node.bus.publish(CheckIn(customer=A, screen=SCREEN, t=fc.w))
        a = screen_session(node)
        assert a is not None and node.recommender.visits[a].customer == A  # type: ignore[union-attr]
        fc.elapse(5.0)
        _pick(node, fc, "dairy-1")
        assert picks[-1].session == a
        fc.elapse(100.0)  # reads a label: longer than 90 s and than anonymous_idle_s, well within the visit's 300 s
        node.fusion.expire(fc.w)
        node.housekeep_once()
        assert screen_session(node) == a, "the screen went back to popular items while the shopper's visit lives"
        _pick(node, fc, "dairy-2")  # picks again: still within fusion.stand_in_s (120 s) of the check-in
        assert picks[-1].session == a, "the shopper's pick after a pause went to an anonymous visit"
        assert screen_session(node) == a
        # someone else picks there after the stand-in's 120 s: their own visit, and the screen serves them
        fc.elapse(20.0)
        _pick(node, fc, "dairy-2", 1)
        other = picks[-1].session
        assert other != a, "another shopper's pick 130 s after the check-in landed on the checked-in visit"
        assert screen_session(node) == other, "the screen kept the checked-in visit while someone else acted there"
        # both quiet: the other visit is no longer present after 90 s, and the checked-in one no longer holds the
        # screen (someone acted there after it): the zone's popular items
        fc.elapse(95.0)
        node.fusion.expire(fc.w)
        node.housekeep_once()
        assert screen_session(node) is None
        # the checked-in shopper scans again: their visit, theirs again (and the stand-in renewed)
        node.bus.publish(CheckIn(customer=A, session=a, screen=SCREEN, t=fc.w))
        assert screen_session(node) == a
        fc.elapse(10.0)
        _pick(node, fc, "dairy-1", 2)
        assert picks[-1].session == a
        # the visit ends after fusion.session_idle_s without an action: the screen goes back to popular items
        fc.elapse(299.0)
        node.fusion.expire(fc.w)
        node.housekeep_once()
        assert screen_session(node) == a and node.fusion.session(a).ended is None  # type: ignore[union-attr]
        fc.elapse(2.0)
        node.fusion.expire(fc.w)
        node.housekeep_once()
        assert screen_session(node) is None
        assert node.fusion.session(a).ended is not None and a not in node.recommender.visits  # type: ignore

    visit_run(visit_config(tmp_path), "down" if locator else "disabled", scenario)


def test_the_stand_in_is_bounded_by_stand_in_s_and_off_at_0(tmp_path: Path, visit_config: Any,
                                                            visit_run: Any, screen_session: Any) -> None:
    async def scenario(node: Node, fc: Any, picks: list[ShopperEvent]) -> None:
        node.bus.publish(CheckIn(customer=A, screen=SCREEN, t=fc.w))
        a = screen_session(node)
        # picks every 20 s keep the zone busy: before, each kept the checked-in visit taking the zone's picks
        for _ in range(3):
            fc.elapse(20.0)
            _pick(node, fc, "dairy-1")
        assert [p.session for p in picks] == [a, a, a]  # within stand_in_s (70 s) of the check-in
        fc.elapse(20.0)  # 80 s after the check-in
        _pick(node, fc, "dairy-1")
        assert picks[-1].session != a and not picks[-1].attributed
        assert node.fusion.session(picks[-1].session).shelf == "dairy-1"  # type: ignore[union-attr]
        fc.elapse(1.0)
        _pick(node, fc, "dairy-2")  # the other shelf is no longer the checked-in visit's either
        assert picks[-1].session not in (a, picks[-2].session)

    visit_run(visit_config(tmp_path, stand_in_s=70.0), "disabled", scenario)

    async def off(node: Node, fc: Any, picks: list[ShopperEvent]) -> None:
        node.bus.publish(CheckIn(customer=A, screen=SCREEN, t=fc.w))
        a = screen_session(node)
        fc.elapse(1.0)
        _pick(node, fc, "dairy-1")
        assert picks[-1].session != a  # stand_in_s 0: no stand-in at all
        assert node.fusion.session(a).customer == A  # type: ignore[union-attr]  # still bound
        assert screen_session(node) == a  # at the screen (it scanned there) and nearer than the shelf's anonymous visit

    visit_run(visit_config(tmp_path / "off", stand_in_s=0.0), "disabled", off)

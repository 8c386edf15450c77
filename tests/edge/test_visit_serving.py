"""Who a screen serves, the same in every case: a real ``edge.app.Node`` in this process (the demo layout, the bundled
model and catalogue, real SQLite), events on its bus, the recommender's clock a fake one; the check-in refusal
through the real ``POST /api/checkin``.

Old code:
- camera on, a check-in nobody was tracked near held its screen for its whole life (300 s) against any tracked
  shopper standing more than 0.5 m farther away: a shopper who checked in and walked off kept the screen from the
  next one standing right in front of it;
- camera off, an anonymous visit fusion had ended (``anonymous_idle_s``, 60 s) stayed on its screen until
  ``Recommender.present_s`` (90 s); a shelf's anonymous visit that a check-in at the screen bound ended 60 s after
  its last pick (its screen kept serving it, the shopper's next pick went to a new anonymous visit);
- a check-in naming another customer's live visit without a screen opened a new visit no screen showed (200)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edge.app import Node
from edge.events import CheckIn, ShelfEvent, ShopperEvent, TrackUpdate
from edge.fusion import hash_customer

SALT = "acme-visit-salt-0f3a9c1e7d5b2468"  # the salt visit_config sets (tests/conftest.py VISIT_SALT)
A = hash_customer("CARD-A", SALT)
SCREEN = "dairy-screen"  # at (12, 4.6)
TOKEN = "tok-visit-serving-0123456789abcd"


def _pick(node: Node, fc: Any, shelf: str, slot: int = 0) -> None:
    node.bus.publish(ShelfEvent(shelf=shelf, slot=slot, sku=None, delta_units=-1, t=fc.w))


def _stand(node: Node, fc: Any, track: int, x: float, y: float, secs: float) -> None:
    """A tracked shopper standing at (x, y) in the dairy zone for ``secs`` (15 updates a second; time passes)."""
    for _ in range(int(secs * 15)):
        node.bus.publish(TrackUpdate(track=track, x=x, y=y, zone="dairy", t=fc.w))
        fc.elapse(1 / 15)


def _wait(node: Node, fc: Any, secs: float) -> None:
    fc.elapse(secs)
    node.fusion.expire(fc.w)
    node.housekeep_once()


def test_camera_on_a_check_in_nobody_walked_into_view_holds_the_screen_30_s(
        tmp_path: Path, visit_config: Any, visit_run: Any, screen_session: Any) -> None:
    async def scenario(node: Node, fc: Any, picks: list[ShopperEvent]) -> None:
        f = node.fusion
        node.bus.publish(CheckIn(customer=A, screen=SCREEN, t=fc.w))  # nobody tracked near the screen
        a = screen_session(node)
        assert a is not None and f.session(a).track is None
        # B walks up 3.6 m from the screen (too far to take A's visit), within A's 30 s: A keeps the screen
        _stand(node, fc, 1, 12.0, 1.0, 10.0)
        b = f.session_near(12.0, 1.0, "dairy").id
        assert b != a and screen_session(node) == a
        _stand(node, fc, 1, 12.0, 1.0, 21.0)  # 31 s after the check-in, nobody took A's visit
        assert screen_session(node) == b, \
            "an unclaimed check-in kept the screen from the shopper standing in front of it"
        # B leaves: A walked off too (B was seen in the zone after A's check-in): the zone's items, not A's
        _wait(node, fc, 5.0)
        assert f.session(b).ended is not None
        assert screen_session(node) is None, "the screen went back to a check-in whose shopper the camera never saw"
        # A scans again: theirs again; still nobody seen in the zone after 100 s: A keeps it while the visit lives
        node.bus.publish(CheckIn(customer=A, session=a, screen=SCREEN, t=fc.w))
        assert screen_session(node) == a
        _wait(node, fc, 100.0)
        assert screen_session(node) == a
        # a tracked shopper in the zone past the 30 s, even at the far end (9 m away): they serve it
        _stand(node, fc, 2, 16.0, -3.5, 1.0)
        c = f.session_near(16.0, -3.5, "dairy").id
        assert screen_session(node) == c
        # ... and a check-in in its first 30 s still beats a tracked shopper more than 0.5 m farther
        node.bus.publish(CheckIn(customer=A, session=a, screen=SCREEN, t=fc.w))
        _stand(node, fc, 2, 16.0, -3.5, 1.0)
        assert screen_session(node) == a

    visit_run(visit_config(tmp_path), "on", scenario)


@pytest.mark.parametrize("camera", ["disabled", "down"])
def test_an_anonymous_visit_leaves_its_screen_when_fusion_ends_it(tmp_path: Path, visit_config: Any, visit_run: Any,
                                                                  camera: str, screen_session: Any) -> None:
    async def scenario(node: Node, fc: Any, picks: list[ShopperEvent]) -> None:
        _pick(node, fc, "dairy-1")
        anon = picks[-1].session
        assert screen_session(node) == anon
        _wait(node, fc, 59.0)
        assert screen_session(node) == anon and node.fusion.session(anon).ended is None
        _wait(node, fc, 2.0)  # fusion.anonymous_idle_s (60 s) without a pick: fusion ends the visit
        assert node.fusion.session(anon).ended is not None
        assert screen_session(node) is None, "the screen kept serving a visit fusion had ended (present_s 90 s)"
        assert anon in node.recommender.visits  # still saved when it expires (session_idle_s)
        _pick(node, fc, "dairy-1")  # the next shopper there: a new visit, on the screen at once
        assert picks[-1].session != anon and screen_session(node) == picks[-1].session

    visit_run(visit_config(tmp_path), camera, scenario)


def test_a_shelf_visit_checked_in_at_the_screen_lives_as_a_checked_in_visit(
        tmp_path: Path, visit_config: Any, visit_run: Any, screen_session: Any) -> None:
    async def scenario(node: Node, fc: Any, picks: list[ShopperEvent]) -> None:
        _pick(node, fc, "dairy-1")
        anon = picks[-1].session
        fc.elapse(5.0)
        # at the screen, which serves that visit: the check-in binds it (what POST /api/checkin and the cloud's
        # cmd do: the session the screen serves)
        served = node.recommender.serving(SCREEN)
        assert served is not None and served.session == anon
        node.bus.publish(CheckIn(customer=A, session=anon, screen=SCREEN, t=fc.w))
        assert screen_session(node) == anon and node.recommender.visits[anon].customer == A
        _wait(node, fc, 100.0)  # reads a label: past anonymous_idle_s (60 s), within stand_in_s (120 s)
        assert node.fusion.session(anon).ended is None, "the checked-in visit ended after anonymous_idle_s"
        assert screen_session(node) == anon
        _pick(node, fc, "dairy-1", 1)
        assert picks[-1].session == anon, "the shopper's pick after a pause went to a new anonymous visit"
        _pick(node, fc, "dairy-2")  # their zone's other shelf too (the stand-in)
        assert picks[-1].session == anon and node.fusion.session(anon).customer == A
        _wait(node, fc, 301.0)  # it ends as a visit does (fusion.session_idle_s), saved with the customer
        assert node.fusion.session(anon).ended is not None and screen_session(node) is None

    visit_run(visit_config(tmp_path), "disabled", scenario)


def test_a_check_in_naming_another_customers_visit_without_a_screen_is_refused(
        tmp_path: Path, visit_config: Any, checkin_node: Any, stored_checkins: Any) -> None:
    cfg = visit_config(tmp_path, signage={"host": "127.0.0.1", "port": 0, "admin_token": TOKEN})

    async def main() -> dict[str, str]:
        async with checkin_node(cfg, TOKEN) as (node, check_in):
            status, first = await check_in({"customer": "CARD-A", "screen": SCREEN})
            assert status == 200 and first["session"], first
            a = first["session"]
            visits = {s.id for s in node.fusion.active_sessions()}

            status, refused = await check_in({"customer": "CARD-B", "session": a})
            assert status == 409, (status, refused)
            err = refused["error"]
            assert a in err and "another customer" in err and '"screen"' in err and SCREEN in err, err
            assert "CARD-B" not in json.dumps(refused)
            # nothing bound: no new visit in fusion or the recommender, A's visit still A's, on its screen
            assert {s.id for s in node.fusion.active_sessions()} == visits
            assert [v.customer for v in node.recommender.visits.values()] == [hash_customer("CARD-A", SALT)]
            served = node.recommender.serving(SCREEN)
            assert served is not None and served.session == a
            assert node.fusion.health()["check_ins_refused"] == 1

            # A naming their own visit is still bound; B at the screen gets a visit of their own it serves
            status, own = await check_in({"customer": "CARD-A", "session": a})
            assert status == 200 and own["session"] == a, own
            status, b = await check_in({"customer": "CARD-B", "session": a, "screen": SCREEN})
            assert status == 200 and b["session"] not in (None, a), b
            served = node.recommender.serving(SCREEN)
            assert served is not None and served.session == b["session"]
            return {"a": a, "b": b["session"]}

    ids = asyncio.run(main())
    stored = stored_checkins(cfg)
    ha, hb = hash_customer("CARD-A", SALT), hash_customer("CARD-B", SALT)
    assert stored == [(ids["a"], ha), (ids["a"], ha), (ids["b"], hb)], "the refused check-in was stored"

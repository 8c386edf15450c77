"""Fusion: shelf events attributed to tracked shoppers, sessions, check-ins, shelf-only mode."""

from __future__ import annotations

import asyncio
import math

import pytest

from edge.bus import Bus
from edge.config import NodeConfig
from edge.events import CheckIn, ShelfEvent, ShopperEvent, TrackUpdate
from edge.fusion import Fusion, SessionView, hash_customer, shopper_event_id

LAYOUT = {
    "zones": [
        {"id": "dairy", "polygon": [[0, 0], [5, 0], [5, 4], [0, 4]]},
        {"id": "bakery", "polygon": [[5, 0], [10, 0], [10, 4], [5, 4]]},
    ],
    "shelves": [
        {"id": "milk", "zone": "dairy", "position": [2, 0.3], "reach_m": 1.2,
         "slots": [{"slot": 0, "sku": "MILK"}, {"slot": 1, "sku": "BUTTER"}]},
        {"id": "cheese", "zone": "dairy", "position": [3, 0.3], "slots": [{"slot": 0, "sku": "BRIE"}]},
        {"id": "bread", "zone": "bakery", "position": [7, 0.3], "slots": [{"slot": 0, "sku": "LOAF"}]},
    ],
    "screens": [{"id": "dairy-screen", "position": [2.5, 3.8], "zone": "dairy"}],
}
T0 = 1_800_000_000.0
SALT = "test-salt"


def _cfg(camera: bool = True) -> NodeConfig:
    return NodeConfig.model_validate({"layout": LAYOUT, "camera": {"enabled": camera},
                                      "fusion": {"customer_salt": SALT}})


def _walk(f: Fusion, track: int, pts: list[tuple[float, float]], t0: float, dt: float = 1 / 15) -> float:
    t = t0
    for x, y in pts:
        f.on_track(TrackUpdate(track=track, x=x, y=y, zone=f.layout.zones[0].id if x < 5 else "bakery", t=t))
        t += dt
    return t


def _stand(f: Fusion, track: int, x: float, y: float, t0: float, secs: float) -> float:
    return _walk(f, track, [(x, y)] * int(secs * 15), t0)


def _both_stand(f: Fusion, a: tuple[int, float, float], b: tuple[int, float, float], t0: float, secs: float) -> float:
    t = t0
    for _ in range(int(secs * 15)):
        for tr, x, y in (a, b):
            f.on_track(TrackUpdate(track=tr, x=x, y=y, zone="dairy", t=t))
        t += 1 / 15
    return t


def test_pick_is_attributed_to_the_shopper_standing_at_the_shelf() -> None:
    out: list[ShopperEvent] = []
    f = Fusion(_cfg(), out.append)
    t = _both_stand(f, (1, 2.0, 0.85), (2, 6.0, 2.0), T0, 2.0)
    ev = ShelfEvent(shelf="milk", slot=0, sku=None, delta_units=-1, t=t - 0.2)
    f.on_shelf_event(ev)
    assert len(out) == 1
    se = out[0]
    assert se.attributed and se.sku == "MILK" and se.action == "pick" and se.zone == "dairy"
    assert se.shelf == "milk" and se.slot == 0 and se.units == 1
    assert se.id == shopper_event_id(ev.id)
    s = f.session(se.session)
    assert s is not None and s.track == 1 and s.items == (("MILK", 1),) and s.attributed
    # a second pick and a put-back land in the same visit
    f.on_shelf_event(ShelfEvent(shelf="milk", slot=1, sku="BUTTER", delta_units=-2, t=t))
    f.on_shelf_event(ShelfEvent(shelf="milk", slot=0, sku=None, delta_units=+1, t=t + 0.05))
    assert {o.session for o in out} == {se.session}
    assert out[-1].action == "put"
    s = f.session(se.session)
    assert s is not None and dict(s.items) == {"MILK": 0, "BUTTER": 2} and s.skus == ("BUTTER",)


def test_two_shoppers_equally_close_stay_unattributed() -> None:
    out: list[ShopperEvent] = []
    f = Fusion(_cfg(), out.append)
    t = _both_stand(f, (1, 1.8, 0.85), (2, 2.2, 0.85), T0, 2.0)
    f.on_shelf_event(ShelfEvent(shelf="milk", slot=0, sku=None, delta_units=-1, t=t))
    assert len(out) == 1 and out[0].attributed is False
    anon = f.session(out[0].session)
    assert anon is not None and anon.shelf == "milk" and anon.track is None and not anon.attributed
    assert f.health()["ambiguous"] == 1


def test_nearest_wins_when_clear_by_the_margin_and_a_passer_by_loses_to_the_one_standing() -> None:
    out: list[ShopperEvent] = []
    f = Fusion(_cfg(), out.append)
    t = _both_stand(f, (1, 2.0, 0.85), (2, 2.9, 1.0), T0, 2.0)  # 0.55 m vs ~1.1 m
    f.on_shelf_event(ShelfEvent(shelf="milk", slot=0, sku=None, delta_units=-1, t=t))
    assert out[-1].attributed and f.session(out[-1].session).track == 1  # type: ignore[union-attr]
    # shopper 3 stands 0.6 m from the cheese shelf; shopper 4 walks past closer than that at the moment
    t2 = t + 5
    path = [(1.5 + 0.07 * k, 0.8) for k in range(30)]
    for k in range(30):
        f.on_track(TrackUpdate(track=3, x=3.0, y=0.9, zone="dairy", t=t2 + k / 15))
        x, y = path[k]
        f.on_track(TrackUpdate(track=4, x=x, y=y, zone="dairy", t=t2 + k / 15))
    f.on_shelf_event(ShelfEvent(shelf="cheese", slot=0, sku=None, delta_units=-1, t=t2 + 29 / 15))
    assert out[-1].attributed and f.session(out[-1].session).track == 3  # type: ignore[union-attr]


def test_nobody_in_reach_and_bad_input_are_counted_not_fatal() -> None:
    out: list[ShopperEvent] = []
    f = Fusion(_cfg(), out.append)
    t = _stand(f, 1, 8.0, 3.5, T0, 1.0)
    f.on_shelf_event(ShelfEvent(shelf="milk", slot=0, sku=None, delta_units=-1, t=t))
    assert out[-1].attributed is False and f.health()["nobody_in_reach"] == 1
    f.on_shelf_event(ShelfEvent(shelf="nope", slot=0, sku=None, delta_units=-1, t=t))  # unknown shelf, no sku
    f.on_shelf_event(ShelfEvent(shelf="nope", slot=0, sku="X1", delta_units=-1, t=t))  # unknown shelf, sku given
    f.on_shelf_event(ShelfEvent(shelf="milk", slot=9, sku=None, delta_units=-1, t=t))  # empty slot
    f.on_shelf_event(ShelfEvent(shelf="milk", slot=0, sku=None, delta_units=0, t=t))
    f.on_track(TrackUpdate(track=5, x=math.nan, y=1.0, zone=None, t=t))
    h = f.health()
    assert h["unknown_shelf"] == 2 and h["no_sku"] == 2 and h["bad_events"] == 2
    assert [o.sku for o in out] == ["MILK", "X1"]


def test_without_camera_every_shelf_gets_an_anonymous_session() -> None:
    out: list[ShopperEvent] = []
    sessions: list[SessionView] = []
    f = Fusion(_cfg(camera=False), out.append, on_session=sessions.append)
    assert f.health()["mode"] == "shelf_only"
    for k, shelf in enumerate(["milk", "milk", "bread", "milk"]):
        f.on_shelf_event(ShelfEvent(shelf=shelf, slot=0, sku=None, delta_units=-1, t=T0 + k))
    assert all(not o.attributed for o in out)
    assert out[0].session == out[1].session == out[3].session != out[2].session
    assert f.session(out[0].session).items == (("MILK", 3),)  # type: ignore[union-attr]
    # quiet for longer than anonymous_idle_s: the next pick starts a new anonymous visit
    f.on_shelf_event(ShelfEvent(shelf="milk", slot=0, sku=None, delta_units=-1, t=T0 + 200))
    assert out[-1].session != out[0].session
    closed = [s for s in sessions if s.ended is not None]
    assert any(s.id == out[0].session for s in closed)
    # the camera comes back: attribution resumes
    f.set_camera_status(True)
    t = _stand(f, 9, 7.0, 0.85, T0 + 300, 1.5)
    f.on_shelf_event(ShelfEvent(shelf="bread", slot=0, sku=None, delta_units=-1, t=t))
    assert out[-1].attributed and f.health()["mode"] == "camera"


def test_sessions_run_from_entry_to_exit_with_handoff_of_a_briefly_lost_track() -> None:
    sessions: list[SessionView] = []
    out: list[ShopperEvent] = []
    f = Fusion(_cfg(), out.append, on_session=sessions.append)
    t = _walk(f, 1, [(0.5 + 0.05 * k, 0.9) for k in range(30)], T0)  # walks to the milk shelf
    t = _stand(f, 1, 2.0, 0.9, t, 1.0)
    f.on_shelf_event(ShelfEvent(shelf="milk", slot=0, sku=None, delta_units=-1, t=t))
    sid = out[-1].session
    # the track is lost behind something for 1.5 s and comes back as track 2 nearby
    t = _walk(f, 2, [(2.3 + 0.05 * k, 0.9) for k in range(20)], t + 1.5)
    assert f.session(sid).track == 2  # type: ignore[union-attr]
    assert f.health()["handoffs"] == 1
    t = _stand(f, 2, 3.0, 0.9, t, 1.0)
    f.on_shelf_event(ShelfEvent(shelf="cheese", slot=0, sku=None, delta_units=-1, t=t))
    assert out[-1].session == sid
    # leaves for good: closed once the handoff window has passed
    f.expire(t + 10)
    view = f.session(sid)
    assert view is not None and view.ended is not None and view.ended <= t + 0.1
    assert view.items == (("MILK", 1), ("BRIE", 1))
    assert [s.id for s in sessions if s.ended is not None] == [sid]
    assert not f.active_sessions()
    # a new track far away after the window is a new visit
    _stand(f, 3, 8.0, 2.0, t + 11, 0.5)
    assert f.active_sessions()[0].id != sid


def test_check_in_links_a_hashed_customer_and_refuses_raw_ids() -> None:
    f = Fusion(_cfg(), lambda e: None)
    t = _both_stand(f, (1, 2.5, 3.3), (2, 8.0, 1.0), T0, 1.0)
    h = hash_customer("LOYALTY-0042", SALT)
    assert len(h) == 64 and h == hash_customer(" LOYALTY-0042 ", SALT)
    assert h != hash_customer("LOYALTY-0042", "other-salt")
    assert h == hash_customer("LOYALTY-0042", _cfg().fusion.customer_salt)
    with pytest.raises(ValueError, match="hash_customer"):
        f.check_in("LOYALTY-0042", track=1)
    # a QR scan at the dairy screen links the shopper standing in front of it
    sid = f.check_in(h, screen="dairy-screen", t=t)
    view = f.session(sid)
    assert view is not None and view.track == 1 and view.customer == h
    assert "LOYALTY-0042" not in repr(f.active_sessions())
    sid2 = f.check_in(hash_customer("C2", SALT), track=2)
    assert f.session(sid2).track == 2  # type: ignore[union-attr]
    # nobody known: an app check-in still gets a session
    sid3 = f.check_in(hash_customer("C3", SALT))
    assert sid3 not in (sid, sid2) and f.session(sid3).customer == hash_customer("C3", SALT)  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        hash_customer("  ", SALT)


def test_session_near_picks_the_nearest_live_shopper_in_the_zone() -> None:
    f = Fusion(_cfg(), lambda e: None)
    t = _both_stand(f, (1, 2.0, 3.0), (2, 4.0, 1.0), T0, 1.0)
    _stand(f, 3, 6.0, 3.5, T0, 1.0)  # closest to the point, but in the bakery
    near = f.session_near(4.0, 3.4, "dairy")
    assert near is not None and near.track == 1
    assert f.session_near(4.0, 3.4, None).track == 3  # type: ignore[union-attr]
    assert f.session_near(4.0, 3.4, "dairy", max_m=0.5) is None
    # camera down: the latest anonymous shelf session stands in
    f.set_camera_status(False)
    f.on_shelf_event(ShelfEvent(shelf="cheese", slot=0, sku=None, delta_units=-1, t=t + 10))
    f.expire(t + 10)
    s = f.session_near(2.5, 3.8, "dairy", max_m=5.0)
    assert s is not None and s.shelf == "cheese"


def test_replayed_shelf_event_keeps_its_idempotency_key() -> None:
    out: list[ShopperEvent] = []
    f = Fusion(_cfg(camera=False), out.append)
    ev = ShelfEvent(shelf="milk", slot=0, sku=None, delta_units=-1, t=T0)
    f.on_shelf_event(ev)
    f.on_shelf_event(ev)
    assert out[0].id == out[1].id == shopper_event_id(ev.id) != ev.id


def test_as_a_room_on_the_bus() -> None:
    async def run() -> tuple[list[ShopperEvent], dict[str, int | str]]:
        bus = Bus()
        got: list[ShopperEvent] = []
        bus.subscribe(ShopperEvent, got.append)
        f = Fusion(_cfg(), bus.publish, bus=bus)
        await f.start()
        for k in range(20):
            bus.publish(TrackUpdate(track=4, x=7.0, y=0.85, zone="bakery", t=T0 + k / 15))
        bus.publish(ShelfEvent(shelf="bread", slot=0, sku=None, delta_units=-1, t=T0 + 1.3))
        bus.publish(CheckIn(customer=hash_customer("C9", SALT), track=4, t=T0 + 1.4))
        bus.publish(CheckIn(customer="raw-id", track=4, t=T0 + 1.4))  # refused, counted
        h = f.health()
        await f.stop()
        bus.publish(ShelfEvent(shelf="bread", slot=0, sku=None, delta_units=-1, t=T0 + 2))  # not subscribed any more
        return got, h

    got, h = asyncio.run(run())
    assert len(got) == 1 and got[0].attributed and got[0].sku == "LOAF"
    assert h["check_ins"] == 1 and h["bad_events"] == 1 and h["status"] == "ok"

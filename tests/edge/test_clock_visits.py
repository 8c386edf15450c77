"""Wall-clock steps and the node's timers: visits (fusion, recommend) and the conversion window (feedback).

A Pi without a real-time clock runs until NTP syncs, then its wall clock steps by hours or years. A step
forward must not end every visit at once; a step back must not freeze expiry. The rooms take a clock
(``edge.clock.Clock``: wall + monotonic); the ``fake_clock`` fixture (tests/conftest.py) moves both (time
passes) or only the wall (a step). Real SQLite, the bundled demo store and catalogue."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from edge.app import bundled_catalogue
from edge.bus import Bus
from edge.config import NodeConfig, parse_config
from edge.events import RecItem, RecommendationSet, ShelfEvent, ShopperEvent, TrackUpdate
from edge.fusion import Fusion
from edge.recommend import Recommender
from edge.signage.feedback import Feedback
from edge.store import Store

DAY = 86400.0
YEAR = 365 * DAY
WALL0, MONO0 = 1_800_000_000.0, 500.0  # where each test's fake clock starts
LAYOUT = {
    "zones": [{"id": "dairy", "polygon": [[0, 0], [5, 0], [5, 4], [0, 4]]}],
    "shelves": [
        {"id": "milk", "zone": "dairy", "position": [2, 0.3], "reach_m": 1.2,
         "slots": [{"slot": 0, "sku": "MILK"}, {"slot": 1, "sku": "BUTTER"}]},
        {"id": "cheese", "zone": "dairy", "position": [4, 0.3], "slots": [{"slot": 0, "sku": "BRIE"}]},
    ],
    "screens": [{"id": "dairy-screen", "position": [2.5, 3.8], "zone": "dairy"}],
}


def _cfg(camera: bool) -> NodeConfig:
    return NodeConfig.model_validate({"layout": LAYOUT, "camera": {"enabled": camera},
                                      "fusion": {"customer_salt": "s", "anonymous_idle_s": 60}})


def _stand(f: Fusion, fc: Any, secs: float, x: float = 2.0, y: float = 1.0) -> None:
    for _ in range(int(secs * 15)):
        f.on_track(TrackUpdate(track=7, x=x, y=y, zone="dairy", t=fc.w))
        fc.elapse(1 / 15)


def test_a_tracked_shopper_keeps_their_visit_across_a_step_forward(fake_clock: Any) -> None:
    fc = fake_clock(WALL0, MONO0)
    out: list[ShopperEvent] = []
    f = Fusion(_cfg(camera=True), out.append, clock=fc.clock())
    _stand(f, fc, 2.0)
    f.on_shelf_event(ShelfEvent(shelf="milk", slot=0, sku=None, delta_units=-1, t=fc.w))
    fc.step(YEAR)  # NTP: the Pi had booted a year behind
    _stand(f, fc, 2.0)
    f.expire()
    f.on_shelf_event(ShelfEvent(shelf="milk", slot=1, sku=None, delta_units=-1, t=fc.w))
    assert [e.attributed for e in out] == [True, True]
    assert out[0].session == out[1].session  # one visit: the ranker still knows the milk
    assert f.health()["sessions_closed"] == 0
    v = f.session(out[0].session)
    assert v is not None and v.items == (("MILK", 1), ("BUTTER", 1))


def test_shelf_only_visits_across_steps_expire_by_elapsed_time(fake_clock: Any) -> None:
    fc = fake_clock(WALL0, MONO0)
    out: list[ShopperEvent] = []
    f = Fusion(_cfg(camera=False), out.append, clock=fc.clock())
    f.on_shelf_event(ShelfEvent(shelf="milk", slot=0, sku=None, delta_units=-1, t=fc.w))
    fc.elapse(1.0)
    fc.step(-3600.0)  # the clock had been an hour ahead
    f.on_shelf_event(ShelfEvent(shelf="cheese", slot=0, sku=None, delta_units=-1, t=fc.w))
    f.expire()
    assert len(f.active_sessions()) == 2  # the new visit is not 'an hour idle'
    fc.elapse(30.0)
    f.on_shelf_event(ShelfEvent(shelf="cheese", slot=0, sku=None, delta_units=-1, t=fc.w))
    fc.elapse(35.0)
    f.expire()
    # the milk visit has been quiet 66 s (> anonymous_idle_s 60): it ends, the step back did not freeze it
    assert [v.shelf for v in f.active_sessions()] == ["cheese"]
    assert out[1].session == out[2].session
    fc.step(YEAR)
    fc.elapse(5.0)
    f.expire()
    assert [v.shelf for v in f.active_sessions()] == ["cheese"]  # 40 s quiet, not a year


def _demo(tmp_path: Path) -> NodeConfig:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp_path)
    return NodeConfig.model_validate(raw)


def test_recommend_visits_expire_by_elapsed_time_across_steps(tmp_path: Path, fake_clock: Any) -> None:
    config = _demo(tmp_path)
    shelf = config.layout.shelves[0]
    sku = next(sl.sku for sl in shelf.slots if sl.sku)
    fc = fake_clock(WALL0, MONO0)
    with Store(tmp_path / "sc.db", flush_interval_ms=5) as store:
        store.upsert_products(bundled_catalogue()).result(5)
        rec = Recommender(config, store, Bus(), clock=fc.clock())

        def pick(session: str) -> None:
            rec.on_shopper_event(ShopperEvent(session=session, sku=sku, action="pick", zone=shelf.zone,
                                              shelf=shelf.id, slot=0, t=fc.w))

        pick("a")
        fc.elapse(10.0)
        fc.step(YEAR)
        fc.elapse(10.0)
        assert rec.expire_visits(300.0) == 0  # 20 s quiet, not a year
        screen = next(s.id for s in config.layout.screens if s.zone == shelf.zone and s.kind != "shelf_display")
        v = rec.serving(screen)
        assert v is not None and v.session == "a"  # still in front of the screen
        fc.step(-2 * YEAR)
        pick("b")
        fc.elapse(200.0)
        pick("b")
        fc.elapse(150.0)
        # 'a' has been quiet 370 s (ends); 'b' 150 s (stays) -- the step back froze neither
        assert rec.expire_visits(300.0) == 1 and set(rec.visits) == {"b"}


def _set(session: str, skus: list[str]) -> RecommendationSet:
    return RecommendationSet(screen="dairy-screen", session=session, model_version="m1",
                             items=tuple(RecItem(sku=s, name=s, price=1.0, score=1.0, reason="r") for s in skus))


def test_a_pick_after_a_step_still_converts_within_the_window(tmp_path: Path, fake_clock: Any) -> None:
    fc = fake_clock(WALL0, MONO0)
    with Store(tmp_path / "db.sqlite", flush_interval_ms=5) as store:
        fb = Feedback(store, window_s=600, upstream_topic="up", min_visible_s=0.0, clock=fc.clock())
        fb.shown(_set("s1", ["x", "y"]))
        fb.shown(_set("s2", ["p", "q"]))
        fc.elapse(30.0)
        fc.step(YEAR)  # NTP
        fc.elapse(30.0)
        assert fb.prune() == 0  # a minute after the sets were shown, not a year
        conv = fb.on_shopper_event(ShopperEvent(session="s1", sku="y", action="pick", zone="z", t=fc.w))
        assert conv is not None and conv.sku == "y"
        fc.step(-2 * YEAR)  # and back
        fc.elapse(30.0)
        conv = fb.on_shopper_event(ShopperEvent(session="s2", sku="q", action="pick", zone="z", t=fc.w))
        assert conv is not None and conv.sku == "q"
        fc.elapse(600.0)
        assert fb.prune() == 2  # the window is over by elapsed time: nothing kept until the clock catches up
        assert fb.on_shopper_event(ShopperEvent(session="s1", sku="x", action="pick", zone="z", t=fc.w)) is None

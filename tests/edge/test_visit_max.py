"""A tracked visit does not last for hours: a real ``edge.app.Node`` in this process (the demo layout, the bundled
model and catalogue, real SQLite), track updates, check-ins and shelf events on its bus, a fake clock.

Old code: a tracked visit ended only when its track was lost (``handoff_s`` + 1 s) or idle for
``fusion.session_idle_s``; a track the camera keeps for hours (staff restocking a shelf, a mannequin the detector
keeps, a tracker that never loses someone standing at a shelf) made one visit that collected every pick for hours,
with the check-in of whoever checked in on it. Now every visit but a shelf's anonymous one (``anonymous_max_s``)
ends once it is ``fusion.visit_max_s`` old (default 2 h), as an idle one ends (``on_session`` told, saved), and the
track's next update or pick opens a new visit; the check-in does not carry over."""

from __future__ import annotations

import json
import sqlite3
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from edge.config import ConfigError, parse_config
from edge.events import CheckIn, ShelfEvent, TrackUpdate
from edge.fusion import Fusion, hash_customer

SALT = "acme-visit-salt-0f3a9c1e7d5b2468"  # the salt visit_config sets (tests/conftest.py VISIT_SALT)
AT_SHELF = (10.5, 1.3)  # 0.7 m in front of dairy-1 (reach 1.2 m)


def test_a_track_kept_past_visit_max_s_gets_a_new_visit_without_the_check_in(
        tmp_path: Path, visit_config: Any, visit_run: Any) -> None:
    cfg = visit_config(tmp_path, visit_max_s=600.0)
    customer = hash_customer("CARD-7", SALT)
    out: dict[str, Any] = {}

    async def scenario(node: Any, fc: Any, picks: list[Any]) -> None:
        f, rec = node.fusion, node.recommender
        t0 = fc.w
        for step in range(1500):  # 750 s standing at the shelf, seen every 0.5 s, a pick every 30 s
            node.bus.publish(TrackUpdate(track=7, x=AT_SHELF[0], y=AT_SHELF[1], zone="dairy", t=fc.w))
            if step == 20:
                node.bus.publish(CheckIn(customer=customer, track=7, t=fc.w))
            if step % 60 == 30:
                node.bus.publish(ShelfEvent(shelf="dairy-1", slot=step // 60 % 6, sku=None, delta_units=-1, t=fc.w))
                assert picks[-1].attributed is True
            fc.elapse(0.5)
        sessions = [p.session for p in picks]
        firsts = list(dict.fromkeys(sessions))
        assert len(firsts) == 2, [sessions.count(s) for s in firsts]
        a, b = firsts
        # picks at 15, 45, ..., 585 s went to the first visit; 615 .. 735 s to the new one
        assert [sessions.count(s) for s in firsts] == [20, 5]
        va, vb = f.session(a), f.session(b)
        assert va is not None and vb is not None
        assert va.ended is not None and 600.0 <= va.ended - t0 <= 601.0 and va.customer == customer
        assert vb.ended is None and vb.track == 7 and vb.customer is None and 600.0 < vb.started - t0 <= 601.5
        assert f.health()["sessions_aged_out"] == 1
        # the recommender was told: the old visit ended (no screen serves it), the new one has no customer
        assert rec.visits[a].ended and rec.visits[a].customer == customer
        assert not rec.visits[b].ended and rec.visits[b].customer is None
        served = rec.serving("dairy-screen")
        assert served is not None and served.session == b
        # saved when the recommender expires it, with its own picks and the customer
        fc.elapse(cfg.fusion.session_idle_s + 60.0)
        rec.expire_visits(cfg.fusion.session_idle_s)
        out["a"] = a

    visit_run(cfg, "on", scenario)
    conn = sqlite3.connect(cfg.node.data_dir / "shelfcast.db")
    try:
        rows = {s: (c, len(json.loads(items))) for s, c, items in
                conn.execute("SELECT id, customer, items FROM sessions")}
    finally:
        conn.close()
    assert rows[out["a"]] == (customer, 20), rows


def test_a_pick_past_visit_max_s_before_the_sweep_opens_the_new_visit(tmp_path: Path, visit_config: Any) -> None:
    """The sweep runs every 0.5 s of event time: a pick in between, past the limit, does not land on the old visit."""
    cfg = visit_config(tmp_path, visit_max_s=600.0)
    emitted: list[Any] = []
    told: list[Any] = []
    f = Fusion(cfg, emitted.append, told.append)
    f.set_camera_status(True)
    t0 = 1_800_000_000.0
    for i in range(6003):  # every 0.1 s up to t0 + 600.2: the last sweep at t0 + 600.0, not past the limit
        f.on_track(TrackUpdate(track=3, x=AT_SHELF[0], y=AT_SHELF[1], zone="dairy", t=t0 + i * 0.1))
        if i == 100:
            f.on_shelf_event(ShelfEvent(shelf="dairy-1", slot=0, sku=None, delta_units=-1, t=t0 + 10.0))
    old = emitted[-1].session
    assert f.session(old) is not None and f.session(old).ended is None  # type: ignore[union-attr]
    f.on_shelf_event(ShelfEvent(shelf="dairy-1", slot=1, sku=None, delta_units=-1, t=t0 + 600.3))
    new = emitted[-1].session
    assert new != old and emitted[-1].attributed
    ended = f.session(old)
    assert ended is not None and ended.ended is not None and ended.skus == ("1029743",)
    assert [v.id for v in told if v.ended is not None] == [old]
    nv = f.session(new)
    assert nv is not None and nv.track == 3 and nv.skus == ("995242",) and nv.started == t0 + 600.3
    # the track's updates now go to the new visit
    f.on_track(TrackUpdate(track=3, x=AT_SHELF[0], y=AT_SHELF[1], zone="dairy", t=t0 + 600.4))
    assert [s.id for s in f.active_sessions()] == [new]


def test_visit_max_s_defaults_to_two_hours() -> None:
    text = resources.files("edge").joinpath("data/demo_store.yaml").read_text()
    assert parse_config(text).fusion.visit_max_s == 7200.0
    assert parse_config(text + "\nfusion:\n  visit_max_s: 10800\n").fusion.visit_max_s == 10800.0


@pytest.mark.parametrize("value", ["0", "30", "90000", "\"2 hours\""])
def test_visit_max_s_is_validated_with_its_key(value: str) -> None:
    text = resources.files("edge").joinpath("data/demo_store.yaml").read_text()
    assert "\nfusion:" not in text
    with pytest.raises(ConfigError) as ei:
        parse_config(text + f"\nfusion:\n  visit_max_s: {value}\n")
    assert "fusion.visit_max_s" in str(ei.value), str(ei.value)

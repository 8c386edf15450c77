"""A busy shelf's anonymous visit does not last for days: a real ``edge.app.Node`` in this process (the demo layout,
the bundled model and catalogue, real SQLite), shelf events on its bus, a fake clock.

Old code: a pick nobody is attributed to (camera off, or nobody within reach) went to the shelf's anonymous visit,
which ended only after ``fusion.anonymous_idle_s`` (60 s) without a pick; a shelf picked more often than that kept
one visit for as long as the store was busy (the 48-min soak: 8 visits of 976-1,330 picks each, the whole run), so
the visit's picks -- the session context the model ranks with -- were hours of unrelated shoppers. Now an anonymous
visit lives at most ``fusion.anonymous_max_s`` (180 s); the next unattributed pick after that opens a new one and
the old one ends as any visit ends (saved, ``on_session`` told, its screen released)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from edge.app import Node
from edge.config import ConfigError, parse_config
from edge.events import ShelfEvent, ShopperEvent

SCREEN = "dairy-screen"


@pytest.mark.parametrize("camera", ["down", "on_nobody_in_reach"])
def test_a_shelf_picked_every_10_s_gets_a_new_anonymous_visit_after_anonymous_max_s(
        tmp_path: Path, fake_clock: Any, visit_config: Any, camera: str) -> None:
    cfg = visit_config(tmp_path)
    assert cfg.fusion.anonymous_max_s == 180.0

    async def main() -> list[str]:
        node = Node(cfg)
        await node.start()
        try:
            fc = fake_clock()
            rec, f = node.recommender, node.fusion
            assert rec is not None and f is not None
            rec.clock = lambda: fc.w
            rec.locator = f
            f.set_camera_status(camera != "down")  # camera on and nobody tracked: every pick is unattributed
            picks: list[ShopperEvent] = []
            node.bus.subscribe(ShopperEvent, picks.append)
            t0 = fc.w
            for i in range(61):  # 10 minutes, a pick every 10 s: never 60 s quiet
                node.bus.publish(ShelfEvent(shelf="dairy-1", slot=i % 2, sku=None, delta_units=-1, t=fc.w))
                assert picks[-1].attributed is False
                if len(picks) > 1 and picks[-1].session != picks[-2].session:
                    # the old visit ended as any visit ends: the recommender was told, its screen went to the new
                    assert rec.visits[picks[-2].session].ended
                    served = rec.serving(SCREEN)
                    assert served is not None and served.session == picks[-1].session
                fc.elapse(10.0)
                f.expire(fc.w)
                node.housekeep_once()
            sessions = [p.session for p in picks]
            firsts = list(dict.fromkeys(sessions))
            # 0..180 s, 190..370 s, 380..560 s, 570..600 s: a new visit at the first pick past 180 s of the last
            assert [sessions.count(s) for s in firsts] == [19, 19, 19, 4], [sessions.count(s) for s in firsts]
            for s in firsts[:-1]:
                v = f.session(s)
                assert v is not None and v.ended is not None and v.ended - v.started == 180.0
                assert v.shelf == "dairy-1" and sum(n for _, n in v.items) == 19
            live = f.session(firsts[-1])
            assert live is not None and live.ended is None and live.started == t0 + 570.0
            assert not rec.visits[firsts[-1]].ended
            served = rec.serving(SCREEN)
            assert served is not None and served.session == firsts[-1]
            assert f.health()["sessions_closed"] == 3
            # the ended visits are saved when the recommender expires them (session_idle_s), with their own picks
            fc.elapse(400.0)
            f.expire(fc.w)
            node.housekeep_once()
            rec.expire_visits(cfg.fusion.session_idle_s)
            return firsts
        finally:
            await node.stop()

    firsts = asyncio.run(main())
    conn = sqlite3.connect(cfg.node.data_dir / "shelfcast.db")
    try:
        saved = {s: len(json.loads(items)) for s, items in conn.execute("SELECT id, items FROM sessions")}
    finally:
        conn.close()
    assert saved == {firsts[0]: 19, firsts[1]: 19, firsts[2]: 19, firsts[3]: 4}, saved


@pytest.mark.parametrize("value", ["0", "-5", "\"3 minutes\"", "90000"])
def test_anonymous_max_s_is_validated_with_its_key(value: str) -> None:
    text = resources.files("edge").joinpath("data/demo_store.yaml").read_text()
    assert "\nfusion:" not in text
    text += f"\nfusion:\n  anonymous_max_s: {value}\n"
    with pytest.raises(ConfigError) as ei:
        parse_config(text)
    assert "fusion.anonymous_max_s" in str(ei.value), str(ei.value)


def test_anonymous_max_s_is_read() -> None:
    text = resources.files("edge").joinpath("data/demo_store.yaml").read_text()
    assert parse_config(text + "\nfusion:\n  anonymous_max_s: 240\n").fusion.anonymous_max_s == 240.0


def test_the_canary_keeps_a_long_visits_last_picks_only() -> None:
    """The sync canary's per-visit pick list grew by one entry a pick for the visit's whole life (old code: 5,000
    entries here), though a canary request only ever uses the last 17 (16 seen, SESSION_LEN, + the one to rank)."""
    from edge.sync.canary import CanarySet

    cs = CanarySet(None)
    skus = [f"sku-{i}" for i in range(5000)]
    for i, sku in enumerate(skus):
        cs.observe(ShopperEvent(session="busy", sku=sku, action="pick", zone="dairy", units=1, shelf="dairy-1",
                                slot=0, t=1000.0 + i, attributed=False, id=f"e{i}"))
    assert len(cs._visits["busy"]["picked"]) <= 34
    (req,) = cs.requests()
    assert req.picked == tuple(skus[-17:-1]) and req.target == skus[-1]

"""Screen assignment: each screen serves the nearest present shopper in its zone; nobody → popular items."""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from edge.config import NodeConfig, parse_config
from edge.events import ShopperEvent


def two_screen_config(tmp: Path) -> NodeConfig:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp)
    raw["signage"]["port"] = 0
    raw["layout"]["screens"] += [
        {"id": "dairy-west", "kind": "full", "position": [9.0, 1.0], "zone": "dairy"},
        {"id": "dairy-east", "kind": "strip", "position": [15.0, 1.0], "zone": "dairy"},
    ]
    return NodeConfig.model_validate(raw)


def test_nearest_shopper_per_screen_then_fallback(make_node: Callable[..., Any], tmp_path: Path) -> None:
    n = make_node(two_screen_config(tmp_path / "n"))
    n.publish(ShopperEvent(session="west-shopper", sku="1029743", action="pick", zone="dairy", shelf="dairy-1",
                           slot=0))
    n.publish(ShopperEvent(session="east-shopper", sku="840361", action="pick", zone="dairy", shelf="dairy-2",
                           slot=0))
    latest = n.node.screens.latest
    assert latest["dairy-west"].session == "west-shopper"
    assert latest["dairy-east"].session == "east-shopper"
    assert latest["dairy-screen"].session == "east-shopper"  # equidistant: the one who acted last
    assert latest["produce-screen"].session is None  # nobody in produce: popular items
    # the west shopper acts again: still only the west screen is theirs (east is nearer its own shopper)
    n.publish(ShopperEvent(session="west-shopper", sku="995242", action="pick", zone="dairy", shelf="dairy-1",
                           slot=1))
    assert latest["dairy-east"].session == "east-shopper"
    assert latest["dairy-west"].session == "west-shopper"
    # everybody leaves: within a couple of seconds every screen is back to the zone's popular items
    n.node.recommender.present_s = 0.3
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(latest[s].session for s in ("dairy-west", "dairy-east",
                                                                          "dairy-screen")):
        time.sleep(0.1)
    for s in ("dairy-west", "dairy-east", "dairy-screen"):
        assert latest[s].session is None and latest[s].items and latest[s].model_version == "fallback"


def test_shelf_display_gets_the_zone_top_item(make_node: Callable[..., Any]) -> None:
    n = make_node()
    n.publish(ShopperEvent(session="d-1", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
    edge = n.json("/api/screens/dairy-1-edge/recommendations")
    main = n.json("/api/screens/dairy-screen/recommendations")
    assert edge["kind"] == "shelf_display" and edge["items"][0]["sku"] == main["items"][0]["sku"]


def test_a_long_visit_never_blanks_its_screen(make_node: Callable[..., Any]) -> None:
    """The frequency cap excludes what a visit has seen `repeat_cap` times; a visit long enough to have
    seen the whole catalogue gets a new round of items, not an empty screen (issue #6: never go blank)."""
    n = make_node()
    rec = n.node.recommender
    sizes = []
    reasons: list[set[str]] = []
    for i in range(500):  # 347 products, 6 a set, each shown at most 3 times: exhausted after ~175 sets
        n.publish(ShopperEvent(session="marathon", sku="1029743", action="pick", zone="dairy", shelf="dairy-1",
                               slot=0, t=time.time() + i * 1e-3))
        rs = n.node.screens.latest["dairy-screen"]
        assert rs.session == "marathon"
        sizes.append(len(rs.items))
        reasons.append({it.reason for it in rs.items})
    assert rec.stats["cap_resets"] >= 1
    assert min(sizes) > 0, f"blank sets after pick {sizes.index(0)}"
    # the model ranker's own caps start a new round too: the visit keeps getting model picks, not only the
    # ranker's "popular in store" fallback
    assert set().union(*reasons[-100:]) - {"popular in store"}


def test_idle_screens_show_promotions_for_their_zone_and_hour(make_node: Callable[..., Any], tmp_path: Path) -> None:
    """Nobody in front of a screen: active promotions for its zone and hour first, then popular items."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    import pytest

    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp_path / "p")
    raw["signage"]["port"] = 0
    now = datetime.now(ZoneInfo(raw["node"]["timezone"])).hour
    raw["signage"]["promotions"] = [
        {"sku": "908531", "text": "2 for $1.50", "zones": ["dairy"]},  # all day, dairy only
        {"sku": "840361", "text": "not now", "zones": ["dairy"], "hours": [(now + 2) % 24, (now + 3) % 24 or 24]},
        {"sku": "1082185", "text": "sold out", "zones": ["dairy"]},  # stock set to 0 below
        {"sku": "995242", "text": "night owl", "hours": [now, (now + 1) % 24 or 24]},  # every zone, this hour
    ]
    n = make_node(NodeConfig.model_validate(raw))
    n.sync(lambda: n.node.store.set_stock({"1082185": 0}))
    # the idle screens' sets are made again now (housekeeping does this every minute)
    n.sync(lambda: [n.node.bus.publish(n.node.recommender.refresh(s)) for s in ("dairy-screen", "produce-screen")])
    dairy = n.json("/api/screens/dairy-screen/recommendations")
    assert dairy["session"] is None
    assert [(i["sku"], i["reason"]) for i in dairy["items"][:2]] == [("908531", "2 for $1.50"), ("995242", "night owl")]
    reasons = [i["reason"] for i in dairy["items"]]
    assert "not now" not in reasons and "sold out" not in reasons and len(dairy["items"]) > 2  # popular items too
    produce = n.json("/api/screens/produce-screen/recommendations")
    assert produce["items"][0]["sku"] == "995242" and "2 for $1.50" not in [i["reason"] for i in produce["items"]]
    # a shopper in front of the dairy screen gets their own ranking, not the promotions
    n.publish(ShopperEvent(session="p-1", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
    mine = n.json("/api/screens/dairy-screen/recommendations")
    assert mine["session"] == "p-1" and "2 for $1.50" not in [i["reason"] for i in mine["items"]]
    # config mistakes are named
    bad = dict(raw, signage=dict(raw["signage"], promotions=[{"sku": "1", "zones": ["nowhere"]}]))
    with pytest.raises(Exception, match="unknown zone 'nowhere'"):
        NodeConfig.model_validate(bad)
    bad = dict(raw, signage=dict(raw["signage"], promotions=[{"sku": "1", "hours": [5, 5]}]))
    with pytest.raises(Exception, match="start != end"):
        NodeConfig.model_validate(bad)

"""Impressions and conversions: stored, queued upstream, reported per screen and model version."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.events import RecItem, RecommendationSet, ShopperEvent
from edge.signage.feedback import Feedback
from edge.store import Store


def test_shown_then_picked_is_a_conversion_and_reported(make_node: Callable[..., Any]) -> None:
    n = make_node()
    n.publish(ShopperEvent(session="fb-1", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
    shown = n.json("/api/screens/dairy-screen/recommendations")
    assert shown["session"] == "fb-1"
    target = shown["items"][1]["sku"]
    n.publish(ShopperEvent(session="fb-1", sku=target, action="pick", zone="dairy", shelf="dairy-2", slot=3))
    n.publish(ShopperEvent(session="fb-1", sku=target, action="pick", zone="dairy", shelf="dairy-2", slot=3))
    n.publish(ShopperEvent(session="other", sku=shown["items"][2]["sku"], action="pick", zone="dairy",
                           shelf="dairy-2", slot=3))  # not shown to this session: no conversion
    fb = n.node.signage.feedback
    assert fb.stats["conversions"] == 1  # once per (session, sku)
    n.node.store.flush()
    rows = n.node.store.query("SELECT payload FROM events WHERE type = 'conversion'")
    conv = json.loads(rows[0]["payload"])
    assert conv["session"] == "fb-1" and conv["sku"] == target and conv["screen"] == "dairy-screen"
    assert conv["model_version"] == shown["model_version"]
    up = n.node.store.query("SELECT payload FROM outbox WHERE payload LIKE '%\"type\":\"conversion\"%'")
    assert len(up) == 1  # queued upstream
    imps = n.node.store.query("SELECT * FROM impressions WHERE session = 'fb-1' AND screen = 'dairy-screen'")
    assert imps and any(target in json.loads(r["skus"]) for r in imps)

    data_dir = n.config.node.data_dir
    r = subprocess.run([sys.executable, "-m", "edge", "report", "--data-dir", str(data_dir), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    dairy = next(s for s in rep["screens"] if s["screen"] == "dairy-screen")
    assert dairy["conversions"] == 1 and dairy["personal_impressions"] >= 1
    assert dairy["conversion_rate"] == round(1 / dairy["personal_impressions"], 4)
    assert any(m["model_version"] == shown["model_version"] and m["conversions"] == 1 for m in rep["models"])
    text = subprocess.run([sys.executable, "-m", "edge", "report", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "dairy-screen" in text.stdout and "by model version" in text.stdout


def test_report_without_a_database_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "edge", "report", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no node database" in r.stderr and "Traceback" not in r.stderr


def _set(screen: str, session: str | None, skus: list[str], t: float) -> RecommendationSet:
    return RecommendationSet(screen=screen, session=session, model_version="m1", t=t,
                             items=tuple(RecItem(sku=s, name=s, price=1.0, score=1.0, reason="r") for s in skus))


def test_window_repeats_and_puts(tmp_path: Path) -> None:
    with Store(tmp_path / "db.sqlite") as store:
        fb = Feedback(store, window_s=60, upstream_topic="up", min_visible_s=0.5)
        assert fb.shown(_set("a", "s", ["x", "y"], t=1000.0), t=1000.0) is None  # not seen long enough yet
        assert fb.shown(_set("a", "s", ["x", "y"], t=1001.0), t=1001.0) is None  # same set again: no new impression
        assert fb.tick(now=1000.2) == 0 and fb.tick(now=1000.6) == 1  # on screen for half a second: an impression
        assert fb.stats == {"impressions": 1, "conversions": 0, "repeats": 1, "glimpses": 0}
        # a burst: a set replaced within 0.1 s was a glimpse, not an impression
        fb.shown(_set("b", "s2", ["p"], t=1000.0), t=1000.0)
        imp = fb.shown(_set("b", "s2", ["q"], t=1000.1), t=1000.1)
        assert imp is None and fb.stats["glimpses"] == 1
        # ... unless the shopper picks from the set on screen: then it was seen
        conv = fb.on_shopper_event(ShopperEvent(session="s2", sku="q", action="pick", zone="z", t=1000.2))
        assert conv is not None and fb.stats["impressions"] == 2
        put = ShopperEvent(session="s", sku="x", action="put", zone="z", t=1010.0)
        assert fb.on_shopper_event(put) is None  # putting back is not a conversion
        late = ShopperEvent(session="s", sku="x", action="pick", zone="z", t=1000.0 + 61)
        assert fb.on_shopper_event(late) is None  # outside the window
        ok = ShopperEvent(session="s", sku="y", action="pick", zone="z", t=1000.0 + 59)
        conv = fb.on_shopper_event(ok)
        assert conv is not None and conv.screen == "a" and conv.sku == "y"
        assert fb.prune(now=1000.0 + 200) == 2

"""Popularity by zone × hour: prior from sales heat, live picks by zone and hour, stock filter."""

from __future__ import annotations

from edge.ranking.fallback import PopularityRanker


def make() -> PopularityRanker:
    return PopularityRanker([("milk", 1000, "dairy"), ("eggs", 500, "dairy"), ("cola", 800, "drinks"),
                             ("beer", 100, "drinks")])


def test_home_zone_first_then_global() -> None:
    r = make()
    assert [i.sku for i in r.top("drinks", 9, 2)] == ["cola", "beer"]
    assert [i.sku for i in r.top("dairy", 9, 2)] == ["milk", "eggs"]
    assert r.top(None, 9, 1)[0].reason == "popular in store"


def test_live_picks_change_the_hour_bucket_only() -> None:
    r = make()
    for i in range(20):
        r.observe("beer", "drinks", 18, 1e9 + i)
    evening = r.top("drinks", 18, 1)[0]
    assert evening.sku == "beer" and evening.reason == "popular here at this hour"
    assert r.top("drinks", 8, 1)[0].sku == "cola"


def test_exclude_and_stock() -> None:
    r = make()
    got = r.top("dairy", 9, 4, exclude={"milk"}, in_stock=lambda s: s != "eggs")
    assert "milk" not in [i.sku for i in got] and "eggs" not in [i.sku for i in got]
    assert len(got) == 2

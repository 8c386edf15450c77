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


def test_counts_are_compared_as_of_now_not_as_of_their_last_pick() -> None:
    """A sku that sold well three weeks ago and not since has decayed to 1/8 of its count (half-life 7 days): it is
    compared with one picked today at its decayed count, and the cached ranking follows the clock."""
    now = [0.0]
    r = PopularityRanker([("old", 1, "drinks"), ("new", 1, "drinks")], live_weight=50.0, mono=lambda: now[0])
    for i in range(10):
        r.observe("old", "drinks", 18, 1e9 + i)
    assert r.top("drinks", 18, 1)[0].sku == "old"  # cached here ...
    now[0] = 21 * 86400.0
    for i in range(3):
        r.observe("new", "drinks", 18, 2e9 + i)
    assert [i.sku for i in r.top("drinks", 18, 2)] == ["new", "old"]  # 3 today > 10 x 1/8
    now[0] += 42 * 86400.0  # six more weeks with no picks at all: both decay alike, the order holds ...
    assert [i.sku for i in r.top("drinks", 18, 2)] == ["new", "old"]
    r2 = PopularityRanker([("a", 1, None), ("b", 1, None)], live_weight=50.0, mono=lambda: now[0])
    r2.observe("a", None, 9, 0.0)
    r2.observe("b", None, 9, 0.0)
    r2.observe("b", None, 9, 0.0)
    assert r2.top(None, 9, 1)[0].sku == "b"
    t0 = now[0]
    now[0] = t0 + 14 * 86400.0
    for _ in range(2):
        r2.observe("a", None, 9, 0.0)  # a: 1/4 + 2 = 2.25 now; b: 2/4 = 0.5 (the old code compared 3 with 2)
    now[0] = t0 + 14 * 86400.0 + 30.0  # ... and a cached ranking is refreshed as time passes (within a minute)
    assert r2.top(None, 9, 1)[0].sku == "a"

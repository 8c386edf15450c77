"""Local time for the hour/weekday context: the store's ``node.timezone``, across the end of DST (US Eastern,
2026-11-01: 01:00-02:00 happens twice). What the recommend room hands the ranker, what the ranker's hour memo
gives, and the popularity fallback's hour buckets. Real SQLite, the bundled demo store, catalogue and the shipped
model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from edge.app import bundled_catalogue
from edge.bus import Bus
from edge.config import NodeConfig, parse_config
from edge.recommend import Recommender, VisitState
from edge.store import Store

EASTERN = ZoneInfo("America/New_York")
# 2026-11-01 04:30 UTC = 00:30 EDT; 05:30 UTC = 01:30 EDT; 06:30 UTC = 01:30 EST (again); 07:30 UTC = 02:30 EST
INSTANTS = [datetime(2026, 11, 1, h, 30, tzinfo=UTC).timestamp() for h in (4, 5, 6, 7)]


class Capture:
    version = "capture"

    def __init__(self, skus: list[str]) -> None:
        self.skus = skus
        self.when: list[datetime] = []

    def score(self, visit: Any, when: datetime, k: int, exclude: set[str],
              second_stage: bool = True) -> list[tuple[str, float, str]]:
        self.when.append(when)
        return [(s, 1.0 - i / 100, "test") for i, s in enumerate(self.skus)][:k]


def _config(tmp_path: Path, tz: str | None = None) -> NodeConfig:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp_path)
    if tz is not None:
        raw["node"]["timezone"] = tz
    return NodeConfig.model_validate(raw)


@pytest.mark.parametrize(("tz", "hours"), [("America/New_York", [0, 1, 1, 2]), ("Europe/Berlin", [5, 6, 7, 8])])
def test_the_ranker_gets_the_store_local_hour_across_the_dst_change(tmp_path: Path, tz: str,
                                                                     hours: list[int]) -> None:
    config = _config(tmp_path, tz)
    catalogue = bundled_catalogue()
    t = [0.0]
    with Store(tmp_path / "sc.db", flush_interval_ms=5) as store:
        store.upsert_products(catalogue).result(5)
        cap = Capture([p.sku for p in catalogue[:20]])
        rec = Recommender(config, store, Bus(), model=cap, clock=lambda: t[0])
        v = VisitState("v1", zone="dairy", picked=[catalogue[0].sku])
        for ts in INSTANTS:
            t[0] = ts
            rs = rec.recommend(v, "dairy-screen")
            assert rs.t == ts  # the set is stamped in UTC seconds
    assert [w.hour for w in cap.when] == hours
    assert all(w.weekday() == 6 for w in cap.when)  # Sunday in both zones
    assert [w.timestamp() for w in cap.when] == INSTANTS  # aware datetimes: no hour lost or doubled
    if tz == "America/New_York":
        assert [w.utcoffset() for w in cap.when] == [timedelta(hours=-4)] * 2 + [timedelta(hours=-5)] * 2


def test_the_shipped_ranker_hour_memo_follows_the_dst_change(tmp_path: Path) -> None:
    from edge.ranking.adapter import load_scorer

    config = _config(tmp_path)
    with Store(tmp_path / "sc.db", flush_interval_ms=5) as store:
        store.upsert_products(bundled_catalogue()).result(5)
        ranker = load_scorer(config, store=store).ranker
        t0 = datetime(2026, 11, 1, 3, 0, tzinfo=UTC).timestamp()
        for i in range(0, 5 * 3600, 97):  # every 97 s from 23:00 EDT to 23:00+5h, through both 01:xx hours
            t = t0 + i
            _, hour, wd = ranker._when(t)
            local = datetime.fromtimestamp(t, EASTERN)
            assert (hour, wd) == (local.hour, local.weekday()), (t, local)


def test_popular_items_learn_in_the_local_hour(tmp_path: Path) -> None:
    config = _config(tmp_path)
    catalogue = bundled_catalogue()
    shelf = next(s for s in config.layout.shelves if s.zone == "dairy")
    sku = next(sl.sku for sl in shelf.slots if sl.sku)
    with Store(tmp_path / "sc.db", flush_interval_ms=5) as store:
        store.upsert_products(catalogue).result(5)
        rec = Recommender(config, store, Bus(), clock=lambda: INSTANTS[2])
        for ts in INSTANTS[1:3]:  # 01:30 EDT and 01:30 EST: the same local hour
            rec._observations.append((sku, "dairy", ts, 5))
        rec.apply_observations()
        assert sku in rec.fallback._live[("dairy", 1)] and rec.fallback._live[("dairy", 1)][sku][0] > 5
        assert not rec.fallback._live.get(("dairy", 5)) and not rec.fallback._live.get(("dairy", 6))

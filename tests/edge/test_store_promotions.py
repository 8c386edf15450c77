"""The store's promotion plan (a ``promotions`` snapshot) and how it reaches the ranker: ``Store.promotion_plan``
by store-local day, the same object while nothing changes, and ``RankerScorer.score`` passing it in the
``RecRequest`` of the real shipped model."""

from __future__ import annotations

import sqlite3
from datetime import date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

from edge.ranking.adapter import RankerScorer
from edge.ranking.ranker import Ranker, RecRequest
from edge.store import SCHEMA_VERSION, Product, Store

WEEK = (date(2026, 12, 2), date(2026, 12, 8))


def _plan(skus: list[str]) -> list[tuple[str, bool, bool, date, date]]:
    a, b = WEEK
    return [(skus[0], True, False, a, b), (skus[1], False, True, a, b), (skus[2], True, True, a, b),
            # the same sku twice (display one week, mailer from the Friday): both on the days they overlap
            (skus[3], True, False, a, b), (skus[3], False, True, date(2026, 12, 4), date(2026, 12, 10))]


def test_plan_by_day_same_object_replaced_whole_and_kept_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sc.db"
    skus = ["p0", "p1", "p2", "p3"]
    with Store(path, flush_interval_ms=5) as s:
        assert s.promotion_plan(date(2026, 12, 3)) is None  # no plan yet
        assert s.set_promotions(_plan(skus)).result(5) == 5
        inside = s.promotion_plan(date(2026, 12, 2))  # first day: both dates are inclusive
        assert dict(inside or {}) == {"p0": "display", "p1": "mailer", "p2": "both", "p3": "display"}
        assert s.promotion_plan(date(2026, 12, 2)) is inside  # cached: the ranker converts it once per object
        friday = s.promotion_plan(date(2026, 12, 5))
        assert friday is not inside and dict(friday or {})["p3"] == "both"
        assert s.promotion_plan(date(2026, 12, 5)) is friday
        assert dict(s.promotion_plan(date(2026, 12, 9)) or {}) == {"p3": "mailer"}
        assert s.promotion_plan(date(2026, 12, 1)) is None and s.promotion_plan(date(2026, 12, 11)) is None
        assert s.health()["promotions_active"] == 0  # the day last asked about: 11 December
        s.promotion_plan(date(2026, 12, 5))
        assert s.health()["promotions_active"] == 5
        # a new snapshot replaces the whole plan: what it does not list is no longer promoted
        s.set_promotions([("p9", False, True, *WEEK)]).result(5)
        after = s.promotion_plan(date(2026, 12, 5))
        assert after is not friday and dict(after or {}) == {"p9": "mailer"}
        assert s.query('SELECT sku, display, mailer, start, "end" FROM promotions') == [
            {"sku": "p9", "display": 0, "mailer": 1, "start": "2026-12-02", "end": "2026-12-08"}]
        s.set_promotions(_plan(skus)).result(5)
    with Store(path) as s:  # the plan is on disk: a restarted node serves it before the next snapshot
        assert dict(s.promotion_plan(date(2026, 12, 5)) or {}) == {"p0": "display", "p1": "mailer", "p2": "both",
                                                                   "p3": "both"}
    with sqlite3.connect(path) as c:  # an additive table: no schema step, so a downgrade still opens the file
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


class SpyRanker(Ranker):
    """The real ranker, keeping each request it was asked."""

    seen: list[RecRequest]

    def recommend_tuples(self, req: RecRequest) -> Any:
        self.seen.append(req)
        return super().recommend_tuples(req)


def test_the_adapter_passes_the_plan_of_the_store_local_day(tmp_path: Path) -> None:
    r = SpyRanker.load()  # the shipped model
    r.seen = []
    skus = list(r.vocabulary[:40])
    tz = ZoneInfo("America/Chicago")
    with Store(tmp_path / "sc.db", flush_interval_ms=5) as store:
        store.upsert_products([Product(sku=s, name=f"item {s}") for s in skus]).result(5)
        store.set_promotions(_plan(skus)).result(5)
        scorer = RankerScorer(r, store=store, store_id="demo-store")
        visit = SimpleNamespace(session="v1", zone="dairy", customer=None, picked=[skus[5]])
        # 22:00 on 1 December in the store (04:00 UTC on the 2nd, when the plan starts): not promoted yet
        assert scorer.score(visit, datetime(2026, 12, 1, 22, 0, tzinfo=tz), 6, set())
        assert r.seen[-1].promotions is None
        for hour in (9, 18):
            assert len(scorer.score(visit, datetime(2026, 12, 5, hour, 0, tzinfo=tz), 6, set())) == 6
        first, second = r.seen[-2].promotions, r.seen[-1].promotions
        assert first is not None and first is second  # the same object while the plan and the day stay
        assert first is store.promotion_plan(date(2026, 12, 5))
        assert dict(first)[skus[3]] == "both" and dict(first)[skus[0]] == "display"

"""A visit that ends takes its frequency caps and per-visit caches out of the ranker (bounded memory on a node
that runs for weeks: before, the caps of the last 4,096 visits stayed, megabytes of counts)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from edge.app import bundled_catalogue
from edge.bus import Bus
from edge.config import NodeConfig, parse_config
from edge.ranking.adapter import load_scorer
from edge.recommend import Recommender, VisitState
from edge.store import Store


def test_expired_visits_leave_no_caps_in_the_ranker(tmp_path: Path) -> None:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp_path)
    config = NodeConfig.model_validate(raw)
    catalogue = bundled_catalogue()
    skus = [p.sku for p in catalogue]
    with Store(tmp_path / "sc.db", flush_interval_ms=5) as store:
        store.upsert_products(catalogue).result(5)
        scorer = load_scorer(config, store=store)
        ranker = scorer.ranker
        t = [1_764_500_000.0]
        rec = Recommender(config, store, Bus(), model=scorer, clock=lambda: t[0])
        visits = [VisitState(f"v{n}", zone="dairy", picked=skus[n * 3: n * 3 + 3], last_seen=t[0]) for n in range(6)]
        for v in visits:
            rec.visits[v.session] = v
            for _ in range(3):
                rec.recommend(v, "dairy-screen")
        assert {k[1] for k in ranker._caps} == {v.session for v in visits}
        assert {k for k in ranker._sess_cache} >= {v.session for v in visits}
        # the first four go quiet; the last two shop on
        t[0] += 600.0
        for v in visits[4:]:
            v.last_seen = t[0]
        assert rec.expire_visits(300.0) == 4
        gone, alive = {v.session for v in visits[:4]}, {v.session for v in visits[4:]}
        assert {k[1] for k in ranker._caps} == alive
        assert not gone & set(ranker._sess_cache) and not gone & {k[1] for k in ranker._capped_idx}
        assert not gone & {k[1] for k in ranker._excl_memo}
        # the visits still shopping keep their caps and go on counting
        before = {k: dict(d) for k, d in ranker._caps.items()}
        rec.recommend(visits[5], "dairy-screen")
        assert all(ranker._caps[k].get(s, 0) >= n for k, d in before.items() for s, n in d.items())
        assert sum(ranker._caps[(None, "v5")].values()) > sum(before[(None, "v5")].values())

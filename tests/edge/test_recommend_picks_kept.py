"""What the ranking uses per visit is bounded: the recommend room with the bundled model (real ranker, real SQLite
store, the demo layout and catalogue), one visit picking far more than any real trip (a bench, a restocking run).

Old code: ``VisitState.picked`` grew by one entry a pick for the visit's whole life (here 775 entries, on a bench
hundreds of thousands), handed whole to the ranker on every request and saved whole. Now it holds at most
2 x ``PICKS_KEPT`` - 1 picks (then its last ``PICKS_KEPT``, as a new list), and the ranker's incremental session
state follows the cut: the same state and scores as a ranker mapping the kept picks from scratch. A visit of a real
trip's length is never cut and is still handed over as the room's own list (the append-only fast path)."""

from __future__ import annotations

import json
import sqlite3
import time
from importlib import resources
from pathlib import Path

import numpy as np

from edge.app import bundled_catalogue
from edge.bus import Bus
from edge.config import NodeConfig, parse_config
from edge.events import ShopperEvent
from edge.ranking.adapter import load_scorer
from edge.ranking.ranker import RecRequest
from edge.recommend import PICKS_KEPT, Recommender
from edge.store import Store


def _config(tmp: Path) -> NodeConfig:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp)
    return NodeConfig.model_validate(raw)


def test_a_long_visit_keeps_its_last_picks_and_the_ranker_follows(tmp_path: Path) -> None:
    config = _config(tmp_path)
    db = tmp_path / "sc.db"
    store = Store(db, flush_interval_ms=5).open()
    try:
        catalogue = bundled_catalogue()
        store.upsert_products(catalogue).result(5)
        skus = [p.sku for p in catalogue]
        scorer = load_scorer(config, store=store)
        ranker = scorer.ranker
        t0 = time.time()
        rec = Recommender(config, store, Bus(), model=scorer, clock=lambda: t0 + 10_000.0)
        sh = config.layout.shelves[2]  # dairy-1: the dairy screen serves the visit, so every pick is ranked
        n = 3 * PICKS_KEPT + 7
        seq = [skus[(i * 7) % 120] for i in range(n)]  # 120 distinct: the model always has items left
        for i, sku in enumerate(seq):
            rec.on_shopper_event(ShopperEvent(session="bench", sku=sku, action="pick", zone=sh.zone, shelf=sh.id,
                                              slot=0, t=t0 + i, id=f"e{i}"))
            v = rec.visits["bench"]
            assert len(v.picked) < 2 * PICKS_KEPT
            if i == 40:  # a real trip's length: the room's own list, mapped pick by pick
                assert ranker._sess_cache["bench"].src is v.picked and len(v.picked) == 41
        v = rec.visits["bench"]
        assert rec.stats["recommendations"] == n and ranker.stats["requests"] >= n  # the model asked on every pick
        kept = len(v.picked)
        assert PICKS_KEPT <= kept < 2 * PICKS_KEPT and v.picked == seq[-kept:]
        assert rec.stats["picks_cut"] == n - kept
        # the ranker's state is the one of the kept picks mapped from scratch
        st = ranker._sess_cache["bench"]
        fresh = ranker._session_state(RecRequest(session=list(v.picked), session_id="fresh"))
        assert st.n == fresh.n == kept and st.skus == fresh.skus == set(v.picked)
        assert list(st.last) == list(fresh.last) and list(st.first) == list(fresh.first)
        assert st.src is v.picked
        a = ranker.scores(RecRequest(session=v.picked, session_id="bench", session_append_only=True, zone=sh.zone,
                                     store_id=config.node.store_id))
        b = ranker.scores(RecRequest(session=list(v.picked), zone=sh.zone, store_id=config.node.store_id))
        assert np.array_equal(a, b)
        # saved when it expires: the kept picks
        assert rec.expire_visits(60.0) == 1
    finally:
        store.close()
    conn = sqlite3.connect(db)
    try:
        (items,) = conn.execute("SELECT items FROM sessions WHERE id = 'bench'").fetchone()
    finally:
        conn.close()
    assert json.loads(items) == seq[-kept:]

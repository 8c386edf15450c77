"""`shelfcast bench ranking --json` keys, and the recommend-room adapter over a real SQLite store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge.cli import main
from edge.ranking import Ranker
from edge.ranking.adapter import RankerScorer
from edge.ranking.ranker import DEFAULT_MODEL_DIR
from edge.store import Product, Profile, Store


def test_bench_ranking_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "ranking", "--json", "--n-invoke", "50", "--n-requests", "50", "--baskets", "5"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("catalog_items", "invoke_p50_us", "invoke_p99_us", "recommend_p50_us", "recommend_p99_us",
                "rss_mb"):
        assert key in out
    # the full catalogue the bundled model scores: its manifest's vocabulary (10,000 until v5, 20,000 since v6)
    man = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text())
    assert out["catalog_items"] == len(man["vocabulary"]) == man["training_data"]["split"]["vocab_size"]
    assert 0 < out["invoke_p50_us"] <= out["invoke_p99_us"]
    assert 0 < out["recommend_p50_us"] <= out["recommend_p99_us"]
    assert out["rss_mb"] > 0


def test_bench_ranking_measures_rankings_not_the_fallback(capsys: pytest.CaptureFixture[str]) -> None:
    """Replaying the 256 requests is a new visit each time: one visit replayed exhausted its frequency caps and
    ~19 % of the timed answers were the popularity fallback."""
    rc = main(["bench", "ranking", "--json", "--n-invoke", "10", "--n-requests", "1300", "--baskets", "5"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["fallback_share"] == 0.0


def test_bench_refuses_a_broken_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model.tflite").write_bytes(b"nope")
    rc = main(["bench", "ranking", "--json", "--model", str(tmp_path)])
    assert rc == 2
    assert "manifest" in capsys.readouterr().err


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "node.db").open()
    yield s
    s.close()


def test_adapter_uses_profile_stock_and_catalogue(store: Store) -> None:
    r = Ranker.load()
    skus = list(r.vocabulary[:40])
    store.upsert_products([Product(sku=s, name=f"item {s}") for s in skus]).result()
    fav = skus[30]
    store.upsert_profiles([Profile(customer="c1", demographics={"age": "45-54"},
                                   history=tuple((fav, 1.7e9 + b * 5 * 86400, 1.0) for b in range(8)))]).result()
    store.set_stock({skus[0]: 0}).result()
    scorer = RankerScorer(r, store=store, store_id="demo-store")
    visit = SimpleNamespace(session="v1", zone="dairy", customer="c1", picked=[skus[5]])
    out = scorer.score(visit, datetime(2026, 11, 28, 9, 0), 6, set())
    got = [s for s, _, _ in out]
    assert len(got) == 6
    assert set(got) <= set(skus)  # the store's catalogue only
    assert skus[0] not in got  # out of stock
    assert skus[5] not in got  # just picked up
    assert fav in got  # the shopper's staple
    assert scorer.version == r.version


def test_adapter_swap_keeps_configuration(store: Store) -> None:
    r1, r2 = Ranker.load(), Ranker.load()
    store.upsert_products([Product(sku=s, name=s) for s in r1.vocabulary[:20]]).result()
    scorer = RankerScorer(r1, store=store)
    old = scorer.swap(r2)
    assert old is r1 and scorer.ranker is r2
    visit = SimpleNamespace(session="v", zone=None, customer=None, picked=[r1.vocabulary[1]])
    got = [s for s, _, _ in scorer.score(visit, datetime(2026, 11, 28, 18, 0), 5, set())]
    assert set(got) <= set(r1.vocabulary[:20])

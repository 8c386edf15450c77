"""The Ranker on the real shipped int8 .tflite: API, verification, bad input, re-ranking rules."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from edge.ranking import ModelError, Ranker, Recommendation, RecRequest, RerankConfig
from edge.ranking.ranker import DEFAULT_MODEL_DIR, sha256_bytes

T0 = 1_700_000_000.0
DAY = 86400.0


@pytest.fixture(scope="module")
def ranker() -> Ranker:
    return Ranker.load()


@pytest.fixture()
def fresh() -> Ranker:
    return Ranker.load(rerank=RerankConfig(diversity=0.0))


def _copy_release(tmp_path: Path) -> Path:
    d = tmp_path / "rel"
    shutil.copytree(DEFAULT_MODEL_DIR, d)
    return d


def _history(r: Ranker, items: list[int], baskets: int = 6) -> list[tuple[str, float, float]]:
    return [(r.vocabulary[i], T0 + b * 7 * DAY, 1.0) for b in range(baskets) for i in items]


def test_loads_bundled_model_and_exposes_vocabulary(ranker: Ranker) -> None:
    man = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text())
    # the vocabulary the model was built with (the N most frequent products in training; 20,000 since v6)
    assert len(ranker.vocabulary) == man["training_data"]["split"]["vocab_size"] >= 10_000
    assert all(isinstance(s, str) for s in ranker.vocabulary[:10])
    assert ranker.version == man["version"]
    assert ranker.quantized  # int8 inputs
    assert man["sha256"] == sha256_bytes((DEFAULT_MODEL_DIR / "model.tflite").read_bytes())


def test_recommend_returns_k_distinct_recommendations(ranker: Ranker) -> None:
    when = datetime(2026, 11, 28, 10, 30)
    recs = ranker.recommend(RecRequest(history=_history(ranker, [3, 40, 77]), session=[ranker.vocabulary[5]],
                                       store_id="367", when=when, k=7))
    assert len(recs) == 7
    assert all(isinstance(r, Recommendation) and r.reason for r in recs)
    assert len({r.sku for r in recs}) == 7
    assert ranker.vocabulary[5] not in {r.sku for r in recs}  # just picked up: not shown again
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True) or ranker.rerank.diversity > 0


def test_repeat_items_rank_high_for_a_loyal_shopper(fresh: Ranker) -> None:
    # an item this shopper buys in every basket, which is not globally popular
    item = 4321
    recs = fresh.recommend(RecRequest(history=_history(fresh, [item], baskets=10), when=T0 + 71 * DAY,
                                      store_id="367", k=10))
    assert fresh.vocabulary[item] in [r.sku for r in recs]
    assert any(r.reason in ("you buy this often", "bought before") for r in recs)


def test_unknown_skus_are_ignored_and_counted(fresh: Ranker) -> None:
    before = fresh.stats["unknown_sku"]
    recs = fresh.recommend(RecRequest(history=[("no-such-sku", T0, 1.0), (fresh.vocabulary[1], T0, 1.0)],
                                      session=["also-unknown"], store_id="367", k=5))
    assert len(recs) == 5
    assert fresh.stats["unknown_sku"] - before == 2


def test_bad_lines_nan_and_out_of_range_context_are_clamped(fresh: Ranker) -> None:
    fresh.cold_profile = True  # the profile is checked where it is used (a release may ignore a cold shopper's)
    recs = fresh.recommend(RecRequest(history=[(fresh.vocabulary[1], float("nan"), 1.0), ("x",), None],  # type: ignore[list-item]
                                      when=float("inf"), profile={"age": "999", "income": None},
                                      store_id="367", k=4))
    assert len(recs) == 4
    assert fresh.stats["bad_lines"] >= 2
    assert fresh.stats["clamped"] >= 2


def test_empty_request_falls_back_to_popularity(fresh: Ranker) -> None:
    recs = fresh.recommend(RecRequest(k=5))
    assert len(recs) == 5
    assert fresh.stats["fallback"] == 1
    # the most popular item of training is first
    assert recs[0].sku == fresh.vocabulary[int(np.argmax(fresh.popularity))]


def test_out_of_stock_and_excluded_items_are_removed(fresh: Ranker) -> None:
    req = RecRequest(history=_history(fresh, [10, 11, 12]), store_id="367", k=10)
    base = [r.sku for r in fresh.recommend(req)]
    gone = base[0]
    fresh.set_stock_lookup(lambda sku: 0 if sku == gone else None)
    after = [r.sku for r in fresh.recommend(req)]
    assert gone not in after
    fresh.set_stock_lookup(None)
    ex = [r.sku for r in fresh.recommend(RecRequest(history=req.history, store_id="367", exclude=(base[1],)))]
    assert base[1] not in ex


def test_promote_and_suppress_rules(fresh: Ranker) -> None:
    req = RecRequest(history=_history(fresh, [10, 11, 12]), store_id="367", k=10)
    base = [r.sku for r in fresh.recommend(req)]
    promoted = fresh.vocabulary[9000]
    fresh.set_rules(promote={promoted: 100.0}, suppress=[base[0]])
    got = [r.sku for r in fresh.recommend(req)]
    assert got[0] == promoted
    assert base[0] not in got


def test_frequency_capping_per_screen_and_session(fresh: Ranker) -> None:
    fresh.rerank.repeat_cap = 2
    req = RecRequest(history=_history(fresh, [10, 11, 12]), store_id="367", k=5, screen="s1", session_id="v1")
    first = [r.sku for r in fresh.recommend(req)]
    fresh.recommend(req)
    third = [r.sku for r in fresh.recommend(req)]
    assert not set(first) & set(third)
    other = [r.sku for r in fresh.recommend(RecRequest(history=req.history, store_id="367", k=5, screen="s2",
                                                         session_id="v2"))]
    assert other == first


def test_diversity_spreads_categories() -> None:
    plain = Ranker.load(rerank=RerankConfig(diversity=0.0))
    diverse = Ranker.load(rerank=RerankConfig(diversity=0.8))
    req = RecRequest(session=[plain.vocabulary[i] for i in (0, 1, 2)], store_id="367", k=10)

    def n_cats(r: Ranker) -> int:
        idx = {s: i for i, s in enumerate(r.vocabulary)}
        return len({int(r.category[idx[x.sku]]) for x in r.recommend(req)})

    assert n_cats(diverse) >= n_cats(plain)
    assert n_cats(diverse) >= 8


def test_new_product_scored_from_attributes(fresh: Ranker) -> None:
    n = fresh.set_products([{"sku": "NEW-1", "name": "New Cola", "department": "GROCERY",
                             "category": "SOFT DRINKS", "product_type": "SOFT DRINKS 12/18&15PK CAN CAR",
                             "brand": "National", "price": 4.99}])
    assert n == 1
    u = fresh.recommend(RecRequest(session=[fresh.vocabulary[0]], store_id="367", k=100))
    assert len(u) == 100  # the new item competes; it need not win


def test_catalogue_only_restricts_to_store_products(fresh: Ranker) -> None:
    cat = list(fresh.vocabulary[100:130])
    fresh.set_products([{"sku": s} for s in cat], catalogue_only=True)
    recs = fresh.recommend(RecRequest(history=_history(fresh, [1, 2, 3]), store_id="367", k=10))
    assert recs and all(r.sku in cat for r in recs)


def test_item_heat_refresh_lifts_a_hot_item_for_a_cold_shopper(fresh: Ranker) -> None:
    """The shipped model's heat term: a refreshed heat vector moves an item's score by exactly
    heat_w[0] · Δ ln(1 + baskets) for a shopper without history, and the hot item climbs the ranking."""
    assert fresh._heat is not None and fresh._heat_w is not None and float(fresh._heat_w[0]) > 0
    req = RecRequest(profile={"age": "35-44"}, store_id="367", when=datetime(2026, 11, 26, 10, 0), k=10)
    item = 7000
    before = fresh.scores(req)
    old = float(fresh._heat[item])
    fresh.set_item_heat({fresh.vocabulary[item]: 1e6})  # every other sku: no sales in 14 days
    after = fresh.scores(req)
    assert np.isclose(after[item] - before[item], float(fresh._heat_w[0]) * (np.log1p(1e6) - old), atol=1e-3)
    rank_before = int((before > before[item]).sum())
    rank_after = int((after > after[item]).sum())
    assert rank_after < rank_before // 2


def test_session_cooccurrence_lifts_neighbours(fresh: Ranker) -> None:
    """Picking an item raises its stored co-occurrence neighbours by the co-occurrence term."""
    assert fresh._nb_idx is not None and fresh._nb_val is not None and fresh._cooc_w is not None
    picked = 0
    nb = int(fresh._nb_idx[picked, 0])
    req = RecRequest(session=[fresh.vocabulary[picked]], store_id="367", when=T0, k=10)
    with_terms = fresh.scores(req)
    w = fresh._cooc_w_cold
    assert w is not None and float(w[0]) > 0
    fresh._cooc_w_cold = np.zeros(3, np.float32)
    without = fresh.scores(req)
    lift = with_terms[nb] - without[nb]
    assert lift > 0 and np.isclose(lift, float(w[0]) * float(fresh._nb_val[picked, 0]), rtol=1e-4)


def test_refuses_corrupted_model(tmp_path: Path) -> None:
    d = _copy_release(tmp_path)
    b = bytearray((d / "model.tflite").read_bytes())
    b[len(b) // 2] ^= 0xFF
    (d / "model.tflite").write_bytes(bytes(b))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        Ranker.load(d)


def test_refuses_truncated_model(tmp_path: Path) -> None:
    d = _copy_release(tmp_path)
    b = (d / "model.tflite").read_bytes()
    (d / "model.tflite").write_bytes(b[: len(b) // 3])
    with pytest.raises(ModelError, match="truncated"):
        Ranker.load(d)


def test_refuses_truncated_model_even_with_matching_hash(tmp_path: Path) -> None:
    d = _copy_release(tmp_path)
    b = (d / "model.tflite").read_bytes()[:5000]
    (d / "model.tflite").write_bytes(b)
    man = json.loads((d / "manifest.json").read_text())
    man["sha256"] = sha256_bytes(b)
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ModelError, match="not a valid TFLite"):
        Ranker.load(d)


def test_refuses_wrong_input_shape_named(tmp_path: Path) -> None:
    d = _copy_release(tmp_path)
    man = json.loads((d / "manifest.json").read_text())
    for i in man["feature_spec"]["inputs"]:
        if i["name"] == "context":
            i["shape"] = [1, i["shape"][1] + 3]
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ModelError, match="input 'context' has shape"):
        Ranker.load(d)


def test_refuses_vocabulary_mismatch(tmp_path: Path) -> None:
    d = _copy_release(tmp_path)
    man = json.loads((d / "manifest.json").read_text())
    n = len(man["vocabulary"])
    man["vocabulary"] = man["vocabulary"][:-1]
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ModelError, match=f"model scores {n} items but the manifest vocabulary has {n - 1}"):
        Ranker.load(d)


def test_refuses_a_release_whose_history_input_is_not_the_nodes_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """A release trained with another history length (the v12 round's 64-wide experiment) used to load and then
    fail every request with "Cannot set tensor: Dimension mismatch"; the node must refuse it at load instead."""
    import edge.ranking.ranker as ranker_mod

    monkeypatch.setattr(ranker_mod, "HIST_LEN", 64)  # this node fills 64; the shipped model's input is 32 wide
    with pytest.raises(ModelError, match=r"input 'hist_items' is 32 wide but this node fills 64 \(HIST_LEN"):
        Ranker.load()
    monkeypatch.setattr(ranker_mod, "HIST_LEN", 32)
    monkeypatch.setattr(ranker_mod, "SESSION_LEN", 8)
    with pytest.raises(ModelError, match=r"input 'session_items' is 16 wide but this node fills 8 \(SESSION_LEN"):
        Ranker.load()


def test_refuses_missing_or_broken_manifest(tmp_path: Path) -> None:
    d = _copy_release(tmp_path)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        Ranker.load(d)
    (d / "manifest.json").unlink()
    with pytest.raises(ModelError, match=r"manifest .* not found"):
        Ranker.load(d)


def test_load_explicit_path_and_manifest(tmp_path: Path) -> None:
    d = _copy_release(tmp_path)
    shutil.move(d / "manifest.json", tmp_path / "m.json")
    shutil.copy(d / "items.npz", tmp_path / "items.npz")
    r = Ranker.load(d / "model.tflite", manifest=tmp_path / "m.json")
    assert r.version == Ranker.load().version

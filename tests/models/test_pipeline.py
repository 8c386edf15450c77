"""prepare → train → quantize → evaluate → export on a small synthetic data set in the generic schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edge.cli import main
from edge.ranking import Ranker, RecRequest
from models.data import SplitConfig, clean, load_directory
from models.synthetic import make_synthetic


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pipe")
    data = make_synthetic(tmp / "in")
    work, rel = tmp / "work", tmp / "rel"
    rc = main(["model", "all", "--input", str(data), "--work", str(work), "--vocab-size", "150",
               "--epochs", "3", "--out", str(rel), "--no-progress", "--version", "test-1", "--seed", "0"])
    assert rc == 0
    return {"data": data, "work": work, "rel": rel}


def test_cleaning_drops_dirt(tmp_path: Path) -> None:
    tables = load_directory(make_synthetic(tmp_path / "in", households=5))
    lines, products, _, stats = clean(tables, SplitConfig())
    assert stats["dropped_duplicates"] == 1
    assert stats["dropped_quantity0"] == 1
    assert stats["dropped_non_merchandise_or_no_attributes"] == 1
    assert "FUEL" not in set(products["department"])
    assert set(lines["hour"].unique()) <= set(range(24))


def test_release_loads_with_the_node_ranker(run: dict[str, Path]) -> None:
    r = Ranker.load(run["rel"])
    assert r.version == "test-1"
    assert len(r.vocabulary) == 150
    assert r.quantized
    man = json.loads((run["rel"] / "manifest.json").read_text())
    assert man["training_data"]["train_weeks"] == [1, 47]
    names = {i["name"] for i in man["feature_spec"]["inputs"]}
    assert {"hist_items", "hist_weights", "session_items", "session_weights", "context"} == names
    assert all(i["dtype"] in ("int8", "int32") for i in man["feature_spec"]["inputs"])
    recs = r.recommend(RecRequest(history=[(r.vocabulary[0], 1.5e9, 1.0)], store_id="301", k=5))
    assert len(recs) == 5


def test_int8_is_small_and_close_to_float(run: dict[str, Path]) -> None:
    work = run["work"]
    f = (work / "model_float.tflite").stat().st_size
    q = (work / "model_int8.tflite").stat().st_size
    assert q < 0.5 * f
    res = json.loads((work / "metrics.json").read_text())["table"]
    fl, i8 = res["model_float"]["P1"]["ndcg"], res["model_int8"]["P1"]["ndcg"]
    assert abs(fl - i8) <= 0.1 * max(fl, 1e-9) + 0.02


def test_model_learns_repeats_better_than_popularity(run: dict[str, Path]) -> None:
    res = json.loads((run["work"] / "metrics.json").read_text())["table"]
    assert set(res) >= {"global_pop", "store_pop", "gp_topfreq", "item_knn", "tifu_knn", "user_cf_naive",
                        "model_float", "model_int8"}
    assert res["model_int8"]["P1"]["ndcg"] > res["global_pop"]["P1"]["ndcg"]
    assert res["gp_topfreq"]["P1"]["ndcg"] > res["user_cf_naive"]["P1"]["ndcg"]  # filtering repeats hurts


def test_training_is_deterministic_for_a_seed(run: dict[str, Path], tmp_path: Path) -> None:
    work2 = tmp_path / "w2"
    assert main(["model", "prepare", "--input", str(run["data"]), "--work", str(work2), "--vocab-size", "150",
                 "--no-progress"]) == 0
    assert main(["model", "train", "--work", str(work2), "--epochs", "3", "--no-progress", "--seed", "0"]) == 0
    with np.load(run["work"] / "weights.npz") as a, np.load(work2 / "weights.npz") as b:
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # the second stage too (its own stage-1 model 6 weeks earlier, the lists, the numpy fit)
    assert main(["model", "stage2", "--work", str(work2), "--no-progress", "--seed", "0"]) == 0
    with np.load(run["work"] / "stage2.npz") as a, np.load(work2 / "stage2.npz") as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_release_carries_the_second_stage(run: dict[str, Path]) -> None:
    man = json.loads((run["rel"] / "manifest.json").read_text())
    assert man["stage2_file"] == "stage2.npz"
    assert man["stage2"]["list_weeks"] == [42, 47] and man["stage2"]["stage1_train_last_week"] == 41
    r = Ranker.load(run["rel"])
    assert r._stage2 is not None
    assert r._stage2.sets[True] is not None and r._stage2.sets[False] is not None
    info = json.loads((run["work"] / "stage2.json").read_text())
    assert info["fit"]["s_"]["lists"] > 100


def test_node_side_terms_are_added_as_trained(run: dict[str, Path]) -> None:
    """The side file carries the v3 node terms; heat refresh and co-occurrence change scores by exactly
    the documented amounts (the int8 path quantizes its input buffers in place: the terms must not see them)."""
    r = Ranker.load(run["rel"])
    assert r._heat_w is not None and r._heat is not None and r._out_bias is not None
    assert r._nb_idx is not None and r._nb_val is not None and r._cooc_w is not None
    voc = r.vocabulary
    hist = [(voc[i], 1.5e9 + b * 7 * 86400.0, 1.0) for b in range(4) for i in (1, 2, 3)]
    warm = RecRequest(history=hist, session=[voc[7], voc[9]], store_id="301", when=1.5e9 + 40 * 86400.0)
    cold = RecRequest(session=[voc[7]], store_id="301", when=1.5e9 + 40 * 86400.0)
    # heat: +Δ ln(1 + baskets) times (w0 [+ w1 with history])
    before_w, before_c = r.scores(warm), r.scores(cold)
    old = r._heat.copy()
    counts = np.expm1(old)
    counts[11] += 500.0
    r.set_item_heat(counts)
    dh = float(r._heat[11] - old[11])
    w0, w1 = (float(x) for x in r._heat_w)
    assert np.isclose(r.scores(cold)[11] - before_c[11], w0 * dh, atol=1e-4)
    assert np.isclose(r.scores(warm)[11] - before_w[11], (w0 + w1) * dh, atol=1e-4)
    others = np.arange(len(voc)) != 11
    assert np.allclose(r.scores(warm)[others], before_w[others], atol=1e-5)
    r.set_item_heat({voc[11]: 0.0})  # a mapping: unknown skus ignored, missing ones 0
    assert r._heat[11] == 0.0 and not r._heat.any()
    # co-occurrence: switching the weights off removes exactly cooc_w · (session, history) neighbour sums
    r.set_item_heat(counts)
    with_c = r.scores(warm)
    cw = r._cooc_w.copy()
    r._cooc_w = np.zeros(3, np.float32)
    without = r.scores(warm)
    r._cooc_w = cw
    from edge.ranking.features import cooc_scores

    sess = np.array([9, 7])  # latest first, as session_inputs orders them
    hist_items = np.array([1, 2, 3])
    want = cooc_scores(r._nb_idx, r._nb_val, sess, np.full(2, 0.5 * cw[0], np.float32), len(voc))
    want += cooc_scores(r._nb_idx, r._nb_val, hist_items, np.full(3, cw[1] / 3, np.float32), len(voc))
    cs = cooc_scores(r._nb_idx, r._nb_val, sess, np.full(2, 0.5 * cw[2], np.float32), len(voc))
    want[hist_items] += cs[hist_items]
    assert np.allclose(with_c - without, want, atol=1e-4)


def test_promotion_columns_in_training_are_the_nodes(run: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Parity (v9): the stage-2 lists ``collect`` builds with promotions hold the feature rows the node computes
    for the harness's request of the same problem (the plan travels in ``RecRequest.promotions``)."""
    import io
    import shutil

    import pandas as pd

    from edge.ranking import RerankConfig
    from edge.ranking.ranker import sha256_bytes
    from edge.ranking.stage2 import FEATURES, PROMO_FEATURES, Stage2
    from models.data import Prepared, encode_promotions
    from models.evaluate import ModelAdapter
    from models.stage2 import Stage2Config, collect, stage2_problems

    prep = Prepared.load(run["work"])
    skus, stores = prep.vocab_skus(), prep.meta["store_ids"]
    rows = [(sku, st, wk, j % 2 == 0, j % 3 == 0) for wk in range(42, 48) for st in stores
            for j, sku in enumerate(skus[wk % 3::3])]
    df = pd.DataFrame(rows, columns=["product_id", "store_id", "week", "display", "mailer"])
    prep.promo, _ = encode_promotions(df, prep.meta["skus"], stores)
    problems = stage2_problems(prep, 42, 47, Stage2Config(max_p2=40))
    problems = [kp for kp in problems if kp[0] != 2][:40]  # a cold shopper without picks never reaches stage 2
    pool = 20
    lists = collect(prep, run["rel"], problems, pool, promotions=True)
    assert lists.X.shape[2] == len(FEATURES) + len(PROMO_FEATURES) and lists.X[:, :, len(FEATURES):].any()
    # the node: the same release with a promotion-aware stage 2 (random weights)
    rel = tmp_path / "rel"
    shutil.copytree(run["rel"], rel)
    names = FEATURES + PROMO_FEATURES
    rng = np.random.default_rng(0)
    nf = len(names)
    w = {"mean": np.zeros(nf), "inv_std": np.ones(nf), "w1": rng.normal(0, 1, (nf, 4)), "b1": np.zeros(4),
         "wl": rng.normal(0, 1, nf), "w2": rng.normal(0, 1, 4)}
    buf = io.BytesIO()
    np.savez(buf, features=np.asarray(names), pool=np.asarray(pool, np.int32),
             **{f"{p}{k}": v.astype(np.float32) for p in ("s_", "n_") for k, v in w.items()})
    (rel / "stage2.npz").write_bytes(buf.getvalue())
    man = json.loads((rel / "manifest.json").read_text())
    man["stage2_sha256"] = sha256_bytes(buf.getvalue())
    (rel / "manifest.json").write_text(json.dumps(man))
    r = Ranker.load(rel, rerank=RerankConfig(diversity=0.0, repeat_cap=10**9))
    assert r._stage2 is not None and r._stage2.promo
    seen: list[np.ndarray] = []
    orig = Stage2.features

    def spy(self: Stage2, *a: object, **k: object) -> tuple[np.ndarray, np.ndarray]:
        out = orig(self, *a, **k)  # type: ignore[arg-type]
        seen.append(out[1].copy())
        return out

    monkeypatch.setattr(Stage2, "features", spy)
    ad = ModelAdapter(prep, r, "m")
    for n, (_, pr) in enumerate(problems):
        seen.clear()
        ad.recommend(pr, 10, set(pr.session))
        assert len(seen) == 1
        m = len(seen[0])
        np.testing.assert_array_equal(seen[0], lists.X[n, :m])

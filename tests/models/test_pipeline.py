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

"""The optional promotions input (v9): schema, encoding, the plan the harness hands the node."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.data import PROMO_FILE, Prepared, SplitConfig, encode_promotions, load_directory, prepare
from models.synthetic import make_synthetic


def _promos() -> pd.DataFrame:
    return pd.DataFrame({
        "product_id": ["100003", "100001", "100001", "100002", "NOPE", "100004", "100005"],
        "store_id": ["301", "301", "301", "302", "301", "999", "300"],
        "week": [4, 4, 4, 5, 4, 4, 6],
        "display": [1, 1, 0, "0", 1, 1, 0],
        "mailer": ["false", "0", "yes", "true", "1", "1", 0],
    })


def test_encoding_merges_duplicates_and_drops_what_it_cannot_use() -> None:
    skus = [str(100000 + i) for i in range(10)]
    arr, stats = encode_promotions(_promos(), skus, ["300", "301", "302"])
    # (301, 4, 100001) twice: display + mailer -> both; 100005 in 300 has neither flag
    got = list(zip(arr["store"].tolist(), arr["week"].tolist(), arr["pcode"].tolist(), arr["flag"].tolist(),
                   strict=True))
    assert got == [(1, 4, 1, 3), (1, 4, 3, 1), (2, 5, 2, 2)]
    assert stats == {"rows_in": 7, "dropped_unknown_product": 1, "dropped_unknown_store": 1,
                     "dropped_no_promotion": 1, "rows_out": 3}


def test_prepare_writes_the_table_and_the_plan_is_per_store_week(tmp_path: Path) -> None:
    data = make_synthetic(tmp_path / "in", households=8, weeks=12)
    tables = load_directory(data)
    assert "promotions" not in tables
    prepare(tables, SplitConfig(train_last_week=8, test_first_week=9, test_last_week=12), tmp_path / "w0")
    p0 = Prepared.load(tmp_path / "w0")
    assert not (tmp_path / "w0" / PROMO_FILE).exists() and p0.promo is None
    assert p0.promotion_plan(0, 4) is None  # absent table: no promotion features anywhere
    _promos().to_csv(data / "promotions.csv", index=False)
    tables = load_directory(data)
    assert len(tables["promotions"]) == 7
    prepare(tables, SplitConfig(train_last_week=8, test_first_week=9, test_last_week=12), tmp_path / "w1")
    prep = Prepared.load(tmp_path / "w1")
    assert prep.promo is not None and prep.meta["promotions"]["rows_out"] == 3
    s301 = prep.meta["store_ids"].index("301")
    plan = prep.promotion_plan(s301, 4)
    assert plan == {"100001": "both", "100003": "display"}
    assert prep.promotion_plan(s301, 4) is plan  # one object per store-week (the node converts it once)
    assert prep.promotion_plan(s301, 5) == {}
    # the transactions' arrays are the same with or without the table
    with np.load(tmp_path / "w0" / "prepared.npz") as a, np.load(tmp_path / "w1" / "prepared.npz") as b:
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_prepare_reads_promotions_only_when_asked(tmp_path: Path) -> None:
    """The table feeds only a stage 2 with promotion columns (Complete Journey's costs ~35 s and ~4.8 GB in
    prepare). Since v7 such a stage 2 is the default, so a plain ``model prepare`` reads it (the name is older):
    ``--no-promotions`` leaves it out."""
    from edge.cli import main

    data = make_synthetic(tmp_path / "in", households=8, weeks=12)
    _promos().to_csv(data / "promotions.csv", index=False)
    assert "promotions" not in load_directory(data, promotions=False)
    common = ["--input", str(data), "--vocab-size", "100", "--train-last-week", "8", "--test-last-week", "12"]
    assert main(["model", "prepare", "--work", str(tmp_path / "plain"), "--no-promotions", *common]) == 0
    assert not (tmp_path / "plain" / PROMO_FILE).exists()
    assert Prepared.load(tmp_path / "plain").promo is None
    assert main(["model", "prepare", "--work", str(tmp_path / "asked"), *common]) == 0
    assert (tmp_path / "asked" / PROMO_FILE).exists()
    assert Prepared.load(tmp_path / "asked").promo is not None

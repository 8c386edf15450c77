"""A small synthetic data set in the generic input schema (tests, smoke runs).

Shoppers have a personal repertoire they re-buy (grocery is repeat-heavy)
plus popularity-driven exploration, so a model has something to learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DEPTS = ("GROCERY", "PRODUCE", "MEAT", "DELI", "DRUG GM")


def make_synthetic(out: Path, *, households: int = 60, products: int = 300, weeks: int = 53, seed: int = 0,
                   fmt: str = "csv") -> Path:
    """Write transactions / products / customers tables into ``out``; returns ``out``."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    pid = [str(100000 + i) for i in range(products)]
    dept = [DEPTS[i % len(DEPTS)] for i in range(products)]
    cat = [f"{dept[i]} CAT {i % 17}" for i in range(products)]
    prods = pd.DataFrame({"product_id": pid, "department": dept, "category": cat,
                          "product_type": [f"TYPE {i % 41}" for i in range(products)],
                          "brand": ["Private" if i % 4 == 0 else "National" for i in range(products)]})
    pop = 1.0 / (np.arange(products) + 5.0)
    pop /= pop.sum()
    start = pd.Timestamp("2017-01-02 14:00:00")  # a Monday, UTC
    rows = []
    basket = 0
    for h in range(1, households + 1):
        own = rng.choice(products, 12, replace=False, p=pop)
        store = str(300 + h % 3)
        t = start + pd.Timedelta(hours=int(rng.integers(0, 72)))
        while t < start + pd.Timedelta(weeks=weeks):
            basket += 1
            n_rep = int(rng.integers(2, 7))
            n_exp = int(rng.integers(0, 4))
            items = set(rng.choice(own, n_rep, replace=False).tolist()) | set(
                rng.choice(products, n_exp, replace=False, p=pop).tolist())
            for i in items:
                rows.append((str(h), store, str(basket), pid[i], int(rng.integers(1, 3)),
                             round(float(rng.uniform(0.5, 9.0)), 2), t))
            t = t + pd.Timedelta(hours=int(rng.integers(60, 260)))
    tx = pd.DataFrame(rows, columns=["household_id", "store_id", "basket_id", "product_id", "quantity",
                                     "sales_value", "timestamp"])
    # a little dirt to clean: a duplicate line, a quantity-0 line, a fuel line
    tx = pd.concat([tx, tx.iloc[:1]], ignore_index=True)
    tx.loc[len(tx)] = ["1", "300", "999999", pid[0], 0, 0.0, start]
    prods.loc[len(prods)] = ["FUEL1", "FUEL", "GASOLINE", "GAS", "National"]
    tx.loc[len(tx)] = ["1", "300", "999998", "FUEL1", 1, 30.0, start]
    cust = pd.DataFrame({"household_id": [str(h) for h in range(1, households + 1, 2)],
                         "age": [("25-34", "35-44", "45-54")[h % 3] for h in range(1, households + 1, 2)],
                         "income": [("35-49K", "50-74K")[h % 2] for h in range(1, households + 1, 2)]})
    if fmt == "parquet":
        tx.to_parquet(out / "transactions.parquet")
        prods.to_parquet(out / "products.parquet")
        cust.to_parquet(out / "customers.parquet")
    else:
        tx.to_csv(out / "transactions.csv", index=False)
        prods.to_csv(out / "products.csv", index=False)
        cust.to_csv(out / "customers.csv", index=False)
    return out

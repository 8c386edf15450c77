"""The store's promotion plan travels as a signed ``promotions`` snapshot over a real Mosquitto, the way catalogue
and stock snapshots do: applied into the store (replacing the whole plan), published with
``shelfcast model publish --kind promotions``, and a malformed one refused with the field named while the old
plan keeps serving."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from edge.sync.publish import build_release


def _entries(*rows: tuple[str, bool, bool, str, str]) -> dict[str, Any]:
    return {"entries": [{"sku": sku, "display": d, "mailer": m, "start": a, "end": b} for sku, d, m, a, b in rows]}


def test_a_promotions_snapshot_lands_in_the_store_and_the_next_replaces_it(
        node: Any, mosquitto: Any, upstream: Any, keys: Any, tmp_path: Path, publish: Any, run_cli: Any) -> None:
    snap = tmp_path / "promotions.json"
    snap.write_text(json.dumps(_entries(("sku-1", True, False, "2026-12-02", "2026-12-08"),
                                        ("sku-2", True, True, "2026-12-02", "2026-12-08"),
                                        ("sku-3", False, True, "2026-12-09", "2026-12-15"))))
    publish(build_release("promotions", snap, "promo-1", keys.private))
    upstream.wait_step("promo-1", "applied")
    store = node.store
    plan = store.promotion_plan(date(2026, 12, 8))
    assert dict(plan or {}) == {"sku-1": "display", "sku-2": "both"}
    assert store.promotion_plan(date(2026, 12, 8)) is plan  # one object per plan and day
    assert dict(store.promotion_plan(date(2026, 12, 9)) or {}) == {"sku-3": "mailer"}
    assert store.promotion_plan(date(2026, 12, 1)) is None and store.promotion_plan(date(2026, 12, 16)) is None
    assert store.query("SELECT count(*) AS n FROM promotions") == [{"n": 3}]  # applied snapshots are flushed

    # the next week's plan, as a user publishes it: it replaces the whole plan (sku-1..3 are no longer promoted)
    snap.write_text(json.dumps(_entries(("sku-7", False, True, "2026-12-09", "2026-12-15"))))
    r = run_cli("model", "publish", "--broker", mosquitto.url, "--store", "s1", "--node", "_all", "--kind",
                "promotions", "--model", str(snap), "--version", "promo-2", "--sign-key", str(keys.private_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["topic"].endswith("/s1/_all/release/promotions/manifest")
    upstream.wait_step("promo-2", "applied")
    assert store.promotion_plan(date(2026, 12, 8)) is None
    assert dict(store.promotion_plan(date(2026, 12, 9)) or {}) == {"sku-7": "mailer"}
    assert store.query("SELECT sku FROM promotions") == [{"sku": "sku-7"}]


@pytest.mark.parametrize("case", ["bad_date", "unknown_key", "end_before_start", "neither"])
def test_a_malformed_promotions_snapshot_is_refused_naming_the_field_and_the_old_plan_stays(
        case: str, node: Any, upstream: Any, keys: Any, tmp_path: Path, publish: Any) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_entries(("sku-1", True, False, "2026-12-02", "2026-12-08"))))
    publish(build_release("promotions", good, "promo-1", keys.private))
    upstream.wait_step("promo-1", "applied")
    before = node.store.promotion_plan(date(2026, 12, 3))
    assert dict(before or {}) == {"sku-1": "display"}

    entry: dict[str, Any] = {"sku": "sku-9", "display": True, "mailer": False, "start": "2026-12-09",
                             "end": "2026-12-15"}
    bad, field = {"bad_date": ({"start": "2026-12-32"}, "entries.0.start"),
                  "unknown_key": ({"colour": "red"}, "entries.0.colour"),
                  "end_before_start": ({"end": "2026-12-01"}, "entries.0"),
                  "neither": ({"display": False}, "entries.0")}[case]
    snap = tmp_path / "bad.json"
    snap.write_text(json.dumps({"entries": [{**entry, **bad}]}))
    publish(build_release("promotions", snap, "promo-2", keys.private))
    refused = upstream.wait_step("promo-2", "refused")
    detail = refused[0][2]
    assert "promotions snapshot does not match its schema" in detail and f"{field}:" in detail, detail
    if case == "end_before_start":
        assert "is before start" in detail, detail
    if case == "neither":
        assert "display and/or mailer" in detail, detail
    assert node.store.promotion_plan(date(2026, 12, 3)) is before  # the old plan, untouched
    assert node.store.promotion_plan(date(2026, 12, 10)) is None
    node.store.flush()
    assert node.store.query("SELECT sku FROM promotions") == [{"sku": "sku-1"}]

"""One check for "is this a customer hash" (edge.sync.schemas.is_customer_hash): 64 lowercase hex, nothing more.

Fusion had its own ``^[0-9a-f]{64}$`` with ``re.match``, and ``$`` also matches before a trailing newline, so
``hash + "\\n"`` was linked to a visit (and went into the check-in event, the store and the cloud) as a customer key
that matches no profile. The sync room and the profile schemas already used the one check (5563dcb).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge.bus import Bus
from edge.config import NodeConfig
from edge.events import CheckIn
from edge.fusion import Fusion, hash_customer
from edge.sync.schemas import is_customer_hash

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = {
    "zones": [{"id": "dairy", "polygon": [[0, 0], [5, 0], [5, 4], [0, 4]]}],
    "shelves": [{"id": "milk", "zone": "dairy", "position": [2, 0.3], "slots": [{"slot": 0, "sku": "MILK"}]}],
    "screens": [{"id": "dairy-screen", "position": [2.5, 3.8], "zone": "dairy"}],
}
SALT = "test-salt-for-the-hash-check"


def fusion() -> Fusion:
    cfg = NodeConfig.model_validate({"layout": LAYOUT, "camera": {"enabled": False},
                                     "fusion": {"customer_salt": SALT}})
    return Fusion(cfg, lambda e: None)


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\x00"])
def test_fusion_refuses_a_hash_with_anything_after_it(suffix: str) -> None:
    h = hash_customer("LOYALTY-0042", SALT)
    f = fusion()
    assert f.session(f.check_in(h)).customer == h  # type: ignore[union-attr]  # the real hash is linked
    with pytest.raises(ValueError, match="hash_customer"):
        f.check_in(h + suffix)
    assert all(s.customer != h + suffix for s in f.active_sessions())


@pytest.mark.parametrize("bad", ["A" * 64, "a" * 63, "a" * 65, "\n" + "a" * 64, "a" * 64 + "\n"])
def test_fusion_and_the_sync_room_agree_on_what_a_hash_is(bad: str) -> None:
    assert not is_customer_hash(bad)
    with pytest.raises(ValueError):
        fusion().check_in(bad)


def test_a_check_in_event_with_a_newline_hash_on_the_bus_is_counted_and_dropped() -> None:
    bus = Bus()
    f = Fusion(NodeConfig.model_validate({"layout": LAYOUT, "camera": {"enabled": False},
                                          "fusion": {"customer_salt": SALT}}), lambda e: None, bus=bus)
    f._on_check_in_event(CheckIn(customer=hash_customer("C1", SALT) + "\n", screen="dairy-screen"))
    assert f.stats["bad_events"] == 1 and f.stats["check_ins"] == 0
    assert f.active_sessions() == []


def test_no_other_hand_rolled_64_hex_check_in_the_node() -> None:
    """The customer-hash check lives in edge/sync/schemas.py only (is_customer_hash, and its Sha256 field type)."""
    copies = []
    for py in sorted((ROOT / "edge").rglob("*.py")):
        if py.relative_to(ROOT).as_posix() == "edge/sync/schemas.py":
            continue
        for n, line in enumerate(py.read_text().splitlines(), 1):
            if re.search(r"\{64\}|0-9a-f\]", line):
                copies.append(f"{py.relative_to(ROOT)}:{n}: {line.strip()}")
    assert copies == [], "use edge.sync.schemas.is_customer_hash instead of:\n" + "\n".join(copies)


def test_the_recommender_does_not_store_a_check_in_that_is_not_a_hash(tmp_path: Path) -> None:
    """The recommend room stores every check-in it is handed (the event goes up to the cloud): one whose customer
    is not a hash (a raw id, hash + "\\n") is dropped there too, not only in fusion. Real SQLite."""
    from edge.recommend import Recommender
    from edge.store import Store

    cfg = NodeConfig.model_validate({"layout": LAYOUT, "camera": {"enabled": False},
                                     "node": {"data_dir": str(tmp_path)}, "fusion": {"customer_salt": SALT}})
    good = hash_customer("C1", SALT)
    with Store(tmp_path / "sc.db", flush_interval_ms=5) as store:
        rec = Recommender(cfg, store, Bus())
        for bad in ("LOYALTY-0042", good + "\n", good.upper()):
            rec.on_check_in(CheckIn(customer=bad, session="v-bad"))
        rec.on_check_in(CheckIn(customer=good, session="v-good"))
        store.flush()
        assert "v-bad" not in rec.visits and rec.visits["v-good"].customer == good
        rows = store.query("SELECT payload FROM events")
    payloads = "\n".join(r["payload"] for r in rows)
    assert good in payloads and "LOYALTY-0042" not in payloads and good.upper() not in payloads
    assert payloads.count(good) == 1, payloads  # not the newline copy either

"""A card that keeps corrupting does not fill up with the corrupt databases the store sets aside.

``Store.open`` moves a database that fails ``PRAGMA integrity_check`` aside as ``shelfcast.db.corrupt-<time>``
(with its -wal and -shm) and starts a fresh one. Before 2026-12-01 nothing removed those copies, each the
database's size: a dying card or repeated power cuts filled the card with them. Now the newest ``KEEP_CORRUPT`` (2)
stay for support and older ones go; ``doctor`` calls the card suspect when it finds more than one.
Real SQLite files, a real Store, a real 2 MB tmpfs for the full card.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

import edge.store as store_mod
from edge.doctor import check_database
from edge.events import ShopperEvent
from edge.store import KEEP_CORRUPT, Store


def make_db(path: Path, events: int = 20, pad: int = 0) -> None:
    """A real node database with ``events`` outbox rows (``pad`` bytes of payload each) and one event."""
    s = Store(path)
    s.open()
    for i in range(events):
        s.enqueue("t", "x" * pad, id=f"e{i}")
    s.append_event(ShopperEvent("v", "1", "pick", None)).result(10)
    s.close()


def smash(path: Path) -> None:
    """Damage the schema page, as a card that loses a sector does."""
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(4096 - 100)
    path.write_bytes(bytes(data))


def earlier_copy(db: Path, stamp: str, pad: int = 0) -> Path:
    """A corrupt copy the store set aside on an earlier day (what the old code left behind, never removed)."""
    aside = db.with_name(f"{db.name}.corrupt-{stamp}")
    make_db(aside, events=20 if not pad else 250, pad=pad)
    smash(aside)
    Path(f"{aside}-wal").write_bytes(os.urandom(8192))  # its WAL, set aside with it
    return aside


def copies(db: Path) -> list[str]:
    return sorted(p.name for p in db.parent.iterdir() if ".corrupt-" in p.name)


def test_a_card_that_keeps_corrupting_keeps_only_the_newest_copies(tmp_path: Path) -> None:
    """Old code: every corruption left its copy (and -wal) for good: 5 copies after this test's 5 corruptions."""
    db = tmp_path / "data" / "shelfcast.db"
    db.parent.mkdir()
    for day in ("20261101T030000", "20261110T030000", "20261120T030000"):
        earlier_copy(db, day)
    assert len([n for n in copies(db) if not n.endswith(("-wal", "-shm"))]) == 3
    for _ in range(2):  # the card corrupts the live database twice more
        make_db(db)
        smash(db)
        with Store(db) as s:
            h = s.health()
            just = Path(h["recovered_from"]["path"])
            assert just.exists(), h
            s.append_event(ShopperEvent("v", "2", "pick", None)).result(10)  # the fresh database serves
            assert s.event_count() == 1
        kept = [n for n in copies(db) if not n.endswith(("-wal", "-shm"))]
        assert len(kept) == KEEP_CORRUPT == 2, copies(db)
        assert h["corrupt_copies"] == kept, h  # health names what is kept
        assert just.name in kept, (just, kept)
        # the removed ones go with their -wal and -shm: nothing of theirs is left
        for n in copies(db):
            assert n.removesuffix("-wal").removesuffix("-shm") in kept, copies(db)
    assert kept[0].startswith("shelfcast.db.corrupt-2026") and "20261120" not in "".join(kept)
    with sqlite3.connect(db) as c:  # the live database is intact
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_two_corruptions_in_one_second_keep_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Old code: the second copy was moved over the first (the same stamp): the first one was lost."""
    db = tmp_path / "shelfcast.db"
    monkeypatch.setattr(store_mod.time, "strftime", lambda fmt, *a: "20261201T101010")
    seen: dict[Path, bytes] = {}
    for _ in range(2):
        make_db(db, events=3)
        smash(db)
        marker = db.read_bytes()[:4096]  # the smashed page: identifies this copy
        with Store(db) as s:
            seen[Path(s.health()["recovered_from"]["path"])] = marker
    assert len(seen) == 2, seen
    for path, marker in seen.items():
        assert path.read_bytes()[:4096] == marker, path


def test_an_unset_clock_never_removes_the_copy_just_set_aside(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A Pi without a real-time clock stamps 1970: the copy just set aside sorts first by name, and is still the
    one kept (old code: all three kept)."""
    db = tmp_path / "shelfcast.db"
    earlier_copy(db, "20261120T030000")
    earlier_copy(db, "20261125T030000")
    monkeypatch.setattr(store_mod.time, "strftime", lambda fmt, *a: "19700101T000042")
    make_db(db, events=3)
    smash(db)
    with Store(db) as s:
        just = Path(s.health()["recovered_from"]["path"])
    kept = [n for n in copies(db) if not n.endswith(("-wal", "-shm"))]
    assert just.exists() and sorted(kept) == sorted([just.name, "shelfcast.db.corrupt-20261125T030000"]), kept


def test_copies_left_by_the_old_code_are_pruned_at_the_next_start(tmp_path: Path) -> None:
    """A node upgraded with a pile of copies from before: the next start (no new corruption) prunes them."""
    db = tmp_path / "shelfcast.db"
    make_db(db)
    for d in range(1, 6):
        earlier_copy(db, f"202611{d:02d}T030000")
    with Store(db) as s:
        h = s.health()
    assert h["recovered_from"] is None
    newest = ["shelfcast.db.corrupt-20261104T030000", "shelfcast.db.corrupt-20261105T030000"]
    assert [n for n in copies(db) if not n.endswith(("-wal", "-shm"))] == newest, copies(db)
    assert h["corrupt_copies"] == newest, h
    assert db.with_name("shelfcast.db.corrupt-20261101T030000-wal").exists() is False


def test_doctor_calls_the_card_suspect_when_the_database_was_corrupt_more_than_once(tmp_path: Path) -> None:
    """Old code: "an earlier corrupt copy was moved aside" whatever their number, and the fix told the technician
    to delete it "once a support bundle has it", which a support bundle never does (it lists the data dir's file
    names and sizes, never a database)."""
    data = tmp_path / "data"
    data.mkdir()
    db = data / "shelfcast.db"
    make_db(db)
    earlier_copy(db, "20261120T030000")
    c = check_database(data)
    assert c.status == "warn" and "corrupt-20261120T030000" in c.detail and "suspect" not in c.detail, c
    assert "support bundle has it" not in c.fix and "sudo rm -f" in c.fix, c
    earlier_copy(db, "20261125T030000")
    c = check_database(data)
    assert c.status == "warn" and "SD card is suspect" in c.detail, c
    assert "corrupt-20261120T030000" in c.detail and "corrupt-20261125T030000" in c.detail, c
    assert "replace the SD card" in c.fix and f"sudo rm -f {data}/shelfcast.db.corrupt-*" in c.fix, c


def test_on_a_full_card_the_old_copies_make_room_for_the_fresh_database(
        tiny_disk: Path, fill_disk: Callable[[Path], Path]) -> None:
    """A 2 MB card holding the corrupt copies kept from earlier, the rest filled: the live database corrupts. The
    old code could not even check it (no room for its -shm: "disk I/O error") and stopped with ``StoreDiskError``,
    waiting for a technician to free space. Now the copies kept for support go first on a full card, the bad file
    is set aside, and the node serves from a fresh database."""
    db = tiny_disk / "shelfcast.db"
    for day in ("20261110T030000", "20261120T030000"):
        earlier_copy(db, day, pad=1500)
    make_db(db, events=5)
    smash(db)
    filler = fill_disk(tiny_disk)
    try:
        with Store(db) as s:
            just = Path(s.health()["recovered_from"]["path"])
            s.append_event(ShopperEvent("v", "3", "pick", None)).result(10)
            assert s.event_count() == 1
        assert [n for n in copies(db) if not n.endswith(("-wal", "-shm"))] == [just.name], copies(db)
    finally:
        filler.unlink()

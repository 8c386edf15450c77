"""What upgrades leave in the data dir: each schema migration copies the database to ``shelfcast.db.v<N>.bak``
first (edge/store.py ``_migrate``), and before this nothing ever removed one, each the database's size, on an SD
card. The newest is kept (a rollback to the code before the last upgrade restores it, as the installer keeps that
code's venv), older ones go.

Two successive upgrades with a migration each are simulated by the real Store with one, then two, migration steps
added to its list (the way docs/technician-guide.md's migration cost was measured), on a real database file.
"""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

import edge.store as store_mod
from edge.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreNewerError


def code_at(monkeypatch: pytest.MonkeyPatch, extra_steps: int) -> int:
    """The Store as a ShelfCast with ``extra_steps`` more migrations than this one would be; returns its schema."""
    steps = [[f"CREATE TABLE upgrade_probe_{i} (x INTEGER)"] for i in range(extra_steps)]
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*MIGRATIONS, *steps])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + extra_steps)
    return SCHEMA_VERSION + extra_steps


def open_close(db: Path, rows: int = 0, first: int = 0) -> None:
    s = Store(db)
    s.open()
    for i in range(first, first + rows):
        s.enqueue("shelfcast/v1/s1/node-1/events", f'{{"n": {i}}}', id=f"e{i}").result(10)
    s.close()


def user_version(db: Path) -> int:
    with closing(sqlite3.connect(db)) as c:
        return int(c.execute("PRAGMA user_version").fetchone()[0])


def test_each_migration_keeps_its_own_backup_and_removes_the_older_ones(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "data" / "shelfcast.db"
    open_close(db, rows=30)  # the node as installed
    unrelated = [db.with_name(n) for n in ("shelfcast.db.vx.bak", "notes.v1.bak", "shelfcast.yaml.bak")]
    for f in unrelated:
        f.write_text("not a migration backup of this database")

    s1 = code_at(monkeypatch, 1)  # upgrade 1: one migration
    open_close(db, rows=20, first=30)
    first_backup = db.with_name(f"shelfcast.db.v{SCHEMA_VERSION}.bak")
    assert first_backup.exists() and user_version(first_backup) == SCHEMA_VERSION
    assert user_version(db) == s1

    s2 = code_at(monkeypatch, 2)  # upgrade 2: one more
    open_close(db, rows=5, first=50)
    second_backup = db.with_name(f"shelfcast.db.v{s1}.bak")
    assert second_backup.exists() and user_version(second_backup) == s1
    assert not first_backup.exists(), "the backup of two upgrades ago is still on the card"
    assert sorted(p.name for p in db.parent.glob("shelfcast.db.v*.bak")) == [second_backup.name, "shelfcast.db.vx.bak"]
    assert all(f.exists() for f in unrelated)  # only this database's numbered backups are touched
    assert user_version(db) == s2

    # rolling back to the code before upgrade 2: it refuses the database and names the backup that is there
    code_at(monkeypatch, 1)
    with pytest.raises(StoreNewerError) as refused:
        Store(db).open()
    assert f"sudo cp -p {second_backup} {db}" in str(refused.value)
    # and the guide's way back works: the copy over the database, the WAL files dropped, the node opens it
    shutil.copy2(second_backup, db)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    s = Store(db)
    s.open()
    s.close()
    assert user_version(db) == s1
    with closing(sqlite3.connect(db)) as c:
        assert c.execute("SELECT count(*) FROM outbox").fetchone()[0] == 50  # what the code before it had
    assert second_backup.exists()  # opening without a migration removes nothing


def test_a_failed_migration_keeps_the_older_backups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "data" / "shelfcast.db"
    open_close(db, rows=3)
    older = db.with_name("shelfcast.db.v0.bak")  # what an older upgrade left (any number)
    older.write_bytes(b"older copy")
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*MIGRATIONS, ["THIS IS NOT SQL"]])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(sqlite3.OperationalError):
        Store(db).open()
    assert older.read_bytes() == b"older copy"  # nothing is removed before the migration went through
    assert user_version(db) == SCHEMA_VERSION

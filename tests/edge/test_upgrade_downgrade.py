"""A store rolls back a bad upgrade: the older ShelfCast meets a database a newer one migrated.

It must refuse it in one clear message (no traceback), name the copy the upgrade made before migrating, and
the way back that message gives (stop, copy the backup over, drop the WAL files, start) must bring the node up
on the old data. The "newer ShelfCast" is simulated as its migration would leave the data dir: the copy
``shelfcast.db.v<N>.bak`` taken first, then ``user_version`` N+1 (edge/store.py ``_migrate``).
"""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from edge.store import SCHEMA_VERSION, Store


def test_the_older_shelfcast_refuses_the_newer_database_and_names_the_way_back(
        tmp_path: Path, node_process: Any) -> None:
    cfg = node_process.minimal_config(tmp_path)
    db = tmp_path / "data" / "shelfcast.db"
    db.parent.mkdir()
    s = Store(db)
    s.open()
    for i in range(50):
        s.enqueue("shelfcast/v1/s1/node-1/events", f'{{"n": {i}}}', id=f"e{i}").result(10)
    s.close()
    # what the newer ShelfCast's migration does: a copy first, then the schema moves on (and a row of its own)
    backup = db.with_name(f"shelfcast.db.v{SCHEMA_VERSION}.bak")
    shutil.copy2(db, backup)
    with closing(sqlite3.connect(db)) as c, c:
        c.execute("INSERT INTO outbox (id, topic, payload, created) VALUES ('new', 't', '{}', 0)")
        c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")

    p = node_process.start(cfg)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 2, out
    assert "Traceback" not in out, out
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this ShelfCast ({SCHEMA_VERSION})" in out, out
    assert f"sudo cp -p {backup} {db}" in out and "is lost" in out, out

    # the way back the message gives (without sudo/systemctl: this test is the service)
    shutil.copy2(backup, db)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    p = node_process.start(cfg)
    node_process.wait_running(p)
    node_process.stop(p)
    with closing(sqlite3.connect(db)) as c, c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert c.execute("SELECT count(*) FROM outbox").fetchone()[0] == 50  # nothing the old code had is lost


def test_without_a_backup_the_refusal_says_upgrade(tmp_path: Path, node_process: Any) -> None:
    cfg = node_process.minimal_config(tmp_path)
    db = tmp_path / "data" / "shelfcast.db"
    db.parent.mkdir()
    with closing(sqlite3.connect(db)) as c, c:
        c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 3}")
    p = node_process.start(cfg)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 2 and "Traceback" not in out, out
    assert "upgrade ShelfCast" in out and ".bak" not in out, out

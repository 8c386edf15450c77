"""The full-disk hint says what is safe to delete and what is not, with the command.

Before 2026-12-01 (``space_fix`` in edge/store.py, shown by the store's ``StoreDiskError`` and by ``doctor``) it
said "remove old *.corrupt-* and *.bak files": since 804ef81 the one ``shelfcast.db.v<N>.bak`` left is the copy a
rollback restores (``install.sh --rollback``, the guide's downgrade), so following the hint could strand a node on
a schema its previous version refuses. Checked on a really full 2 MB tmpfs: the hint's own delete command, run as
written (without sudo: the tests run as root), frees the space, and the node's files stay.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from edge.doctor import check_data_dir, check_database
from edge.events import ShopperEvent
from edge.store import SCHEMA_VERSION, Store, StoreDiskError, space_fix


def test_the_hint_names_the_rollback_copy_as_one_to_keep(tmp_path: Path) -> None:
    """Old code: "remove old *.corrupt-* and *.bak files in DIR"."""
    hint = space_fix(tmp_path)
    assert "*.bak" not in hint, hint
    assert f"sudo rm -f {tmp_path}/shelfcast.db.corrupt-*" in hint, hint
    assert "keep" in hint and f"{tmp_path}/shelfcast.db.v<N>.bak" in hint and "roll" in hint, hint
    assert "shelfcast.db with its -wal and -shm" in hint, hint
    assert "sudo journalctl --vacuum-size=32M" in hint, hint


def test_following_the_hint_on_a_full_card_frees_space_and_keeps_the_rollback_copy(
        tiny_disk: Path, fill_disk: Callable[[Path], Path]) -> None:
    db = tiny_disk / "shelfcast.db"
    with Store(db) as s:
        for i in range(30):
            s.enqueue("t", "x" * 200, id=f"e{i}")
        s.append_event(ShopperEvent("v1", "1", "pick", "z"), upstream="up").result(5)
    rollback = db.with_name(f"shelfcast.db.v{SCHEMA_VERSION}.bak")  # what the last upgrade's migration left
    with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(rollback)) as dst:
        src.backup(dst)
    shutil.copy(db, db.with_name("shelfcast.db.corrupt-20261120T030000"))  # set aside earlier (bytes: its size)
    filler = fill_disk(tiny_disk)
    try:
        hints = [check_data_dir(tiny_disk).fix, check_database(tiny_disk).fix]
        with pytest.raises(StoreDiskError) as e:
            big = Store(tiny_disk / "other.db")  # a store that must create its file: refused, naming the fix
            big.open()
        hints.append(str(e.value))
        for h in hints:
            assert space_fix(tiny_disk) in h, h
        cmds = re.findall(r"`([^`]*rm -f[^`]*)`", hints[0])
        assert cmds == [f"sudo rm -f {tiny_disk}/shelfcast.db.corrupt-*"], hints[0]
        r = subprocess.run(["bash", "-c", cmds[0].removeprefix("sudo ")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert rollback.exists() and db.exists(), sorted(p.name for p in tiny_disk.iterdir())
        with Store(db) as s:  # the node's database opens and takes writes again
            s.append_event(ShopperEvent("v1", "2", "pick", "z"), upstream="up").result(5)
            assert s.outbox_pending() == 32
        with closing(sqlite3.connect(rollback)) as c:
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        filler.unlink()

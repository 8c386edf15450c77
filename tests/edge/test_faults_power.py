"""A power cut must not take an acknowledged event with it.

There is no power switch to pull here, so this checks the mechanism on the real process with strace: every
time ``append_event``'s future resolves (the event is "accepted"), the WAL holding it has been
fdatasync'ed since the previous acknowledgement. With ``synchronous=NORMAL`` (the old setting) SQLite syncs
the WAL only at checkpoints: a committed, acknowledged batch lived in the page cache and a power cut could
roll it back (https://www.sqlite.org/pragma.html#pragma_synchronous).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def test_every_acknowledged_event_is_on_stable_storage(tmp_path: Path) -> None:
    strace = shutil.which("strace")
    if strace is None:
        if os.environ.get("SHELFCAST_REQUIRE_SERVICES") == "1":
            pytest.fail("strace is required: `sudo apt-get install strace`")
        pytest.skip("strace not installed")
    script = textwrap.dedent(f"""
        import os
        from edge.events import ShopperEvent
        from edge.store import Store
        s = Store({str(tmp_path / "sc.db")!r}, flush_interval_ms=5).open()
        s.flush()
        for i in range(10):
            s.append_event(ShopperEvent("v", str(i), "pick", "z"), upstream="up").result(10)
            os.write(2, b"ACKED\\n")
        s.close()
    """)
    log = tmp_path / "strace.txt"
    proc = subprocess.run([strace, "-f", "-y", "-e", "trace=fsync,fdatasync,write", "-o", str(log),
                           sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    acks = 0
    synced = False
    for line in log.read_text().splitlines():
        if ("fdatasync(" in line or "fsync(" in line) and "-wal>" in line:
            synced = True
        elif 'write(2' in line and "ACKED" in line:
            assert synced, f"acknowledgement {acks + 1} came before the WAL was synced"
            acks += 1
            synced = False
    assert acks == 10

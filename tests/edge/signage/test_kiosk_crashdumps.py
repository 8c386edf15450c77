"""Chromium's crash dumps on a kiosk stay bounded (deploy/shelfcast-kiosk, real Chromium).

Chromium's crash reporter writes a minidump per crashed process (about 0.1 MB for a headless renderer here) and,
with uploads off, removes them only past 128 MB. On the node they went to $XDG_CONFIG_HOME/chromium/Crash Reports,
on the kiosk's tmpfs: RAM, until the kiosk restarted. The launcher now points them at its run directory's ``crash/``
(Chromium ignores ``--crash-dumps-dir``; it reads ``BREAKPAD_DUMP_LOCATION``) and the watchdog keeps the newest 3.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

KEEP = 3


def dumps(d: Path) -> list[Path]:
    return sorted(d.rglob("*.dmp")) if d.exists() else []


def test_crash_dumps_go_to_the_run_dir_and_only_the_newest_stay(kiosk: Any, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import sync_playwright

    config = tmp_path / "config"  # the unit sets XDG_CONFIG_HOME (and HOME) to the kiosk's tmpfs
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    k = kiosk(None)  # the welcome card: a page in a renderer like any other, no node needed
    crashes = KEEP + 3
    with sync_playwright() as pw:
        k.wait_for(pw, "the welcome card", lambda s: bool(s.get("card")), within=20)
        for i in range(crashes):
            killed = k.renderer_pids()
            assert killed, "no renderer process found"
            for pid in killed:
                os.kill(pid, signal.SIGSEGV)
            k.wait_for(pw, f"the card again after crash {i + 1}",
                       lambda s, killed=killed: bool(s.get("card")) and "crashed" in s.get("text", "")
                       and bool(set(k.renderer_pids()) - set(killed)), within=15)
    crash = k.run / "crash"
    deadline = time.monotonic() + 10  # the watchdog prunes 2 s after a crash it sees
    while time.monotonic() < deadline and len(dumps(crash)) > KEEP:
        time.sleep(0.2)
    kept = dumps(crash)
    assert not dumps(config) and not dumps(tmp_path / "home"), "crash dumps outside the kiosk's crash directory"
    assert 1 <= len(kept) <= KEEP, (kept, k.output())
    assert not [m for m in crash.rglob("*.meta") if not m.with_suffix(".dmp").exists()], "a dump's .meta was left"
    out = k.output()
    assert "older Chromium crash dump(s)" in out and "Traceback" not in out, out
    print(f"{crashes} renderer crashes: {len(kept)} dumps kept, "
          f"{sum(p.stat().st_size for p in kept) / 1024:.0f} KiB")

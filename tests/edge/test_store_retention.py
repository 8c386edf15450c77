"""Finished visits (customer hash + picks) and impressions are pruned like events: by age, and capped.

Found by the privacy audit: the sessions table was never pruned (it grew for ever, each row a shopper's hash and
what they picked), and impressions stamped by an unset clock had no bound at all.
"""

from __future__ import annotations

import time
from pathlib import Path

from edge.store import Store

DAY = 86400.0


def _sessions(s: Store) -> list[str]:
    return sorted(r["id"] for r in s.query("SELECT id FROM sessions"))


def test_old_visits_age_out_with_the_events(tmp_path: Path) -> None:
    now = time.time()
    with Store(tmp_path / "sc.db", retention_days=2, max_events=1000) as s:
        s.save_session("old", started=now - 5 * DAY, ended=now - 5 * DAY + 600, zone="z", customer="c" * 64,
                       items=["1", "2"])
        s.save_session("open-old", started=now - 4 * DAY, ended=None, zone="z", customer=None, items=["3"])
        s.save_session("recent", started=now - 3600, ended=now - 60, zone="z", customer="d" * 64, items=["4"])
        s.save_session("unset-clock", started=1000.0, ended=1600.0, zone="z", customer=None, items=["5"])
        s.flush()
        assert s.run_maintenance()["sessions_aged_out"] == 2
        # a stamp from an unset clock (1970) is not "old": only the cap removes it (as for events)
        assert _sessions(s) == ["recent", "unset-clock"]


def test_visits_and_impressions_are_capped_at_max_events(tmp_path: Path) -> None:
    with Store(tmp_path / "sc.db", retention_days=30, max_events=50) as s:
        for i in range(80):  # stamped by an unset clock: no age applies, the cap must
            s.save_session(f"v{i:03d}", started=1000.0 + i, ended=1001.0 + i, zone=None, customer=None, items=[])
            s.record_impression(f"i{i:03d}", "screen", f"v{i:03d}", ["1"], "m", 1000.0 + i)
        s.flush()
        s.run_maintenance()
        kept = _sessions(s)
        assert len(kept) == 50 and kept[0] == "v030", kept[:3]  # the oldest went first
        imps = [r["id"] for r in s.query("SELECT id FROM impressions ORDER BY t")]
        assert len(imps) == 50 and imps[0] == "i030"

"""Simulations (``shelfcast demo``) learn their made-up picks whatever the host's NTP state: a laptop or CI
container whose kernel reports the clock unsynced must not pause the demo's popularity learning or warn about
NTP (a node in a store keeps the real check: tests/edge/test_clock_learning.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edge import clock as clock_mod
from edge.demo import DemoOptions, run_demo


def test_the_demo_learns_its_picks_on_a_host_whose_clock_reports_unsynced(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(clock_mod.SYSTEM, "synced", lambda: False)  # the host's kernel: NTP not synchronised
    caplog.set_level(logging.WARNING)
    out = asyncio.run(run_demo(DemoOptions(duration=4.0, quiet=True, action_interval_s=0.4)))
    assert out["status"] == "ok" and out["shelf_events"] + out["camera_picks"] > 0
    unsynced = [r.getMessage() for r in caplog.records if "not synced" in r.getMessage()]
    assert not unsynced, unsynced

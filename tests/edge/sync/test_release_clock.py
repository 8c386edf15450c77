"""Release staging judges "stale" and "stalled" in monotonic time, not by file mtimes against the wall clock.

A Pi without a real-time clock steps its wall clock when NTP syncs. Before, a step forward of more than a day made
a download in progress look a day old (the next release's manifest deleted it, ``check_stalled`` reported it
stalled at once), and a step back made a real stall look fresh until the clock caught up. The tests stand the
step in by moving the staged files' mtimes (this machine's clock cannot be stepped) and drive the monotonic clock
by hand.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from edge.sync.publish import Release, build_release
from edge.sync.release import ReleaseManager

DAY = 86400.0


class Mono:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _manager(tmp_path: Path, keys: Any, mono: Mono, reports: list[tuple[str, str, str, bool, str]]) -> ReleaseManager:
    return ReleaseManager(tmp_path / "node", public_key=keys.public_path, loader=None, get_model=lambda: None,
                          set_model=lambda m: None, report=lambda *a: reports.append(a), mono=mono)


def _stage_part(rm: ReleaseManager, rel: Release, n: int) -> Path:
    """The manifest and the first ``n`` chunks arrive (the link dropped before the rest)."""
    rm.on_manifest("model", json.dumps(rel.manifest).encode())
    for i, chunk in enumerate(rel.chunks()[:n]):
        rm.on_chunk("model", i, chunk)
    return rm.staging / "model" / rel.manifest["version"]


def _set_mtimes(d: Path, t: float) -> None:
    for p in [*d.iterdir(), d]:
        os.utime(p, (t, t))


def test_a_step_forward_neither_deletes_a_download_in_progress_nor_calls_it_stalled(
        tmp_path: Path, keys: Any, fakes: Any) -> None:
    mono, reports = Mono(), []
    rm = _manager(tmp_path, keys, mono, reports)
    try:
        rel = build_release("model", fakes.write_model(tmp_path / "v4", "v4"), None, keys.private, chunk_size=64 * 1024)
        assert rel.manifest["chunks"] >= 3
        d = _stage_part(rm, rel, 2)
        _set_mtimes(d, time.time() - 2 * DAY)  # the wall clock stepped forward two days since these arrived
        mono.t += 60  # a minute has really passed
        assert rm.check_stalled() == []  # old code: "none for 2880 min"
        # another release's manifest prunes the staging area: the download in progress stays
        rel5 = build_release("model", fakes.write_model(tmp_path / "v5", "v5"), None, keys.private)
        rm.on_manifest("model", json.dumps(rel5.manifest).encode())
        assert d.is_dir() and len(list(d.glob("*.chunk"))) == 2  # old code: deleted as a day old
        # the rest arrives and it completes
        for i, chunk in enumerate(rel.chunks()[2:], start=2):
            rm.on_chunk("model", i, chunk)
        m, n = rm.staged("model", rel.manifest["version"])
        assert m is not None and n == m.chunks
    finally:
        rm.close()


def test_a_step_back_does_not_hide_a_stall_and_a_day_of_silence_is_still_pruned(
        tmp_path: Path, keys: Any, fakes: Any) -> None:
    mono, reports = Mono(), []
    rm = _manager(tmp_path, keys, mono, reports)
    try:
        rel = build_release("model", fakes.write_model(tmp_path / "v4", "v4"), None, keys.private, chunk_size=64 * 1024)
        d = _stage_part(rm, rel, 2)
        _set_mtimes(d, time.time() + DAY)  # the wall clock stepped back a day since these arrived
        mono.t += 601
        stalled = rm.check_stalled()  # old code: idle < 0, never reported until the clock caught up
        assert len(stalled) == 1 and "2 of" in stalled[0] and "none for 10 min" in stalled[0], stalled
        assert any(step == "staging" and not ok for _, _, step, ok, _ in reports)
        assert rm.check_stalled() == []  # not again within the hour
        mono.t += 3600
        assert len(rm.check_stalled()) == 1  # and again after it
        mono.t += DAY  # a day without a chunk: the next release's manifest drops it
        rel5 = build_release("model", fakes.write_model(tmp_path / "v5", "v5"), None, keys.private)
        rm.on_manifest("model", json.dumps(rel5.manifest).encode())
        assert not d.exists()
    finally:
        rm.close()


def test_staging_left_by_an_earlier_run_counts_from_when_this_run_first_sees_it(
        tmp_path: Path, keys: Any, fakes: Any) -> None:
    mono, reports = Mono(), []
    rm = _manager(tmp_path, keys, mono, reports)
    rel = build_release("model", fakes.write_model(tmp_path / "v4", "v4"), None, keys.private, chunk_size=64 * 1024)
    d = _stage_part(rm, rel, 2)
    rm.close()
    _set_mtimes(d, 0.0)  # an earlier run stamped them with an unset clock (1970)
    mono2 = Mono()
    rm2 = _manager(tmp_path, keys, mono2, reports)
    try:
        assert rm2.check_stalled() == []  # first look: not stalled yet
        mono2.t += 601
        assert len(rm2.check_stalled()) == 1
    finally:
        rm2.close()

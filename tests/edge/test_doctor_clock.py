"""``doctor``'s clock check uses the same "before this software was built" floor as the rooms (edge.clock)."""

from __future__ import annotations

from edge.clock import BUILD_FLOOR
from edge.doctor import check_clock


def test_a_clock_before_the_build_fails_even_within_the_build_year() -> None:
    # 2026-10-20: the build year, but before the build (old code compared the year only and passed it)
    c = check_clock(timedatectl=None, at=BUILD_FLOOR - 12 * 86400)
    assert c.status == "fail" and "2026-10-20" in c.detail and "before this software was built" in c.detail, c
    assert "timedatectl set-ntp true" in c.fix
    assert check_clock(timedatectl=None, at=0.0).status == "fail"  # 1970: a Pi that lost its fake-hwclock file


def test_a_clock_after_the_build_is_judged_by_its_sync_state() -> None:
    c = check_clock(timedatectl=None, at=BUILD_FLOOR + 30 * 86400)
    assert c.status in ("pass", "warn") and "before this software" not in c.detail, c

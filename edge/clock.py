"""Time on a node without a real-time clock.

A Raspberry Pi boots with the wall clock wherever fake-hwclock left it (or at
1970), runs minutes to hours before NTP syncs, and then the wall clock *steps*
forward or back. Event stamps stay wall time (``time.time()``: what the cloud
and ``report`` need); what measures *elapsed* time must not trust a step.

- ``Clock``: the seam the rooms take (``wall``, ``mono``). Tests pass their own
  functions; the product never patches ``time``.
- ``JumpWatch``: notices a step of the wall clock against the monotonic one
  (``wall - mono`` changes; NTP *slewing* moves it by < 0.5 ms/s, a step at
  once). A room holding wall-time stamps for its timers (visit idle, conversion
  window, outbox and retention ages) shifts them by the step, so a jump forward
  does not expire everything at once and a jump back does not freeze the timers.
- ``clock_problem`` / ``CLOCK_FIX``: one wording for "the clock is wrong".
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["BUILD_FLOOR", "CLOCK_FIX", "JUMP_S", "Clock", "JumpWatch", "clock_problem", "kernel_synced", "looks_unset"]

# No correct clock reads earlier than this code (2026-11-01 00:00 UTC): a stamp before it was made by an
# unset clock (1970, or an old fake-hwclock file), never by the real time.
BUILD_FLOOR = 1_793_491_200.0
JUMP_S = 1.0  # a change of wall - mono this large between two looks is a step, not slewing
CLOCK_FIX = "enable NTP: `sudo timedatectl set-ntp true` (and allow NTP, UDP 123, out of the store network)"


def looks_unset(t: float) -> bool:
    """A wall time no correct clock can show (before this software was built)."""
    return t < BUILD_FLOOR


_libc: ctypes.CDLL | None = None


def kernel_synced() -> bool | None:
    """Whether the kernel's clock is NTP-synchronised (adjtimex(2), read-only: what ``timedatectl``'s
    NTPSynchronized reads; TIME_ERROR = 5 = unsynchronised); None when it cannot be read."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex (~208 bytes) zeroed: modes = 0, read only
        state = int(_libc.adjtimex(buf))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != 5


def clock_problem(now: float | None = None) -> str:
    """'the clock is wrong (…)' naming what the node's clock says."""
    t = time.time() if now is None else now
    says = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")
    why = ", before this software was built" if looks_unset(t) else ""
    return f"the clock is wrong (this node says {says}{why})"


@dataclass
class Clock:
    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic
    jump_s: float = JUMP_S
    synced: Callable[[], bool | None] = kernel_synced

    def unsynced(self) -> bool:
        """The wall clock cannot be trusted yet: before the build date, or the kernel says NTP has not synced
        (None, unknown, counts as synced: a node without adjtimex is not flagged for ever)."""
        return looks_unset(self.wall()) or self.synced() is False

    def __call__(self) -> float:
        """Wall time: a Clock also fits where a plain ``clock()`` function is taken."""
        return self.wall()

    def watch(self) -> JumpWatch:
        return JumpWatch(self)


@dataclass
class JumpWatch:
    """One consumer's view of wall-clock steps: ``check()`` returns the step since its last call (0.0 if none)."""

    clock: Clock
    offset: float = field(init=False)
    jumps: int = field(default=0, init=False)
    last_jump: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.offset = self.clock.wall() - self.clock.mono()

    def check(self) -> float:
        off = self.clock.wall() - self.clock.mono()
        d, self.offset = off - self.offset, off
        if abs(d) < self.clock.jump_s:
            return 0.0
        self.jumps += 1
        self.last_jump = d
        return d


SYSTEM = Clock()
# The host's wall clock, taken as synced: for simulations (``shelfcast demo``, the benches), whose picks are made
# up on the spot. A demo on a laptop or CI container whose kernel reports NTP unsynced (containers often do)
# would otherwise stop its popularity learning and warn about NTP; a node in a store uses SYSTEM.
SIMULATED = Clock(synced=lambda: True)

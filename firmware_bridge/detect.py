"""Pick / put detection from one slot's weight stream.

Why this shape: a shelf sees load-cell noise, knocks and vibration (seconds of
ringing), slow temperature drift and hands pressing during a pick. A change is
only real once the weight is *stable again* at a new level, so the detector is
a small state machine over a sliding window (O(1) per sample, no allocation):

- stable  = window full and its standard deviation <= ``stable_std_g``;
- after ``settle_s`` of continuous stability the window mean ``m`` is compared
  with the last accepted level ``B`` (the baseline):
  * ``|m-B| < drift_band``: drift; ``B`` follows ``m`` slowly (compensation);
  * ``|m-B| >= enter`` (half a unit by default): an event of
    ``round((m-B)/unit_g)`` units, ``B := m``;
  * in between (hysteresis band): nothing happens; if it persists for
    ``pending_s`` the level is accepted silently (counted, no event).

The unit count comes from the product's unit weight (planogram). Without one,
every change above ``min_step_g`` counts as one unit with confidence 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Detection", "DetectorConfig", "ShelfDetector", "SlotDetector"]


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    window_s: float = 0.4
    settle_s: float = 0.35
    stable_std_g: float = 4.0
    enter_units: float = 0.5  # an event needs a change of at least this many units ...
    min_step_g: float = 8.0  # ... and at least this many grams
    drift_band_units: float = 0.2  # changes below this (and below drift_band_g) are drift
    drift_band_g: float = 6.0
    drift_alpha: float = 0.05  # per stable sample
    pending_s: float = 8.0


@dataclass(frozen=True, slots=True)
class Detection:
    slot: int
    delta_units: int
    delta_g: float
    confidence: float
    t: float  # controller time (s) the change started


class SlotDetector:
    """One slot. ``feed(t, grams)`` returns a Detection when a change has settled."""

    __slots__ = (
        "_buf", "_drift_band", "_enter", "_i", "_n", "_near", "_pending_since", "_ref", "_s", "_s2", "_settle_n",
        "_stable_run", "_stable_var", "_t_change", "_updates", "baseline", "cfg", "silent_steps", "slot",
        "unit_g",
    )

    def __init__(self, slot: int, rate_hz: float, unit_g: float | None = None,
                 cfg: DetectorConfig | None = None) -> None:
        self.slot = slot
        self.cfg = cfg or DetectorConfig()
        n = max(4, round(self.cfg.window_s * rate_hz))
        self._n = n
        self._settle_n = max(2, round(self.cfg.settle_s * rate_hz))
        self._stable_var = self.cfg.stable_std_g**2
        self._buf = [0.0] * n
        self.silent_steps = 0
        self.set_unit(unit_g)
        self.reset(keep_baseline=False)

    def set_unit(self, unit_g: float | None) -> None:
        self.unit_g = unit_g if unit_g and unit_g > 0 else None
        c = self.cfg
        if self.unit_g:
            self._enter = max(c.min_step_g, c.enter_units * self.unit_g)
            self._drift_band = min(c.drift_band_g, c.drift_band_units * self.unit_g)
        else:
            self._enter = c.min_step_g
            self._drift_band = min(c.drift_band_g, c.min_step_g * 0.5)
        self._near = self._enter * 0.5

    def reset(self, keep_baseline: bool = True) -> None:
        """Forget the window (after a gap or a controller reboot); keep the accepted level."""
        self._i = 0
        self._s = 0.0
        self._s2 = 0.0
        self._updates = 0
        self._stable_run = 0
        self._t_change: float | None = None
        self._pending_since: float | None = None
        if not keep_baseline:
            self.baseline: float | None = None
            self._ref = 0.0

    def feed(self, t: float, g: float) -> Detection | None:
        n = self._n
        x = g - self._ref
        i = self._i % n
        old = self._buf[i] if self._i >= n else 0.0
        self._buf[i] = x
        self._i += 1
        self._s += x - old
        self._s2 += x * x - old * old
        self._updates += 1
        base = self.baseline
        if base is not None and abs(g - base) < self._near:
            self._t_change = t  # the last moment the slot still read the old level
        if self._updates >= 4096:  # re-sum now and then: no float drift over days
            self._resum()
        if self._i < n:
            return None
        mean = self._s / n
        var = self._s2 / n - mean * mean
        if var > self._stable_var:
            self._stable_run = 0
            return None
        self._stable_run += 1
        if self._stable_run < self._settle_n:
            return None
        level = mean + self._ref
        if base is None:
            self._set_baseline(level)
            return None
        d = level - base
        ad = abs(d)
        if ad < self._drift_band:
            self.baseline = base + self.cfg.drift_alpha * d
            self._pending_since = None
            return None
        if ad >= self._enter:
            return self._event(t, d, level)
        if self._pending_since is None:
            self._pending_since = t
        elif t - self._pending_since >= self.cfg.pending_s:
            self.silent_steps += 1
            self._set_baseline(level)
        return None

    def _event(self, t: float, d: float, level: float) -> Detection | None:
        t0 = self._t_change if self._t_change is not None else t
        self._set_baseline(level)
        if self.unit_g:
            q = d / self.unit_g
            units = round(q)
            if units == 0:
                units = 1 if d > 0 else -1
            resid = abs(q - units)
            conf = max(0.05, 1.0 - 2.0 * resid)
        else:
            units = 1 if d > 0 else -1
            conf = 0.5
        return Detection(self.slot, units, d, round(conf, 3), t0)

    def _set_baseline(self, level: float) -> None:
        self.baseline = level
        self._t_change = None
        self._pending_since = None
        # re-centre the window on the new level (keeps the sums small and exact)
        shift = level - self._ref
        if abs(shift) > 1.0:
            self._ref = level
            n = self._n
            buf = self._buf
            for k in range(n):
                buf[k] -= shift
            self._resum()

    def _resum(self) -> None:
        buf = self._buf
        self._s = math.fsum(buf)
        self._s2 = math.fsum(x * x for x in buf)
        self._updates = 0


class ShelfDetector:
    """All slots of one controller."""

    __slots__ = ("cfg", "rate_hz", "slots")

    def __init__(self, slot_count: int, rate_hz: float, cfg: DetectorConfig | None = None) -> None:
        self.cfg = cfg or DetectorConfig()
        self.rate_hz = rate_hz
        self.slots = [SlotDetector(i, rate_hz, None, self.cfg) for i in range(slot_count)]

    def set_unit(self, slot: int, unit_g: float | None) -> None:
        if 0 <= slot < len(self.slots):
            self.slots[slot].set_unit(unit_g)

    def reset(self) -> None:
        for s in self.slots:
            s.reset(keep_baseline=True)

    def feed(self, t: float, first_slot: int, grams: tuple[float, ...] | list[float]) -> list[Detection]:
        out: list[Detection] = []
        slots = self.slots
        for k, g in enumerate(grams):
            j = first_slot + k
            if j >= len(slots) or g != g:  # NaN: no reading
                continue
            d = slots[j].feed(t, g)
            if d is not None:
                out.append(d)
        return out

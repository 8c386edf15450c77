"""Detection quality against ground truth: recall, unit-count accuracy, false events.

``offline`` simulates many shelf-hours faster than real time by rendering the
physics model in blocks and feeding the samples straight to the detector
(the same code the driver runs). ``score`` matches detections to truths and is
shared with the pty benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_bridge.detect import DetectorConfig, ShelfDetector
from firmware_bridge.physics import NoiseModel, ShelfPhysics, Truth, random_schedule

__all__ = ["Observed", "Score", "offline", "score"]


@dataclass(frozen=True, slots=True)
class Observed:
    slot: int
    delta_units: int
    t: float


@dataclass(frozen=True, slots=True)
class Score:
    truths: int
    detected: int
    right_units: int
    false_events: int
    shelf_hours: float

    @property
    def recall(self) -> float:
        return self.detected / self.truths if self.truths else 1.0

    @property
    def unit_accuracy(self) -> float:
        return self.right_units / self.truths if self.truths else 1.0

    @property
    def false_per_shelf_hour(self) -> float:
        return self.false_events / self.shelf_hours if self.shelf_hours else 0.0

    def __add__(self, o: Score) -> Score:
        return Score(self.truths + o.truths, self.detected + o.detected, self.right_units + o.right_units,
                     self.false_events + o.false_events, self.shelf_hours + o.shelf_hours)

    def as_dict(self) -> dict[str, float]:
        return {"truths": self.truths, "detected": self.detected, "right_units": self.right_units,
                "false_events": self.false_events, "shelf_hours": round(self.shelf_hours, 3),
                "pick_detection_recall": round(self.recall, 5), "unit_count_accuracy": round(self.unit_accuracy, 5),
                "false_events_per_shelf_hour": round(self.false_per_shelf_hour, 4)}


def score(truths: list[Truth], seen: list[Observed], shelf_hours: float, early_s: float = 0.5,
          late_s: float = 4.0) -> Score:
    """Greedy time matching per slot: a detection belongs to a truth if it starts near it."""
    by_slot: dict[int, list[Observed]] = {}
    for o in sorted(seen, key=lambda o: o.t):
        by_slot.setdefault(o.slot, []).append(o)
    used: set[int] = set()
    detected = right = 0
    for tr in sorted(truths, key=lambda x: x.t0):
        for o in by_slot.get(tr.slot, []):
            if id(o) in used:
                continue
            if tr.t0 - early_s <= o.t <= tr.t1 + late_s:
                used.add(id(o))
                detected += 1
                right += o.delta_units == tr.delta_units
                break
    false = sum(1 for o in seen if id(o) not in used)
    return Score(len(truths), detected, right, false, shelf_hours)


def offline(shelf_hours: float, slots: int = 8, rate_hz: int = 20, seed: int = 0,
            noise: NoiseModel | None = None, cfg: DetectorConfig | None = None,
            picks_per_hour: float = 60.0, block_s: float = 60.0) -> Score:
    """Simulate ``shelf_hours`` of one shelf (hour by hour) through the detector."""
    rng = np.random.default_rng(seed)
    unit_g = list(np.exp(rng.uniform(np.log(40.0), np.log(1200.0), slots)))
    stock = [int(x) for x in rng.integers(5, 20, slots)]
    phys = ShelfPhysics(slots, unit_g, stock, rng, noise or NoiseModel())
    det = ShelfDetector(slots, rate_hz, cfg)
    for i, u in enumerate(unit_g):
        det.set_unit(i, u)
    seen: list[Observed] = []
    truths: list[Truth] = []
    dt = 1.0 / rate_hz
    t_end = shelf_hours * 3600.0
    hour = 0.0
    while hour < t_end:
        h_end = min(hour + 3600.0, t_end)
        truths += random_schedule(phys, hour, h_end, picks_per_hour=picks_per_hour)
        b = hour
        while b < h_end:
            ts = np.arange(b, min(b + block_s, h_end), dt)
            rows = phys.render(ts).tolist()
            feed = det.feed
            for t, row in zip(ts.tolist(), rows, strict=True):
                for d in feed(t, 0, row):
                    seen.append(Observed(d.slot, d.delta_units, d.t))
            b += block_s
            phys.prune(b - 10.0)
        hour = h_end
    return score(truths, seen, shelf_hours)

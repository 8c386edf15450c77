"""A load-cell shelf, numerically: what the simulator's ADCs read.

Every disturbance is an additive function of time, so the same model renders
one sample (the real-time simulator behind a pty) or an hour of samples at once
(``render`` on a numpy time vector: the fast benchmark that feeds the detector
directly). Modelled: white noise, rare ADC spikes, slow drift (linear +
thermal swing), a faint continuous hum, knocks that ring for a second, and
picks/puts with a hand pressing and jiggling the item, leaking into the
neighbouring slots' cells (mechanical crosstalk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Interaction", "NoiseModel", "ShelfPhysics", "Truth", "random_schedule"]


@dataclass(frozen=True, slots=True)
class NoiseModel:
    noise_g: tuple[float, float] = (0.5, 1.5)  # white noise sigma range per slot
    spikes_per_slot_hour: float = 2.0
    spike_g: tuple[float, float] = (10.0, 300.0)
    drift_g_per_hour: float = 20.0  # max |linear drift|
    thermal_g: float = 5.0  # max amplitude of the slow thermal swing
    hum_g: float = 0.5
    crosstalk: tuple[float, float] = (0.03, 0.10)
    hand_press_g: tuple[float, float] = (20.0, 400.0)


QUIET = NoiseModel(noise_g=(0.3, 0.3), spikes_per_slot_hour=0.0, drift_g_per_hour=0.0, thermal_g=0.0,
                   hum_g=0.0, crosstalk=(0.0, 0.0), hand_press_g=(0.0, 0.0))


@dataclass(frozen=True, slots=True)
class Truth:
    """Ground truth of one scripted interaction."""

    slot: int
    delta_units: int
    t0: float
    t1: float


@dataclass(slots=True)
class Interaction:
    slot: int
    delta_g: float
    t0: float
    dur: float
    press_g: float
    jiggle_g: float
    jiggle_hz: float
    xtalk: tuple[float, float]
    truth: Truth | None = None

    @property
    def t1(self) -> float:
        return self.t0 + self.dur


@dataclass(slots=True)
class Knock:
    t0: float
    amp_g: float
    hz: float
    decay_s: float
    gains: np.ndarray

    @property
    def t1(self) -> float:
        return self.t0 + 6 * self.decay_s


@dataclass
class ShelfPhysics:
    """True weight (grams, after tare) on each slot plus every disturbance."""

    slot_count: int
    unit_g: list[float]
    stock: list[int]
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    noise: NoiseModel = field(default_factory=NoiseModel)

    def __post_init__(self) -> None:
        r = self.rng
        n = self.slot_count
        nm = self.noise
        self.base = np.array([u * s for u, s in zip(self.unit_g, self.stock, strict=True)], dtype=float)
        self.base += r.uniform(-2.0, 2.0, n)  # imperfect tare / container
        self.sigma = r.uniform(*nm.noise_g, n)
        self.drift_rate = r.uniform(-nm.drift_g_per_hour, nm.drift_g_per_hour, n) / 3600.0
        self.thermal_amp = r.uniform(0.0, nm.thermal_g, n)
        self.thermal_period = r.uniform(2 * 3600.0, 6 * 3600.0, n)
        self.thermal_phase = r.uniform(0, 2 * math.pi, n)
        self.hum_phase = r.uniform(0, 2 * math.pi, n)
        self.interactions: list[Interaction] = []
        self.knocks: list[Knock] = []
        self.units = list(self.stock)

    # -- scripting ---------------------------------------------------------------------------
    def interact(self, t0: float, slot: int, delta_units: int, dur: float | None = None) -> Truth:
        """A pick (negative) or put (positive) of whole units starting at ``t0``."""
        r = self.rng
        nm = self.noise
        dur = float(dur if dur is not None else r.uniform(0.6, 1.5))
        u = self.unit_g[slot]
        xt = (float(r.uniform(*nm.crosstalk)), float(r.uniform(*nm.crosstalk)))
        truth = Truth(slot, delta_units, t0, t0 + dur)
        self.interactions.append(Interaction(
            slot, delta_units * u, t0, dur, float(r.uniform(*nm.hand_press_g)) if nm.hand_press_g[1] else 0.0,
            float(r.uniform(0.05, 0.3) * u * abs(delta_units)), float(r.uniform(1.5, 4.0)), xt, truth))
        self.units[slot] += delta_units
        return truth

    def knock(self, t0: float, amp_g: float | None = None) -> None:
        r = self.rng
        self.knocks.append(Knock(t0, float(amp_g if amp_g is not None else r.uniform(5.0, 80.0)),
                                 float(r.uniform(6.0, 15.0)), float(r.uniform(0.2, 1.0)),
                                 r.uniform(0.5, 1.0, self.slot_count)))

    def prune(self, t: float) -> None:
        """Fold finished interactions into the base weight (bounded lists in long runs)."""
        keep = []
        for it in self.interactions:
            if it.t1 < t:
                self.base[it.slot] += it.delta_g
            else:
                keep.append(it)
        self.interactions = keep
        self.knocks = [k for k in self.knocks if k.t1 >= t]

    # -- rendering ---------------------------------------------------------------------------
    def render(self, t: np.ndarray) -> np.ndarray:
        """Readings (grams) at times ``t`` (seconds, sorted): shape (len(t), slot_count)."""
        r = self.rng
        n = self.slot_count
        tt = t[:, None]
        out = np.empty((len(t), n))
        out[:] = self.base
        out += self.drift_rate * tt
        out += self.thermal_amp * np.sin(2 * math.pi * tt / self.thermal_period + self.thermal_phase)
        if self.noise.hum_g:
            out += self.noise.hum_g * np.sin(2 * math.pi * (50.0 / 3.0) * tt + self.hum_phase)
        out += r.standard_normal(out.shape) * self.sigma
        for it in self.interactions:
            self._add_interaction(out, t, it)
        for k in self.knocks:
            lo, hi = np.searchsorted(t, [k.t0, k.t1])
            if hi > lo:
                dt = t[lo:hi] - k.t0
                wave = k.amp_g * np.exp(-dt / k.decay_s) * np.sin(2 * math.pi * k.hz * dt)
                out[lo:hi] += wave[:, None] * k.gains
        rate = self.noise.spikes_per_slot_hour
        if rate and len(t) > 1:
            span = float(t[-1] - t[0]) or 1.0 / 20
            expected = rate * n * span / 3600.0
            for _ in range(r.poisson(expected)):
                i = int(r.integers(0, len(t)))
                j = int(r.integers(0, n))
                out[i, j] += r.choice((-1.0, 1.0)) * r.uniform(*self.noise.spike_g)
        return out

    def _add_interaction(self, out: np.ndarray, t: np.ndarray, it: Interaction) -> None:
        lo, hi = np.searchsorted(t, [it.t0, it.t1])
        out[hi:, it.slot] += it.delta_g
        if hi <= lo:
            return
        tau = (t[lo:hi] - it.t0) / it.dur  # 0..1
        # the item leaves (or arrives) between 20 % and 60 % of the interaction
        ramp = np.clip((tau - 0.2) / 0.4, 0.0, 1.0)
        ramp = ramp * ramp * (3 - 2 * ramp)
        # the hand presses at the start of a pick, at the end of a put
        centre = 0.15 if it.delta_g < 0 else 0.75
        press = it.press_g * np.clip(1 - np.abs(tau - centre) / 0.15, 0.0, 1.0)
        jig_env = np.clip(1 - np.abs(tau - 0.5) / 0.35, 0.0, 1.0)
        jiggle = it.jiggle_g * jig_env * np.sin(2 * math.pi * it.jiggle_hz * it.dur * tau)
        hand = press + jiggle
        out[lo:hi, it.slot] += it.delta_g * ramp + hand
        # the board flexes while the load moves: neighbours feel the hand and the moving item, and
        # nothing once it is over (a permanent share would be a calibration matter, not a pick)
        flex = hand + 0.2 * abs(it.delta_g) * np.sin(math.pi * ramp)
        if it.slot > 0:
            out[lo:hi, it.slot - 1] += it.xtalk[0] * flex
        if it.slot + 1 < self.slot_count:
            out[lo:hi, it.slot + 1] += it.xtalk[1] * flex


def random_schedule(phys: ShelfPhysics, t_start: float, t_end: float, picks_per_hour: float = 60.0,
                    puts_per_hour: float = 10.0, knocks_per_hour: float = 30.0,
                    neighbour_pair_frac: float = 0.25, min_gap_s: float = 3.0) -> list[Truth]:
    """Script random shopper activity; picks on neighbouring slots sometimes start together."""
    r = phys.rng
    truths: list[Truth] = []
    busy_until = [t_start] * phys.slot_count
    span_h = (t_end - t_start) / 3600.0
    n_events = int(r.poisson((picks_per_hour + puts_per_hour) * span_h))
    starts = np.sort(r.uniform(t_start + 2.0, t_end - 10.0, n_events))
    p_put = puts_per_hour / max(1e-9, picks_per_hour + puts_per_hour)

    def one(t0: float, slot: int, put: bool) -> None:
        if t0 < busy_until[slot] + min_gap_s:
            return
        units = int(r.choice((1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3)))
        if put or phys.units[slot] < units:
            if phys.units[slot] <= 2 and not put:
                units = int(r.integers(5, 12))  # restock
            delta = units
        else:
            delta = -units
        tr = phys.interact(float(t0), slot, delta)
        busy_until[slot] = tr.t1
        truths.append(tr)

    for t0 in starts:
        slot = int(r.integers(0, phys.slot_count))
        put = bool(r.random() < p_put)
        one(float(t0), slot, put)
        if r.random() < neighbour_pair_frac and phys.slot_count > 1:
            nb = slot + 1 if slot + 1 < phys.slot_count else slot - 1
            one(float(t0 + r.uniform(-0.3, 0.3)), nb, False)
    for tk in r.uniform(t_start, t_end, int(r.poisson(knocks_per_hour * span_h))):
        phys.knock(float(tk))
    return truths

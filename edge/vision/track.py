"""Multi-object tracking on the floor plane, and zone enter/exit with dwell.

Tracks live in floor metres (constant-velocity Kalman filter per track) and are
matched to detections by the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) on gated distances. Two shoppers
passing close make one merged blob: when a blob is bigger than one person and
contains the predictions of several tracks, its pixels are split between those
tracks (k-means seeded at the predictions), so identities survive crossings.
A track that loses its detections (occlusion) coasts on its prediction with a
decaying velocity for ``max_coast_s`` before it is dropped. Ids are handed out
only when a track is confirmed, so they stay small and stable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from edge.events import TrackUpdate, ZoneEvent
from edge.vision.detect import Detection

__all__ = ["Track", "Tracker", "ZoneTracker"]

_BIG = 1e6


@dataclass(slots=True)
class Track:
    key: int  # internal key (tentative tracks have no public id yet)
    x: np.ndarray  # state [x, y, vx, vy]
    p: np.ndarray  # covariance 4x4
    t: float  # time of the state
    born: float
    birth_xy: tuple[float, float]
    id: int | None = None  # public id once confirmed
    hits: int = 1
    misses: int = 0
    last_seen: float = 0.0
    moved: float = 0.0  # max distance from where it was born
    history: list[bool] = field(default_factory=list)

    @property
    def confirmed(self) -> bool:
        return self.id is not None

    @property
    def pos(self) -> tuple[float, float]:
        return float(self.x[0]), float(self.x[1])


class Tracker:
    """Detections per frame in, confirmed tracks out."""

    def __init__(self, *, gate_m: float = 0.75, max_coast_s: float = 2.0, confirm_hits: int = 3,
                 accel_sigma: float = 2.5, meas_sigma_m: float = 0.05, merge_m: float = 0.3,
                 person_area_m2: float = 0.15, bounds: tuple[float, float, float, float] | None = None) -> None:
        self.gate_m = gate_m
        self.max_coast_s = max_coast_s
        self.confirm_hits = confirm_hits
        self.q = accel_sigma**2
        self.r = meas_sigma_m**2
        self.merge_m = merge_m
        self.person_area_m2 = person_area_m2
        self.bounds = bounds  # floor area seen by the camera; tracks predicted outside are dropped
        self.tracks: list[Track] = []
        self._next_key = 1
        self._next_id = 1
        self.splits = 0

    # -- Kalman ---------------------------------------------------------------
    def _predict(self, tr: Track, t: float) -> None:
        dt = t - tr.t
        if dt <= 0:
            return
        f = np.array([[1, 0, dt, 0], [0, 1, 0, dt], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64)
        dt2, dt3, dt4 = dt * dt, dt**3 / 2, dt**4 / 4
        q = self.q * np.array([[dt4, 0, dt3, 0], [0, dt4, 0, dt3], [dt3, 0, dt2, 0], [0, dt3, 0, dt2]])
        tr.x = f @ tr.x
        tr.p = f @ tr.p @ f.T + q
        if tr.misses:
            tr.x[2:] *= 0.85  # shoppers hidden by something tend to slow down, not fly off
        tr.t = t

    def _update(self, tr: Track, zx: float, zy: float) -> None:
        # H = [I 0]; small closed form keeps this cheap
        p = tr.p
        s = p[:2, :2] + np.eye(2) * self.r
        k = p[:, :2] @ np.linalg.inv(s)
        y = np.array([zx - tr.x[0], zy - tr.x[1]])
        tr.x = tr.x + k @ y
        tr.p = p - k @ p[:2, :]

    # -- association ----------------------------------------------------------
    def _merge_close(self, dets: list[Detection]) -> list[Detection]:
        """Fragments of one person (head apart from shoulders) closer than ``merge_m`` become one."""
        if len(dets) < 2:
            return dets
        out: list[Detection] = []
        used = [False] * len(dets)
        for i, a in enumerate(dets):
            if used[i]:
                continue
            group = [a]
            for j in range(i + 1, len(dets)):
                b = dets[j]
                if not used[j] and math.hypot(a.x - b.x, a.y - b.y) < self.merge_m and \
                        a.area_m2 + b.area_m2 < 1.4 * self.person_area_m2:
                    used[j] = True
                    group.append(b)
            if len(group) == 1:
                out.append(a)
            else:
                tot = sum(d.area_m2 for d in group)
                out.append(Detection(sum(d.x * d.area_m2 for d in group) / tot,
                                     sum(d.y * d.area_m2 for d in group) / tot, tot))
        return out

    def _split_merged(self, dets: list[Detection]) -> list[Detection]:
        """Split blobs that hold several predicted tracks between those tracks."""
        out: list[Detection] = []
        live = [tr for tr in self.tracks if tr.hits >= 2]
        for d in dets:
            if d.points is None or len(d.points) < 8 or not live:
                out.append(d)
                continue
            pts = d.points
            lo, hi = pts.min(axis=0) - 0.15, pts.max(axis=0) + 0.15
            inside = [tr for tr in live if lo[0] <= tr.x[0] <= hi[0] and lo[1] <= tr.x[1] <= hi[1]]
            k = min(len(inside), max(1, round(d.area_m2 / (0.8 * self.person_area_m2))))
            if len(inside) < 2 or k < 2:
                out.append(d)
                continue
            if len(inside) > k:
                inside.sort(key=lambda tr: -tr.hits)
                inside = inside[:k]
            centers = np.array([tr.x[:2] for tr in inside])
            for _ in range(5):
                d2 = ((pts[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
                lab = d2.argmin(axis=1)
                for c in range(len(centers)):
                    sel = pts[lab == c]
                    if len(sel):
                        centers[c] = sel.mean(axis=0)
            per_pt = d.area_m2 / len(pts)
            for c in range(len(centers)):
                n_c = int((lab == c).sum())
                if n_c:
                    out.append(Detection(float(centers[c, 0]), float(centers[c, 1]), n_c * per_pt))
            self.splits += 1
        return out

    def step(self, dets: list[Detection], t: float) -> list[Track]:
        """Advance to time ``t`` with this frame's detections; returns the confirmed tracks."""
        for tr in self.tracks:
            self._predict(tr, t)
        dets = self._merge_close(self._split_merged(dets))
        n_t, n_d = len(self.tracks), len(dets)
        matched_t: set[int] = set()
        matched_d: set[int] = set()
        if n_t and n_d:
            cost = np.full((n_t, n_d), _BIG)
            for i, tr in enumerate(self.tracks):
                coast = t - tr.last_seen
                gate = self.gate_m + min(1.0, 0.5 * coast)
                for j, d in enumerate(dets):
                    dist = math.hypot(tr.x[0] - d.x, tr.x[1] - d.y)
                    if dist <= gate:
                        # confirmed, long-lived tracks win ties against fresh ones
                        cost[i, j] = dist + (0.0 if tr.confirmed else 0.15)
            rows, cols = linear_sum_assignment(cost)
            for i, j in zip(rows, cols, strict=True):
                if cost[i, j] >= _BIG:
                    continue
                tr = self.tracks[i]
                self._update(tr, dets[j].x, dets[j].y)
                tr.hits += 1
                tr.misses = 0
                tr.last_seen = t
                tr.moved = max(tr.moved, math.hypot(tr.x[0] - tr.birth_xy[0], tr.x[1] - tr.birth_xy[1]))
                matched_t.add(i)
                matched_d.add(j)
        for i, tr in enumerate(self.tracks):
            if i not in matched_t:
                tr.misses += 1
        for j, d in enumerate(dets):
            if j in matched_d:
                continue
            # a second blob right next to a live track is a fragment of that person, not someone new
            if any(math.hypot(tr.x[0] - d.x, tr.x[1] - d.y) < 0.35 for tr in self.tracks):
                continue
            p = np.diag([self.r * 4, self.r * 4, 1.0, 1.0])
            self.tracks.append(Track(key=self._next_key, x=np.array([d.x, d.y, 0.0, 0.0]), p=p, t=t, born=t,
                                     birth_xy=(d.x, d.y), last_seen=t))
            self._next_key += 1
        keep: list[Track] = []
        for tr in self.tracks:
            if not tr.confirmed:
                if tr.misses >= 2:
                    continue
                if tr.hits >= self.confirm_hits:
                    tr.id = self._next_id
                    self._next_id += 1
            elif t - tr.last_seen > self.max_coast_s or self._outside(tr):
                continue
            keep.append(tr)
        self.tracks = keep
        return [tr for tr in self.tracks if tr.confirmed]

    def _outside(self, tr: Track) -> bool:
        if self.bounds is None or not tr.misses:
            return False
        x0, y0, x1, y1 = self.bounds
        return not (x0 - 0.2 <= tr.x[0] <= x1 + 0.2 and y0 - 0.2 <= tr.x[1] <= y1 + 0.2)


@dataclass(slots=True)
class _ZoneState:
    zone: str | None
    since: float
    cand: str | None
    cand_since: float


class ZoneTracker:
    """Zone per track with a short debounce; emits enter/exit (with dwell) and builds TrackUpdates."""

    def __init__(self, zone_of: Callable[[float, float], str | None], debounce_s: float = 0.0,
                 zones: dict[str, list[tuple[float, float]]] | None = None, hysteresis_m: float = 0.025) -> None:
        self.zone_of = zone_of
        self.debounce_s = debounce_s
        self.zones = zones or {}  # zone polygons, for spatial hysteresis at zone borders
        self.hysteresis_m = hysteresis_m
        self._state: dict[int, _ZoneState] = {}

    def _sticky(self, zone: str | None, x: float, y: float) -> bool:
        """Still within ``hysteresis_m`` of the current zone: do not flap on the border."""
        poly = self.zones.get(zone) if zone is not None else None
        if not poly or self.hysteresis_m <= 0:
            return False
        n = len(poly)
        for i in range(n):
            (ax, ay), (bx, by) = poly[i], poly[(i + 1) % n]
            dx, dy = bx - ax, by - ay
            ll = dx * dx + dy * dy
            u = 0.0 if ll == 0 else max(0.0, min(1.0, ((x - ax) * dx + (y - ay) * dy) / ll))
            if math.hypot(ax + u * dx - x, ay + u * dy - y) < self.hysteresis_m:
                return True
        return False

    def update(self, tracks: list[Track], t: float) -> tuple[list[TrackUpdate], list[ZoneEvent]]:
        updates: list[TrackUpdate] = []
        events: list[ZoneEvent] = []
        seen: set[int] = set()
        for tr in tracks:
            assert tr.id is not None
            tid = tr.id
            seen.add(tid)
            x, y = float(tr.x[0]), float(tr.x[1])
            z = self.zone_of(x, y)
            st = self._state.get(tid)
            if st is None:
                st = self._state[tid] = _ZoneState(z, t, z, t)
                if z is not None:
                    events.append(ZoneEvent(track=tid, zone=z, kind="enter", dwell=0.0, t=t))
            elif z != st.zone and self._sticky(st.zone, x, y):
                st.cand, st.cand_since = st.zone, t
            elif z != st.zone:
                if z != st.cand:
                    st.cand, st.cand_since = z, t
                if t - st.cand_since >= self.debounce_s:
                    if st.zone is not None:
                        events.append(ZoneEvent(track=tid, zone=st.zone, kind="exit", dwell=t - st.since, t=t))
                    st.zone, st.since = z, t
                    if z is not None:
                        events.append(ZoneEvent(track=tid, zone=z, kind="enter", dwell=0.0, t=t))
            else:
                st.cand, st.cand_since = z, t
            updates.append(TrackUpdate(track=tid, x=round(x, 3), y=round(y, 3), zone=st.zone,
                                       dwell=round(t - st.since, 2), t=t))
        for tid in [k for k in self._state if k not in seen]:
            st = self._state.pop(tid)
            if st.zone is not None:
                events.append(ZoneEvent(track=tid, zone=st.zone, kind="exit", dwell=t - st.since, t=t))
        return updates, events

    def close_all(self, t: float) -> list[ZoneEvent]:
        """Exit events for every track (the camera stopped)."""
        out = [ZoneEvent(track=tid, zone=st.zone, kind="exit", dwell=t - st.since, t=t)
               for tid, st in self._state.items() if st.zone is not None]
        self._state.clear()
        return out

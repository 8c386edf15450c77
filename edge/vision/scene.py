"""A synthetic ceiling-camera scene with exact ground truth.

Shoppers enter the store area, walk between shelves, stop in front of a shelf
for a few seconds (and usually pick one item there), pass close to and cross
each other, walk under a hanging sign that hides them, and leave. The frames
are rendered through a mildly tilted camera (a real perspective homography),
with slow lighting drift, sudden light-bank switches and sensor noise.

Library API (the tests, ``shelfcast bench vision`` and ``shelfcast demo``)::

    scene = SyntheticScene(layout, n_shoppers=5, seed=1, on_pick=callback)
    frame_bgr, truth = scene.step(1 / 15)     # truth.shoppers: floor x/y, zone, state
    scene.homography                           # exact image->floor homography

``on_pick(pick)`` is called (from whatever thread calls ``step``) when a
simulated shopper picks an item at a shelf, so a demo can make the matching
shelf controller report the pick; the same picks are in ``truth.picks``.
Shopper appearance is random colour blobs seen from above: nothing here (or in
the detector) looks at faces or identities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.config import LayoutSection, Shelf, point_in_polygon

__all__ = ["GroundTruth", "Pick", "ShopperTruth", "SyntheticScene", "aisle_layout"]

BODY_SEMI_AXES_M = (0.25, 0.15)  # shoulders across, chest-to-back
HEAD_RADIUS_M = 0.1
STAND_OFF_M = 0.55  # where a shopper stands in front of a shelf's position


@dataclass(frozen=True, slots=True)
class ShopperTruth:
    id: int
    x: float
    y: float
    zone: str | None
    state: str  # "walk" | "stop"
    visible: bool  # in view and not hidden by the hanging sign
    shelf: str | None = None  # the shelf being visited while stopped


@dataclass(frozen=True, slots=True)
class Pick:
    """A simulated shopper took one item from a shelf slot."""

    shopper: int
    shelf: str
    slot: int
    sku: str | None
    t: float
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class GroundTruth:
    t: float
    shoppers: tuple[ShopperTruth, ...]
    picks: tuple[Pick, ...]
    gain: float


def aisle_layout() -> LayoutSection:
    """The benchmark's store area: one 8 m x 4 m aisle, 14 shelves, three zones."""
    zones = [
        {"id": "produce", "polygon": [(-0.5, -0.5), (2.5, -0.5), (2.5, 4.5), (-0.5, 4.5)]},
        {"id": "dairy", "polygon": [(2.5, -0.5), (5.5, -0.5), (5.5, 4.5), (2.5, 4.5)]},
        {"id": "bakery", "polygon": [(5.5, -0.5), (8.5, -0.5), (8.5, 4.5), (5.5, 4.5)]},
    ]
    shelves = []
    for i, x in enumerate(range(1, 8)):
        zone = "produce" if x <= 2 else "dairy" if x <= 5 else "bakery"
        for side, y in (("s", 0.35), ("n", 3.65)):
            shelves.append({"id": f"{side}{i + 1}", "zone": zone, "position": (float(x), y), "reach_m": 1.2,
                            "slots": [{"slot": k, "sku": f"SKU-{side}{i + 1}-{k}"} for k in range(4)]})
    return LayoutSection.model_validate({"zones": zones, "shelves": shelves})


@dataclass
class _Shopper:
    id: int
    pos: np.ndarray
    speed: float
    color: tuple[int, int, int]
    hair: tuple[int, int, int]
    plan: list[str]  # shelf ids still to visit
    target: np.ndarray
    state: str = "walk"  # walk | stop | exit
    shelf: str | None = None
    stop_left: float = 0.0
    pick_at: list[float] = field(default_factory=list)  # stop_left values at which to pick
    heading: float = 0.0
    phase: float = 0.0
    gone: bool = False
    best_dist: float = 1e9  # closest it got to the current target, and since when (to notice a deadlock)
    best_at: float = 0.0


@dataclass
class _Bounds:
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2])


@dataclass
class SyntheticScene:
    """Rendered top-down frames of simulated shoppers, and what really happened."""

    layout: LayoutSection | None = None
    n_shoppers: int = 5
    seed: int = 0
    width: int = 640
    height: int = 480
    t0: float = 0.0
    noise_sigma: float = 3.0
    lighting: bool = True
    occluder: bool = True
    on_pick: Callable[[Pick], None] | None = None
    pick_probability: float = 0.85
    stop_s: tuple[float, float] = (3.0, 7.0)
    picks_per_stop: tuple[int, int] = (1, 1)  # (min, max) items taken at one shelf stop (when picking)
    start_at_shelves: bool = False  # the first shoppers start standing at shelves
    homography: np.ndarray = field(init=False)  # image px -> floor m (exact)

    def __post_init__(self) -> None:
        if self.layout is None or not (self.layout.zones or self.layout.shelves):
            self.layout = aisle_layout()
        self._rng = np.random.default_rng(self.seed)
        self._shelves: dict[str, Shelf] = {s.id: s for s in self.layout.shelves}
        self._bounds = self._floor_bounds()
        self._to_img, self.homography = self._camera()
        self._stand = {sid: self._stand_point(s) for sid, s in self._shelves.items()}
        self._sign = self._sign_rect()
        self._bg = self._render_background()
        self._noise = self._noise_frames()
        self._offset = np.full_like(self._bg, 12)
        self._canvas = np.empty_like(self._bg)
        self._frame = np.empty_like(self._bg)
        self.elapsed = 0.0
        self._next_id = 1
        self._shoppers: list[_Shopper] = []
        self._respawn_at: list[float] = []
        self._gain_step = 1.0
        self._next_switch = float(self._rng.uniform(15, 35))
        self._n_frames = 0
        for _ in range(self.n_shoppers):
            s = self._spawn(inside=True)
            self._shoppers.append(s)
            if self.start_at_shelves and s.shelf is not None:
                self._begin_stop(s)  # already shopping when the camera starts (a lively demo)

    # -- public ---------------------------------------------------------------
    @property
    def t(self) -> float:
        return self.t0 + self.elapsed

    @property
    def visitors(self) -> int:
        """Shoppers who have entered so far (including those at start)."""
        return self._next_id - 1

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        b = self._bounds
        return b.x0, b.y0, b.x1, b.y1

    def stand_point(self, shelf: str) -> tuple[float, float]:
        p = self._stand[shelf]
        return float(p[0]), float(p[1])

    def background(self) -> np.ndarray:
        """The empty scene (what a calibration snapshot of an empty store looks like)."""
        return self._bg.copy()

    def reference_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Floor points at tile corners and where they appear in the image (for calibration tests)."""
        b = self._bounds
        xs = np.linspace(b.x0 + 0.5, b.x1 - 0.5, 4)
        ys = np.linspace(b.y0 + 0.5, b.y1 - 0.5, 3)
        floor = np.array([(x, y) for x in xs for y in ys])
        img = cv2.perspectiveTransform(floor.reshape(-1, 1, 2), self._to_img).reshape(-1, 2)
        return img, floor

    def floor_to_image(self, pts: np.ndarray) -> np.ndarray:
        return cv2.perspectiveTransform(np.asarray(pts, np.float64).reshape(-1, 1, 2), self._to_img).reshape(-1, 2)

    def step(self, dt: float) -> tuple[np.ndarray, GroundTruth]:
        """Advance the simulation by ``dt`` seconds and render one frame (BGR, owned by the caller)."""
        self.elapsed += dt
        picks = self._move(dt)
        frame = self._render()
        truth = GroundTruth(t=self.t, shoppers=tuple(self._truth(s) for s in self._shoppers if not s.gone),
                            picks=tuple(picks), gain=self._gain())
        if self.on_pick is not None:
            for p in picks:
                self.on_pick(p)
        return frame, truth

    # -- geometry -------------------------------------------------------------
    def _floor_bounds(self) -> _Bounds:
        assert self.layout is not None
        pts = [p for z in self.layout.zones for p in z.polygon]
        pts += [s.position for s in self.layout.shelves]
        arr = np.array(pts, dtype=np.float64)
        x0, y0 = arr.min(axis=0)
        x1, y1 = arr.max(axis=0)
        if x1 - x0 < 2:
            x0, x1 = x0 - 1, x1 + 1
        if y1 - y0 < 2:
            y0, y1 = y0 - 1, y1 + 1
        return _Bounds(float(x0), float(y0), float(x1), float(y1))

    def _camera(self) -> tuple[np.ndarray, np.ndarray]:
        """Floor->image and image->floor for a slightly tilted ceiling camera over the area."""
        b = self._bounds
        w, h = self.width, self.height
        fw, fh = b.x1 - b.x0, b.y1 - b.y0
        scale = min(w * 0.94 / fw, h * 0.94 / fh)
        cx, cy = w / 2, h / 2
        hw, hh = fw * scale / 2, fh * scale / 2
        k = 0.05 * hw  # keystone: the far edge looks a little narrower
        floor = np.array([[b.x0, b.y0], [b.x1, b.y0], [b.x1, b.y1], [b.x0, b.y1]], dtype=np.float32)
        img = np.array([[cx - hw, cy + hh], [cx + hw, cy + hh], [cx + hw - k, cy - hh], [cx - hw + k, cy - hh]],
                       dtype=np.float32)
        to_img = cv2.getPerspectiveTransform(floor, img).astype(np.float64)
        return to_img, np.linalg.inv(to_img)

    def _normal(self, s: Shelf) -> np.ndarray:
        """Unit vector from the shelf into the floor: toward its zone's middle (else off the nearest edge)."""
        assert self.layout is not None
        b, (x, y) = self._bounds, s.position
        zone = next((z for z in self.layout.zones if z.id == s.zone), None)
        if zone is not None:
            c = np.asarray(zone.polygon, dtype=np.float64).mean(axis=0)
            dx, dy = float(c[0] - x), float(c[1] - y)
            if abs(dx) > 1e-6 or abs(dy) > 1e-6:
                return np.array([math.copysign(1.0, dx), 0.0]) if abs(dx) > abs(dy) else \
                    np.array([0.0, math.copysign(1.0, dy)])
        edges = [(x - b.x0, (1.0, 0.0)), (b.x1 - x, (-1.0, 0.0)), (y - b.y0, (0.0, 1.0)), (b.y1 - y, (0.0, -1.0))]
        return np.array(min(edges, key=lambda e: e[0])[1])

    def _stand_point(self, s: Shelf) -> np.ndarray:
        return np.asarray(s.position, dtype=np.float64) + STAND_OFF_M * self._normal(s)

    def _sign_rect(self) -> np.ndarray | None:
        if not self.occluder:
            return None
        c = self._bounds.center + np.array([0.3, 0.1])
        return np.array([[c[0] - 0.5, c[1] - 0.3], [c[0] + 0.5, c[1] - 0.3],
                         [c[0] + 0.5, c[1] + 0.3], [c[0] - 0.5, c[1] + 0.3]])

    def _poly(self, floor_pts: np.ndarray) -> np.ndarray:
        return np.round(self.floor_to_image(floor_pts)).astype(np.int32)

    # -- rendering ------------------------------------------------------------
    def _render_background(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 1000)
        bg = np.full((self.height, self.width, 3), (168, 172, 170), np.uint8)
        tex = cv2.resize(rng.normal(0, 6, (self.height // 16, self.width // 16)).astype(np.float32),
                         (self.width, self.height), interpolation=cv2.INTER_CUBIC)
        bg = np.clip(bg.astype(np.float32) + tex[..., None], 0, 255).astype(np.uint8)
        b = self._bounds
        for x in np.arange(math.floor(b.x0), b.x1 + 1, 0.6):
            p = self._poly(np.array([[x, b.y0 - 1], [x, b.y1 + 1]]))
            cv2.line(bg, tuple(p[0]), tuple(p[1]), (150, 155, 152), 1, cv2.LINE_AA)
        for y in np.arange(math.floor(b.y0), b.y1 + 1, 0.6):
            p = self._poly(np.array([[b.x0 - 1, y], [b.x1 + 1, y]]))
            cv2.line(bg, tuple(p[0]), tuple(p[1]), (150, 155, 152), 1, cv2.LINE_AA)
        for s in self._shelves.values():
            n = self._normal(s)
            tang = np.array([-n[1], n[0]])
            p = np.asarray(s.position)
            corners = np.array([p + 0.45 * tang, p - 0.45 * tang, p - 0.45 * tang - 0.45 * n,
                                p + 0.45 * tang - 0.45 * n])
            cv2.fillPoly(bg, [self._poly(corners)], (60, 90, 120), cv2.LINE_AA)
            cv2.polylines(bg, [self._poly(corners)], True, (40, 60, 80), 1, cv2.LINE_AA)
        return bg

    def _noise_frames(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed + 2000)
        out = []
        for _ in range(6):
            n = rng.normal(12.0, self.noise_sigma, self._bg.shape)
            out.append(np.clip(n, 0, 24).astype(np.uint8))
        return out

    def _gain(self) -> float:
        if not self.lighting:
            return 1.0
        return self._gain_step * (1.0 + 0.08 * math.sin(2 * math.pi * self.elapsed / 37.0))

    def _render(self) -> np.ndarray:
        np.copyto(self._canvas, self._bg)
        alive = [s for s in self._shoppers if not s.gone]
        if alive:
            ang = np.linspace(0, 2 * np.pi, 20, endpoint=False)
            ca, sa = np.cos(ang), np.sin(ang)
            polys = []
            for s in alive:
                h = s.heading
                ax, ay = BODY_SEMI_AXES_M
                # shoulders across the walking direction
                ux, uy = -math.sin(h), math.cos(h)
                vx, vy = math.cos(h), math.sin(h)
                body = np.stack([s.pos[0] + ax * ca * ux + ay * sa * vx, s.pos[1] + ax * ca * uy + ay * sa * vy], 1)
                head = np.stack([s.pos[0] + HEAD_RADIUS_M * ca, s.pos[1] + HEAD_RADIUS_M * sa], 1)
                polys.append(body)
                polys.append(head)
            img = np.round(self.floor_to_image(np.concatenate(polys))).astype(np.int32).reshape(-1, 20, 2)
            for i, s in enumerate(alive):
                cv2.fillPoly(self._canvas, [img[2 * i]], s.color, cv2.LINE_AA)
                cv2.fillPoly(self._canvas, [img[2 * i + 1]], s.hair, cv2.LINE_AA)
        if self._sign is not None:
            cv2.fillPoly(self._canvas, [self._poly(self._sign)], (40, 200, 230), cv2.LINE_AA)
        g = self._gain()
        cv2.convertScaleAbs(self._canvas, self._frame, alpha=g)
        self._n_frames += 1
        if self.noise_sigma > 0:
            noise = self._noise[int(self._rng.integers(len(self._noise)))]
            cv2.add(self._frame, noise, self._frame)
            cv2.subtract(self._frame, self._offset, self._frame)
        return self._frame.copy()

    # -- simulation -----------------------------------------------------------
    def _zone(self, x: float, y: float) -> str | None:
        assert self.layout is not None
        for z in self.layout.zones:
            if point_in_polygon(x, y, z.polygon):
                return z.id
        return None

    def _visible(self, s: _Shopper) -> bool:
        b = self._bounds
        x, y = s.pos
        if not (b.x0 - 0.1 <= x <= b.x1 + 0.1 and b.y0 - 0.1 <= y <= b.y1 + 0.1):
            return False
        if self._sign is not None:
            (sx0, sy0), (sx1, sy1) = self._sign[0], self._sign[2]
            if sx0 + 0.12 <= x <= sx1 - 0.12 and sy0 + 0.1 <= y <= sy1 - 0.1:
                return False
        return True

    def _truth(self, s: _Shopper) -> ShopperTruth:
        x, y = float(s.pos[0]), float(s.pos[1])
        return ShopperTruth(id=s.id, x=x, y=y, zone=self._zone(x, y), state="stop" if s.state == "stop" else "walk",
                            visible=self._visible(s), shelf=s.shelf if s.state == "stop" else None)

    def _entrance(self) -> np.ndarray:
        b = self._bounds
        return np.array([b.x0 - 0.6, (b.y0 + b.y1) / 2 + float(self._rng.uniform(-0.9, 0.9))])

    def _color(self) -> tuple[int, int, int]:
        # clothes seen from above: dark or saturated, so they stand out from a light floor
        while True:
            c = self._rng.integers(10, 200, 3)
            lum = 0.114 * c[0] + 0.587 * c[1] + 0.299 * c[2]
            if lum < 100:
                return int(c[0]), int(c[1]), int(c[2])

    def _spawn(self, inside: bool) -> _Shopper:
        sid = self._next_id
        self._next_id += 1
        shelves = list(self._shelves)
        n_visits = int(self._rng.integers(2, 6))
        plan = [shelves[int(i)] for i in self._rng.integers(0, len(shelves), n_visits)] if shelves else []
        if inside:
            b = self._bounds
            for _ in range(50):
                pos = np.array([self._rng.uniform(b.x0 + 0.8, b.x1 - 0.8), self._rng.uniform(b.y0 + 1.0, b.y1 - 1.0)])
                if all(np.linalg.norm(pos - o.pos) > 1.0 for o in self._shoppers):
                    break
        else:
            pos = self._entrance()
        hair = int(self._rng.integers(15, 60))
        s = _Shopper(id=sid, pos=pos, speed=float(self._rng.uniform(0.8, 1.3)), color=self._color(),
                     hair=(hair, hair, hair + 5), plan=plan, target=pos.copy(), phase=float(self._rng.uniform(0, 6)))
        self._next_target(s)
        return s

    def _occupied(self, shelf: str, me: _Shopper) -> bool:
        p = self._stand[shelf]
        for o in self._shoppers:
            if o is me or o.gone:
                continue
            if o.shelf == shelf or np.linalg.norm(o.target - p) < 0.6:
                return True
        return False

    def _next_target(self, s: _Shopper) -> None:
        s.best_dist, s.best_at = 1e9, self.elapsed
        while s.plan:
            shelf = s.plan.pop(0)
            if self._occupied(shelf, s):
                free = [k for k in self._shelves if not self._occupied(k, s)]
                if not free:
                    continue
                shelf = free[int(self._rng.integers(len(free)))]
            s.shelf = shelf
            s.target = self._stand[shelf].copy()
            s.state = "walk"
            return
        s.shelf = None
        s.state = "exit"
        s.target = self._entrance()

    def _begin_stop(self, s: _Shopper) -> None:
        s.state = "stop"
        s.pos = s.target.copy()
        s.stop_left = float(self._rng.uniform(*self.stop_s))
        s.pick_at = []
        if self._rng.random() < self.pick_probability:
            lo, hi = self.picks_per_stop
            n = lo if lo >= hi else int(self._rng.integers(lo, hi + 1))
            s.pick_at = sorted((float(self._rng.uniform(0.8, max(0.9, s.stop_left - 1.0))) for _ in range(n)),
                               reverse=True)

    def _keep_off_shelves(self, s: _Shopper) -> None:
        """Nobody walks through a shelf: walk at least 0.45 m in front of every shelf face."""
        for sh in self._shelves.values():
            n = self._normal(sh)
            rel = s.pos - np.asarray(sh.position)
            along = rel[0] * -n[1] + rel[1] * n[0]
            depth = rel[0] * n[0] + rel[1] * n[1]
            if abs(along) < 0.7 and -0.5 < depth < 0.45:
                s.pos = s.pos + n * (0.45 - depth)

    def _move(self, dt: float) -> list[Pick]:
        picks: list[Pick] = []
        b = self._bounds
        for s in self._shoppers:
            if s.gone:
                continue
            if s.state == "stop":
                s.stop_left -= dt
                while s.pick_at and s.stop_left <= s.pick_at[0]:
                    s.pick_at.pop(0)
                    shelf = self._shelves[s.shelf] if s.shelf else None
                    if shelf is not None:
                        slot = shelf.slots[int(self._rng.integers(len(shelf.slots)))] if shelf.slots else None
                        picks.append(Pick(shopper=s.id, shelf=shelf.id, slot=slot.slot if slot else 0,
                                          sku=slot.sku if slot else None, t=self.t,
                                          x=float(s.pos[0]), y=float(s.pos[1])))
                if s.stop_left <= 0:
                    s.shelf = None
                    self._next_target(s)
                continue
            d = s.target - s.pos
            dist = float(np.hypot(*d))
            if dist < s.best_dist - 0.1:
                s.best_dist, s.best_at = dist, self.elapsed
            elif self.elapsed - s.best_at > 2.0 and s.state == "walk":
                # blocked by people standing in the way: go somewhere else, as people do
                s.best_dist, s.best_at = 1e9, self.elapsed
                s.shelf = None
                self._next_target(s)
                continue
            if dist < 0.06:
                if s.state == "exit":
                    s.gone = True
                    self._respawn_at.append(self.elapsed + float(self._rng.uniform(0.5, 4.0)))
                    continue
                self._begin_stop(s)
                continue
            v = d / dist * min(s.speed, dist / dt)
            # keep some personal space: walkers step aside for anyone close
            for o in self._shoppers:
                if o is s or o.gone:
                    continue
                off = s.pos - o.pos
                r = float(np.hypot(*off))
                if 1e-6 < r < 0.8:
                    v = v + off / r * (0.8 - r) * 3.5
            s.phase += dt * 2 * math.pi * 0.9
            sway = 0.04 * math.cos(s.phase)
            s.heading = math.atan2(v[1], v[0]) if np.hypot(*v) > 0.05 else s.heading
            s.pos = s.pos + v * dt + np.array([-math.sin(s.heading), math.cos(s.heading)]) * sway * dt
            if s.state != "exit":
                s.pos[0] = min(max(s.pos[0], b.x0 - 0.7), b.x1 - 0.3)
                s.pos[1] = min(max(s.pos[1], b.y0 + 0.3), b.y1 - 0.3)
            self._keep_off_shelves(s)
        self._shoppers = [s for s in self._shoppers if not s.gone]
        due = [r for r in self._respawn_at if r <= self.elapsed]
        if due:
            self._respawn_at = [r for r in self._respawn_at if r > self.elapsed]
            for _ in due:
                self._shoppers.append(self._spawn(inside=False))
        # switching a bank of lights on or off: a sudden global brightness step
        if self.lighting and self.elapsed >= self._next_switch:
            self._gain_step = 0.85 if self._gain_step == 1.0 else 1.0
            self._next_switch = self.elapsed + float(self._rng.uniform(20, 45))
        return picks

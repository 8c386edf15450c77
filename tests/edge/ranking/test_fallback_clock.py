"""The zone × hour popularity (what idle and cold-start screens show) decays with elapsed time, not with the wall
clock: NTP stepping a Pi's clock (booted at fake-hwclock's last-shutdown time, or an RTC that runs ahead) neither
wipes what the node learned nor freezes it.

Before: the decay ran on the picks' event (wall) stamps, so a step forward of a month multiplied every sku's count
by 0.5 ** (30 / 7) = 0.05 at its next pick (and a step to the real date from 1970: by 0), while a step back left
the stamps in the "future" and nothing decayed until the wall clock caught up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.bus import Bus
from edge.ranking.fallback import PopularityRanker

DAY = 86400.0
T0 = 1_800_000_000.0  # 2027-01-15, the real date once NTP has synced


def items() -> list[tuple[str, float, str | None]]:
    return [("milk", 1000, "dairy"), ("eggs", 500, "dairy"), ("cola", 800, "drinks")]


def live(r: PopularityRanker, zone: str, hour: int) -> dict[str, float]:
    return {sku: c[0] for sku, c in r._live[(zone, hour)].items()}


def test_a_step_forward_does_not_wipe_what_was_learned() -> None:
    """A node booted with the clock a month behind (powered off for a month): picks, then NTP steps forward.
    No real time passed (the real monotonic clock, the ranker's default): nothing may decay."""
    r = PopularityRanker(items())
    before = T0 - 30 * DAY
    for i in range(20):
        r.observe("milk", "dairy", 9, before + i)
    for i in range(5):
        r.observe("eggs", "dairy", 9, before + 20 + i)
    r.observe("milk", "dairy", 9, T0)  # the first pick after the step
    assert live(r, "dairy", 9) == pytest.approx({"milk": 21.0, "eggs": 5.0})
    top = r.top("dairy", 9, 2)
    assert [i.sku for i in top] == ["milk", "eggs"], top  # before: eggs first (milk's 20 picks decayed to 1)
    ref = PopularityRanker(items())  # the same picks on a clock that never stepped
    for i in range(20):
        ref.observe("milk", "dairy", 9, T0 + i)
    for i in range(5):
        ref.observe("eggs", "dairy", 9, T0 + 20 + i)
    ref.observe("milk", "dairy", 9, T0 + 30)
    assert [i.sku for i in top] == [i.sku for i in ref.top("dairy", 9, 2)]
    assert [i.score for i in top] == pytest.approx([i.score for i in ref.top("dairy", 9, 2)])


@pytest.mark.parametrize("step_days", [-30.0, -1.0, 1.0, 365.0])
def test_decay_follows_elapsed_time_whatever_the_wall_clock_does(step_days: float, fake_clock: Any) -> None:
    fc = fake_clock(T0)
    clock = fc.clock()
    r = PopularityRanker(items(), half_life_s=7 * DAY, mono=clock.mono)
    for _ in range(20):
        r.observe("milk", "dairy", 9, clock.wall())
    fc.step(step_days * DAY)  # NTP corrects the clock
    fc.elapse(7 * DAY)  # one half-life really passes
    r.observe("milk", "dairy", 9, clock.wall())
    assert live(r, "dairy", 9)["milk"] == pytest.approx(20 * 0.5 + 1)  # before: frozen at 21 after a step back
    fc.elapse(7 * DAY)
    r.observe("milk", "dairy", 9, clock.wall())
    assert live(r, "dairy", 9)["milk"] == pytest.approx(11 * 0.5 + 1)


def test_picks_within_a_minute_do_not_decay_each_other(fake_clock: Any) -> None:
    """Decay is applied once at least DECAY_GRAIN_S passed (the time is not lost: the stamp stays until then), so
    the same picks give the same counts however fast the node applies them."""
    fc = fake_clock(T0)
    clock = fc.clock()
    r = PopularityRanker(items(), mono=clock.mono)
    for _ in range(30):
        r.observe("milk", "dairy", 9, clock.wall())
        fc.elapse(1.0)
    assert live(r, "dairy", 9)["milk"] == 30.0
    fc.elapse(7 * DAY - 30.0)  # a half-life after the first pick
    r.observe("milk", "dairy", 9, clock.wall())
    assert live(r, "dairy", 9)["milk"] == pytest.approx(30 * 0.5 + 1, rel=1e-4)


def test_the_recommend_room_keeps_the_zones_popular_items_over_a_clock_step(tmp_path: Path, fake_clock: Any) -> None:
    """The room's path: picks stamped by a wall clock that NTP steps a month forward, fed to the fallback, the
    idle dairy screen's set after the step (real SQLite, the bundled demo store and catalogue)."""
    from importlib import resources

    from edge.app import bundled_catalogue
    from edge.config import NodeConfig, parse_config
    from edge.recommend import Recommender
    from edge.store import Store

    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp_path)
    raw["node"]["timezone"] = "UTC"
    raw["signage"]["promotions"] = []  # an idle screen's set is then the fallback's zone × hour popularity
    config = NodeConfig.model_validate(raw)
    shelf = next(s for s in config.layout.shelves if s.zone == "dairy")
    screen = next(s.id for s in config.layout.screens if s.zone == "dairy" and s.kind != "shelf_display")
    fc = fake_clock(T0 - 30 * DAY)
    clock = fc.clock()
    with Store(tmp_path / "sc.db", flush_interval_ms=5) as store:
        store.upsert_products(bundled_catalogue()).result(5)
        rec = Recommender(config, store, Bus(), clock=clock)
        idle = [i.sku for i in rec.recommend(None, screen, "dairy").items]
        # shoppers pick the least popular dairy items, a lot: they become the idle screen's first items
        dairy = [sl.sku for s in config.layout.shelves if s.zone == "dairy" for sl in s.slots if sl.sku]
        learned = [s for s in dairy if s not in idle][:2]
        assert len(learned) == 2, (dairy, idle)

        def pick(sku: str, n: int) -> None:
            for _ in range(n):
                rec._observations.append((sku, "dairy", clock.wall(), 1))
            rec.apply_observations()

        pick(learned[0], 40)
        pick(learned[1], 30)
        hour = int((clock.wall() % DAY) // 3600)
        before = [i.sku for i in rec.recommend(None, screen, "dairy").items]
        assert before[0] == learned[0], (before, learned)  # the picks show through
        fc.elapse(60.0)
        fc.step(30 * DAY)  # NTP syncs: a month forward, at the same time of day
        assert int((clock.wall() % DAY) // 3600) == hour
        pick(learned[0], 1)  # one more pick of the first after the step
        after: Any = [i.sku for i in rec.recommend(None, screen, "dairy").items]
        assert after == before, f"the step changed the idle screen's set: {after} (before {before}, {shelf.id})"
        counts = {sku: c[0] for sku, c in rec.fallback._live[("dairy", hour)].items()}
        assert counts[learned[0]] == pytest.approx(41.0) and counts[learned[1]] == pytest.approx(30.0), counts

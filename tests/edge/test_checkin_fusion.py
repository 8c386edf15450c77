"""Check-ins with the camera on (fusion, the recommender and a real store on one bus, the demo layout; event times
given, so no test waits): the shopper is bound at the screen with nobody tracked near it, keeps their visit when
they walk into view, and their picks keep the customer; two shoppers at one screen, an ended visit.

Old code: the recommender never bound a check-in that named no visit; a second check-in at a screen relinked the
first shopper's visit to the second customer; a shopper walking into view after checking in got a new, anonymous
visit, so their picks lost the customer."""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from pathlib import Path

from edge.app import bundled_catalogue, load_model_scorer
from edge.bus import Bus
from edge.config import NodeConfig, parse_config
from edge.events import CheckIn, ShelfEvent, ShopperEvent, TrackUpdate
from edge.fusion import Fusion, hash_customer
from edge.recommend import Recommender
from edge.store import Profile, Store

SALT = "acme-checkin-salt-5d1e8f0a9b7c3e21"
A, B = hash_customer("CARD-A", SALT), hash_customer("CARD-B", SALT)
SCREEN = (12.0, 4.6)  # dairy-screen
PERSONAL = {"you buy this often", "bought before", "picked for you"}


def _config(tmp: Path) -> NodeConfig:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp)
    raw["fusion"]["customer_salt"] = SALT
    return NodeConfig.model_validate(raw)


def _stand(f: Fusion, track: int, x: float, y: float, t: float, secs: float, zone: str = "dairy") -> float:
    for _ in range(int(secs * 15)):
        f.on_track(TrackUpdate(track=track, x=x, y=y, zone=zone, t=t))
        t += 1 / 15
    return t


def test_camera_on_check_ins_bind_at_the_screen_and_follow_the_shopper_into_view(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    t0 = time.time()
    picks: list[ShopperEvent] = []

    async def run() -> None:
        store = Store(tmp_path / "shelfcast.db").open()
        store.upsert_products(bundled_catalogue())
        store.upsert_profiles([Profile(A, {}, tuple((s, t0 - 86400.0 * i, 2.0) for i, s in enumerate(
            ["1029743", "995242", "1106523", "840361", "1126899"] * 3)), 5, t0),
            Profile(B, {}, tuple((s, t0 - 86400.0 * i, 2.0) for i, s in enumerate(
                ["883404", "826249", "951590", "5569230", "1053690"] * 3)), 5, t0)]).result()
        bus = Bus()
        rec = Recommender(cfg, store, bus, model=load_model_scorer(cfg, store))
        fusion = Fusion(cfg, bus.publish, bus=bus)
        rec.locator = fusion  # as the node wires it with a camera
        fusion.camera_ok = True
        bus.subscribe(ShopperEvent, picks.append)
        await rec.start()
        await fusion.start()
        try:
            t = _stand(fusion, 1, 3.0, 1.0, t0, 1.0, zone="produce")  # someone far away, in produce
            ev = CheckIn(customer=A, screen="dairy-screen", t=t)
            bus.publish(ev)
            v = rec.serving("dairy-screen")
            assert v is not None and v.customer == A, "the screen's visit never got the customer"
            a = v.session
            assert fusion.session(a).customer == A  # type: ignore[union-attr]
            rs = rec.refresh("dairy-screen")
            assert rs.session == a and {i.reason for i in rs.items} & PERSONAL, rs

            ev_b = CheckIn(customer=B, screen="dairy-screen", t=t + 1)
            bus.publish(ev_b)
            v = rec.serving("dairy-screen")
            assert v is not None and v.customer == B, "the screen does not serve the second shopper"
            b = v.session
            assert b != a, "the second shopper took over the first one's visit"
            assert fusion.session(a).customer == A and rec.visits[a].customer == A  # type: ignore[union-attr]

            # B walks into the camera's view 1.2 m from the screen: the new track takes B's visit
            t = _stand(fusion, 7, 12.5, 3.5, t + 5, 0.5)
            assert fusion.session(b).track == 7, fusion.session(b)  # type: ignore[union-attr]
            # ... goes to the dairy-2 shelf and picks: the pick is B's, with B's history
            t = _stand(fusion, 7, 13.5, 1.0, t, 2.0)
            fusion.on_shelf_event(ShelfEvent(shelf="dairy-2", slot=0, sku=None, delta_units=-1, t=t))
            assert picks and picks[-1].session == b and picks[-1].attributed, picks
            assert rec.visits[b].customer == B and rec.visits[b].picked == ["840361"]

            # a new track near the screen long after A checked in is somebody else
            _stand(fusion, 9, 12.2, 4.0, t + 40, 0.5)
            assert fusion.session(a).track is None  # type: ignore[union-attr]

            # A's visit ends; a check-in naming it opens a new visit at the screen, the ended one stays ended
            fusion.expire(t + 1000)
            ended = fusion.session(a)
            assert ended is not None and ended.ended is not None
            ev_a = CheckIn(customer=A, session=a, screen="dairy-screen", t=t + 1000)
            bus.publish(ev_a)
            v = rec.serving("dairy-screen")
            again = v.session if v is not None else None
            assert again not in (None, a, b) and v is not None and v.customer == A, again
            assert rec.check_in_session(ev_a.id) == again
            assert fusion.session(a).ended == ended.ended  # type: ignore[union-attr]
            assert fusion.session(again).customer == A  # type: ignore[union-attr]
        finally:
            await fusion.stop()
            await rec.stop()
            store.close()

    asyncio.run(run())

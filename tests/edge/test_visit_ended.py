"""A check-in naming a visit that has ended, without a screen, is refused through the real endpoint
(``POST /api/checkin`` on a real ``edge.app.Node`` in this process, the demo layout, camera off, real SQLite):
410 naming the fix (check in again at the screen), nothing bound, stored or sent up. With a screen it still opens a
new visit there; a visit id this node has never seen is still taken as the caller's own.

Old code: the check-in opened a new visit placed nowhere a screen looks (no screen named), bound the customer to it,
stored and queued the check-in, and answered 200 with the ended visit's id."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from edge.fusion import hash_customer

SALT = "acme-visit-salt-0f3a9c1e7d5b2468"  # the salt visit_config sets (tests/conftest.py VISIT_SALT)
TOKEN = "tok-visit-ended-0123456789abcdef"


def test_a_check_in_naming_an_ended_visit_without_a_screen_is_refused(tmp_path: Path, visit_config: Any,
                                                                       checkin_node: Any, stored_checkins: Any) -> None:
    cfg = visit_config(tmp_path, signage={"host": "127.0.0.1", "port": 0, "admin_token": TOKEN}, session_idle_s=1.0)

    async def main() -> dict[str, Any]:
        async with checkin_node(cfg, TOKEN) as (node, check_in):
            status, first = await check_in({"customer": "CARD-A", "screen": "dairy-screen"})
            assert status == 200 and first["session"], first
            a = first["session"]
            await asyncio.sleep(1.2)  # fusion.session_idle_s is 1 s: the visit ends
            node.fusion.expire()
            node.housekeep_once()
            assert node.fusion.session(a).ended is not None and a not in node.recommender.visits
            visits = {s.id for s in node.fusion.active_sessions()}

            status, refused = await check_in({"customer": "CARD-A", "session": a})
            assert status == 410, (status, refused)
            err = refused["error"]
            assert a in err and "ended" in err and '"screen"' in err and "dairy-screen" in err, err
            assert "CARD-A" not in json.dumps(refused)
            # nothing was bound: no new visit in fusion, none in the recommender, the ended one stays ended
            assert {s.id for s in node.fusion.active_sessions()} == visits
            assert not [v for v in node.recommender.visits.values() if v.customer is not None]
            assert node.fusion.health()["check_ins_refused"] == 1

            # the fix the answer names: the same check-in at the screen opens a new visit there
            status, again = await check_in({"customer": "CARD-A", "session": a, "screen": "dairy-screen"})
            assert status == 200 and again["session"] not in (None, a), again
            served = node.recommender.serving("dairy-screen")
            assert served is not None and served.session == again["session"] and served.customer

            # a visit id this node has never seen is the caller's own (an app's): still bound
            status, own = await check_in({"customer": "CARD-B", "session": "app-visit-7"})
            assert status == 200 and own["session"] == "app-visit-7", own
            return {"a": a, "again": again["session"]}

    ids = asyncio.run(main())
    stored = stored_checkins(cfg)
    h = hash_customer("CARD-A", SALT)
    assert stored == [(ids["a"], h), (ids["again"], h), ("app-visit-7", hash_customer("CARD-B", SALT))], \
        "the refused check-in was stored (and queued upstream)"

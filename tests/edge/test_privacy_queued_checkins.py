"""Check-ins already in the outbox with a reversible hash never leave the node.

Since 0.3.0 a node on the public demo salt with a cloud link refuses raw-id check-ins (409), but check-ins queued
before (by 0.3.0 and older, which also queued demo-salt hashes with a cloud link and customer keys it had not
checked) or by a run on the demo salt without a cloud link (a check-in works there; its hash is meant to stay on
the node) went up as soon as the node had a cloud link. At open the node removes them from the outbox, counts them
(``/api/health`` ``rooms.store.outbox_checkins_dropped``) and logs it once; a retailer-salt node's queued check-ins
still go up.

Real ``shelfcast run`` processes on one data dir, a real SQLite database, a real Mosquitto, ``POST /api/checkin``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from edge.config import DEMO_CUSTOMER_SALT
from edge.events import CheckIn, ShopperEvent
from edge.fusion import hash_customer
from edge.store import Store

TOKEN = "tok-queued-checkins-0123456789ab"
RETAILER_SALT = "the-retailers-salt-9f1c2e7a5b3d"
EVENTS = "shelfcast/v1/s1/n1/events"


def _queued_checkins(db: Path) -> list[str]:
    """The customer keys of the check-ins in the outbox (read with plain sqlite3 after the node stopped)."""
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT payload FROM outbox ORDER BY seq").fetchall()
    return [p["customer"] for (raw,) in rows if (p := json.loads(raw))["type"] == "checkin"]


def _wait_up(spy: Any, needle: bytes, timeout: float = 30.0) -> bytes:
    """All the events traffic once ``needle`` has arrived on the events topic (asserted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up = b"\n".join(d for t, d in spy.messages() if t == EVENTS)
        if needle in up:
            return up
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} did not go up in {timeout:.0f} s")


def test_checkins_queued_by_the_old_node_never_leave_after_the_upgrade(tmp_path: Path, mosquitto: Any,
                                                                        node_process: Any, admin_node_yaml: Any,
                                                                        mqtt_spy: Any, free_port: Any,
                                                                        admin_http: Any) -> None:
    # the database as 0.3.0 left it: its node opened the store without a salt state and queued through
    # Store.append_event (the recommender's and fusion's path, unchanged), its fusion took `hash + "\n"` too
    (tmp_path / "data").mkdir()
    demo = hash_customer("LOYALTY-1000001", DEMO_CUSTOMER_SALT)
    newline = hash_customer("LOYALTY-1000002", DEMO_CUSTOMER_SALT) + "\n"
    checkins = [CheckIn(customer=demo, session="visit-old-1", screen="dairy-screen"),
                CheckIn(customer=newline, session="visit-old-2")]
    pick = ShopperEvent(session="visit-old-1", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0)
    with Store(tmp_path / "data" / "shelfcast.db", flush_interval_ms=5) as old:
        for ev in (*checkins, pick):  # the pick last: once it is up, everything queued before it went or was dropped
            old.append_event(ev, upstream=EVENTS).result(5)
    assert _queued_checkins(tmp_path / "data" / "shelfcast.db") == [demo, newline]

    port = free_port()
    spy = mqtt_spy(mosquitto.port)
    p = node_process.start(admin_node_yaml(tmp_path, port=port, cloud=mosquitto.url, token=TOKEN,
                                           salt=RETAILER_SALT))
    try:
        out = node_process.wait_running(p)
        up = _wait_up(spy, pick.id.encode())
        status, health = admin_http(port, "/api/health", token=TOKEN)
    finally:
        out += node_process.stop(p)
    for ev in checkins:
        assert ev.id.encode() not in up and ev.customer.strip().encode() not in up, "a queued check-in went up"
    assert status == 200 and json.loads(health)["rooms"]["store"]["outbox_checkins_dropped"] == 2, health
    said = [ln for ln in out.splitlines() if "check-in" in ln and "removed" in ln]
    assert len(said) == 1 and "WARNING" in said[0] and "removed 2 check-in(s)" in said[0], out
    assert "earlier ShelfCast" in said[0] and demo not in out
    assert _queued_checkins(tmp_path / "data" / "shelfcast.db") == []
    with sqlite3.connect(tmp_path / "data" / "shelfcast.db") as c:  # the node's own record stays (retention)
        assert c.execute("SELECT count(*) FROM events WHERE type='checkin'").fetchone()[0] == 2


def test_demo_salt_checkins_stay_on_the_node_and_a_retailer_salt_one_goes_up(tmp_path: Path, mosquitto: Any,
                                                                             node_process: Any, admin_node_yaml: Any,
                                                                             mqtt_spy: Any, free_port: Any,
                                                                             admin_http: Any) -> None:
    db = tmp_path / "data" / "shelfcast.db"
    port = free_port()
    dead = f"mqtt://127.0.0.1:{free_port()}"  # a cloud link that is down: the check-in stays queued

    def run(cloud: str | None, retailer: bool, raw_id: str | None, spy: Any = None) -> tuple[str, Any, bytes]:
        p = node_process.start(admin_node_yaml(tmp_path, port=port, cloud=cloud, token=TOKEN,
                                               salt=RETAILER_SALT if retailer else None))
        body: Any = None
        up = b""
        try:
            out = node_process.wait_running(p)
            if raw_id is not None:
                status, body = admin_http(port, "/api/checkin", {"customer": raw_id, "screen": "dairy-screen"},
                                          token=TOKEN)
                assert status == 200, (status, body)
                body = json.loads(body)
            if spy is not None:
                up = _wait_up(spy, hash_customer("LOYALTY-2000002", RETAILER_SALT).encode())
        finally:
            out += node_process.stop(p)
        return out, body, up

    # 1. not provisioned yet: the demo salt, no cloud link; the check-in works and is queued
    out1, body, _ = run(None, retailer=False, raw_id="LOYALTY-2000001")
    on_demo = body["customer"]
    assert on_demo == hash_customer("LOYALTY-2000001", DEMO_CUSTOMER_SALT)
    assert _queued_checkins(db) == [on_demo]
    assert "removed" not in out1
    # 2. provisioned: the retailer's salt and a cloud link (down for now); the demo-salt check-in is dropped
    out2, body, _ = run(dead, retailer=True, raw_id="LOYALTY-2000002")
    on_retailer = body["customer"]
    assert on_retailer == hash_customer("LOYALTY-2000002", RETAILER_SALT)
    assert _queued_checkins(db) == [on_retailer]
    said = [ln for ln in out2.splitlines() if "check-in" in ln and "removed" in ln]
    assert len(said) == 1 and "removed 1 check-in(s)" in said[0] and "demo salt" in said[0], out2
    # 3. the link is up: the retailer-salt check-in goes up, the demo-salt one never does
    out3, _, up = run(mosquitto.url, retailer=True, raw_id=None, spy=mqtt_spy(mosquitto.port))
    assert on_retailer.encode() in up and on_demo.encode() not in up
    assert "removed" not in out3
    assert _queued_checkins(db) == []

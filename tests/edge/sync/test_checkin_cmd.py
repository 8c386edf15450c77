"""The cloud's ``cmd`` ``check_in`` naming an ended visit (or another customer's live one) without a screen is
refused like ``POST /api/checkin``'s 410 (409): the ``cmd/result`` says ``ok: false`` with the fix (check in again
at the screen, the screen ids), and nothing is bound. A real ``edge.app.Node`` in this process (demo layout,
camera off, real SQLite) linked to a real Mosquitto; the commands go in and the results come out through the
broker.

Old code: fusion refused it (``VisitEnded``) but the result said ``ok: true, "session <id>"``."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge.app import Node
from edge.config import NodeConfig, parse_config
from edge.fusion import hash_customer
from edge.sync.topics import Topics

SALT = "acme-cmd-checkin-salt-5e1d0c9b8a7f"


def _config(tmp: Path, url: str) -> NodeConfig:
    raw = parse_config(resources.files("edge").joinpath("data/demo_store.yaml").read_text()).model_dump(by_alias=True)
    raw["node"]["data_dir"] = str(tmp / "data")
    raw["camera"]["enabled"] = False
    raw["shelves"]["enabled"] = False
    raw["signage"]["enabled"] = False
    raw["mqtt"]["local"]["url"] = None
    raw["mqtt"]["cloud"]["url"] = url
    raw["mqtt"]["sync"]["batch_max_age_ms"] = 20
    raw["store"]["flush_interval_ms"] = 20
    raw["fusion"].update(customer_salt=SALT, session_idle_s=1.0)
    return NodeConfig.model_validate(raw)


def test_a_cloud_check_in_naming_an_ended_visit_without_a_screen_is_refused(
        tmp_path: Path, mosquitto: Any, upstream: Any, wait_for: Callable[..., Any]) -> None:
    cfg = _config(tmp_path, mosquitto.url)
    topics = Topics("shelfcast/v1", cfg.node.store_id, cfg.node.node_id)
    cloud = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cloud-{time.monotonic_ns()}",
                        protocol=mqtt.MQTTv5)
    cloud.connect("127.0.0.1", mosquitto.port)
    cloud.loop_start()
    h, hb = hash_customer("CARD-A", SALT), hash_customer("CARD-B", SALT)

    def result(cmd_id: str) -> dict[str, Any]:
        got = wait_for(lambda: [r for r in upstream.of("/cmd/result") if r.get("cmd") == cmd_id], 15)
        assert len(got) == 1, f"result of {cmd_id}: {got}; all: {upstream.of('/cmd/result')}"
        return got[0]  # type: ignore[no-any-return]

    async def command(args: dict[str, Any]) -> dict[str, Any]:
        cmd_id = uuid.uuid4().hex[:12]
        cloud.publish(topics.cmd(), json.dumps({"id": cmd_id, "command": "check_in", "args": args}), qos=1)
        return await asyncio.to_thread(result, cmd_id)

    async def main() -> None:
        node = Node(cfg)
        await node.start()
        try:
            assert node.sync is not None and node.fusion is not None and node.recommender is not None
            assert await asyncio.to_thread(node.sync.link.wait_connected, 10), node.sync.link.last_error
            assert await asyncio.to_thread(node.sync.link.subscribed.wait, 10)
            first = await command({"customer": h, "screen": "dairy-screen"})
            assert first["ok"] is True and first["detail"].startswith("session "), first
            a = first["detail"].removeprefix("session ")
            await asyncio.sleep(1.2)  # fusion.session_idle_s is 1 s: the visit ends
            node.fusion.expire()
            node.housekeep_once()
            assert node.fusion.session(a).ended is not None and a not in node.recommender.visits
            visits = {s.id for s in node.fusion.active_sessions()}

            refused = await command({"customer": h, "session": a})
            detail = refused["detail"]
            assert refused["ok"] is False, refused
            assert a in detail and "ended" in detail and '"screen"' in detail and "dairy-screen" in detail, detail
            assert "dairy-1-edge" not in detail, detail  # shelf displays are no check-in screens
            # nothing was bound: no new visit in fusion, none in the recommender
            assert {s.id for s in node.fusion.active_sessions()} == visits
            assert not [v for v in node.recommender.visits.values() if v.customer is not None]

            # the fix it names: the same check-in at the screen opens a new visit there
            again = await command({"customer": h, "session": a, "screen": "dairy-screen"})
            assert again["ok"] is True and again["detail"] not in (f"session {a}", ""), again

            # another customer's live visit named without a screen (the HTTP 409): refused too, B keeps it
            b = (await command({"customer": hb, "screen": "bakery-screen"}))["detail"].removeprefix("session ")
            taken = await command({"customer": h, "session": b})
            assert taken["ok"] is False and b in taken["detail"] and "another customer's" in taken["detail"] \
                and "bakery-screen" in taken["detail"], taken
            assert node.recommender.visits[b].customer == hb
        finally:
            await node.stop()

    try:
        asyncio.run(main())
    finally:
        cloud.loop_stop()
        cloud.disconnect()

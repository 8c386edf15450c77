"""Downstream topics over a real Mosquitto: valid payloads act, malformed ones become error events."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.publish as pub

from edge.sync.topics import Topics

TOPICS = Topics("shelfcast/v1", "s1", "node-1")


def send(mosquitto: Any, topic: str, payload: Any) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    pub.single(topic, body, qos=1, hostname="127.0.0.1", port=mosquitto.port, protocol=5)


def downstream_topics() -> list[str]:
    out = []
    for everyone in (False, True):
        out += [TOPICS.cmd(everyone=everyone), TOPICS.config(everyone=everyone)]
        out += [TOPICS.delta(k, everyone=everyone) for k in ("catalogue", "planogram", "stock", "profiles")]
        out += [TOPICS.release_manifest(k, everyone=everyone)
                for k in ("model", "catalogue", "planogram", "stock", "profiles")]
        out += [TOPICS.release_chunk("model", 0, everyone=everyone)]
    return out


GARBAGE = [b"not json at all", b'{"id": 5}', b"[1,2,3]", b"\xff\xfe\x00garbage", b'{"id":"x","unexpected":true}']


def test_malformed_payloads_on_every_downstream_topic_are_rejected_with_an_error_event(
        node: Any, mosquitto: Any, upstream: Any, keys: Any, fakes: Any, tmp_path: Path) -> None:
    # the node listens to a kind's chunk topic only while it stages a release announced there: announce one on
    # its own and on its store's topic (manifest only)
    from edge.sync.link import LinkSettings
    from edge.sync.publish import build_release, publish_release

    rel = build_release("model", fakes.write_model(tmp_path / "v2", "v2"), None, keys.private)
    for everyone in (False, True):
        publish_release(LinkSettings(url=mosquitto.url, client_id="downstream-publisher"), TOPICS, rel, chunks=[],
                        everyone=everyone)
    assert upstream.wait_for(lambda: len(node.room.releases.listening()) == 2, 10), node.room.releases.listening()
    topics = downstream_topics()
    for t in topics:
        for g in GARBAGE:
            send(mosquitto, t, g)
    want = len(topics) * len(GARBAGE)
    errors = upstream.wait_for(lambda: len(upstream.of("/error")) >= want and upstream.of("/error"), 20)
    assert len(errors) == want, f"{len(errors)} error events for {want} bad messages"
    by_topic = {e["topic"] for e in errors}
    assert by_topic == set(topics)
    assert all(e["type"] == "sync_error" and e["reason"] and e["id"] for e in errors)
    assert not any("garbage" in e["reason"] for e in errors)  # payloads are not echoed back
    # still alive and acting on good input
    send(mosquitto, TOPICS.delta("stock"), {"id": "d1", "levels": {"sku-a": 7}})
    assert upstream.wait_for(lambda: node.store.stock("sku-a") == 7)
    assert node.room.health()["link"]["connected"]
    assert node.room.health()["rejected"] == want


def test_deltas_are_applied(node: Any, mosquitto: Any) -> None:
    send(mosquitto, TOPICS.delta("catalogue"), {"id": "c1", "upsert": [
        {"sku": "p1", "name": "Oat milk 1 l", "department": "DAIRY", "price": 2.49}]})
    send(mosquitto, TOPICS.delta("planogram", everyone=True), {"id": "p1", "entries": [
        {"shelf": "dairy-1", "slot": 3, "sku": "p1"}]})
    send(mosquitto, TOPICS.delta("stock"), {"id": "s1", "levels": {"p1": 10}})
    send(mosquitto, TOPICS.delta("stock"), {"id": "s2", "adjust": {"p1": -3}})
    send(mosquitto, TOPICS.delta("profiles"), {"id": "pr1", "profiles": [
        {"customer": "abcdef0123456789" * 4, "demographics": {"age": "35-44"}, "history": [["p1", 1.7e9, 2.0]]}]})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if node.store.profile("abcdef0123456789" * 4) is not None and node.store.stock("p1") == 7:
            break
        time.sleep(0.05)
    assert node.store.product("p1").name == "Oat milk 1 l"
    assert node.store.planogram_slot("dairy-1", 3) == "p1"
    assert node.store.stock("p1") == 7
    prof = node.store.profile("abcdef0123456789" * 4)
    assert prof is not None and prof.demographics == {"age": "35-44"} and prof.history[0][0] == "p1"


def test_commands_and_runtime_config(node: Any, mosquitto: Any, upstream: Any) -> None:
    send(mosquitto, TOPICS.cmd(), {"id": "k1", "command": "ping"})
    send(mosquitto, TOPICS.cmd(), {"id": "k2", "command": "rollback"})  # nothing to roll back to
    send(mosquitto, TOPICS.config(), {"id": "k3", "values": {"mqtt.sync.batch_max_events": 50}})
    send(mosquitto, TOPICS.config(), {"id": "k4", "values": {"mqtt.cloud.url": "mqtt://elsewhere:1883"}})
    results = upstream.wait_for(lambda: len(upstream.of("/cmd/result")) >= 3 and upstream.of("/cmd/result"))
    by = {r["cmd"]: r for r in results}
    assert by["k1"]["ok"] and by["k1"]["detail"] == "pong"
    assert not by["k2"]["ok"] and "no previous model" in by["k2"]["detail"]
    assert by["k3"]["ok"] and node.room.drainer.o.batch_max_events == 50
    errs = upstream.wait_for(lambda: [e for e in upstream.of("/error") if "cannot change at runtime" in e["reason"]])
    assert errs and errs[0]["topic"] == TOPICS.config()

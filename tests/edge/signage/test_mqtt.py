"""Retained per-screen topics on a real local Mosquitto, checked against the JSON schema
by a real subscriber; the broker being down never touches HTTP, and it catches up."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest

from edge.events import ShopperEvent
from edge.signage.schema import SCREEN_PAYLOAD_SCHEMA

TOPIC = "shelfcast/v1/demo-store/demo-node/screens/+/recommendations"
DOC = Path(__file__).resolve().parents[3] / "docs" / "signage.md"


def retained(url_port: int, topic: str = TOPIC, wait: float = 1.0) -> dict[str, dict[str, Any]]:
    """What a player that subscribes now gets: the retained payload of every screen."""
    got: dict[str, dict[str, Any]] = {}
    flags: dict[str, bool] = {}
    done = threading.Event()

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        got[msg.topic] = json.loads(msg.payload)
        flags.setdefault(msg.topic, msg.retain)  # the first per topic is the retained one; later ones are live
        if len(got) >= 5:
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = on_message
    c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    c.connect("127.0.0.1", url_port)
    c.loop_start()
    done.wait(wait)
    c.disconnect()
    c.loop_stop()
    assert all(flags.values()), "screen topics must be retained"
    return got


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_retained_payloads_match_the_schema(make_node: Callable[..., Any], mosquitto: Any) -> None:
    n = make_node(mqtt_url=mosquitto.url)
    wait_until(lambda: n.node.signage.mqtt.connected)
    n.publish(ShopperEvent(session="mq-1", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
    wait_until(lambda: n.node.signage.mqtt.stats["published"] >= 6)
    msgs = retained(mosquitto.port)
    assert set(msgs) == {f"shelfcast/v1/demo-store/demo-node/screens/{s.id}/recommendations"
                         for s in n.config.layout.screens}
    for payload in msgs.values():
        jsonschema.validate(payload, SCREEN_PAYLOAD_SCHEMA)
    dairy = msgs["shelfcast/v1/demo-store/demo-node/screens/dairy-screen/recommendations"]
    assert dairy["session"] == "mq-1" and dairy["schema"] == 1
    api = n.json("/api/screens/dairy-screen/recommendations")
    assert dairy["items"] == api["items"]  # one payload for HTTP, SSE and MQTT
    # a payload that breaks the contract is caught by the schema (the check can fail)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**dairy, "items": [{"sku": 1}]}, SCREEN_PAYLOAD_SCHEMA)


def test_the_documented_schema_is_the_one_in_code() -> None:
    text = DOC.read_text()
    m = re.search(r"<!-- schema:begin -->\s*```json\n(.*?)```", text, re.S)
    assert m, "docs/signage.md must carry the payload schema between the schema markers"
    assert json.loads(m.group(1)) == SCREEN_PAYLOAD_SCHEMA


def test_broker_down_http_fine_then_catches_up(make_node: Callable[..., Any], mosquitto: Any) -> None:
    mosquitto.stop()
    n = make_node(mqtt_url=mosquitto.url)
    n.publish(ShopperEvent(session="down-1", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
    d = n.json("/api/screens/dairy-screen/recommendations")
    assert d["session"] == "down-1"
    h = n.json("/api/health")["rooms"]["signage"]
    assert h["mqtt"]["connected"] is False and h["http"]["listening"] is True and h["status"] == "degraded"
    mosquitto.start()  # it comes back: the publisher reconnects and republishes every screen, retained
    wait_until(lambda: n.node.signage.mqtt.connected, timeout=15)
    msgs = retained(mosquitto.port)
    assert msgs["shelfcast/v1/demo-store/demo-node/screens/dairy-screen/recommendations"]["session"] == "down-1"
    # killed while running: HTTP does not notice; after the restart the latest set is there
    mosquitto.kill()
    wait_until(lambda: not n.node.signage.mqtt.connected)
    n.publish(ShopperEvent(session="down-2", sku="995242", action="pick", zone="dairy", shelf="dairy-2", slot=1))
    assert n.json("/api/screens/dairy-screen/recommendations")["session"] == "down-2"
    mosquitto.start()
    wait_until(lambda: n.node.signage.mqtt.connected, timeout=20)
    time.sleep(0.2)
    msgs = retained(mosquitto.port)
    assert msgs["shelfcast/v1/demo-store/demo-node/screens/dairy-screen/recommendations"]["session"] == "down-2"


def test_http_down_mqtt_fine(make_node: Callable[..., Any], mosquitto: Any) -> None:
    n = make_node(mqtt_url=mosquitto.url)
    wait_until(lambda: n.node.signage.mqtt.connected)
    n.call(n.node.signage.stop_http())
    n.publish(ShopperEvent(session="nohttp", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
    time.sleep(0.2)
    msgs = retained(mosquitto.port)
    assert msgs["shelfcast/v1/demo-store/demo-node/screens/dairy-screen/recommendations"]["session"] == "nohttp"


def test_a_burst_of_publishes_is_all_acknowledged_with_buffered_reads(mosquitto: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The publisher reads whatever has arrived in one ``recv`` and parses paho's packets from that buffer,
    PUBACKs without paho's generic decoder: every QoS 1 publish of a burst (300, beyond paho's in-flight
    window of 20, so queued ones go out as acknowledgements come back) is acknowledged, the retained
    payload is the last one, and the socket was read far fewer times than there were PUBACKs."""
    import asyncio

    from edge.signage.mqtt import ScreenPublisher, _BufferedClient

    reads = [0]
    paho_recv = mqtt.Client._sock_recv

    def counting(self: mqtt.Client, bufsize: int) -> bytes:
        if isinstance(self, _BufferedClient):
            reads[0] += 1
        return paho_recv(self, bufsize)

    monkeypatch.setattr(mqtt.Client, "_sock_recv", counting)
    import paho.mqtt._packet as paho_packet

    decoded = [0]
    paho_decode = paho_packet.decode_puback

    def counting_decode(*a: Any) -> Any:
        decoded[0] += 1
        return paho_decode(*a)

    monkeypatch.setattr(paho_packet, "decode_puback", counting_decode)

    async def run() -> tuple[int, int, int]:
        pub = ScreenPublisher(mosquitto.url, prefix="shelfcast/v1", store="s1", node="n1")
        assert isinstance(pub._client, _BufferedClient), \
            "this paho lacks the internals _BufferedClient overrides: the publisher fell back to paho's client"
        pub.start()
        for _ in range(200):
            if pub.connected:
                break
            await asyncio.sleep(0.02)
        assert pub.connected
        await asyncio.sleep(0.1)
        reads[0] = 0
        n = 300
        for i in range(n):
            assert pub.publish("screen-a", json.dumps({"seq": i}).encode())
        for _ in range(200):
            if not pub._client._out_messages:
                break
            await asyncio.sleep(0.02)
        left, r = len(pub._client._out_messages), reads[0]
        await pub.aclose()
        return n, left, r

    n, left, r = asyncio.run(run())
    assert left == 0, f"{left} publishes were never acknowledged"
    got = retained(mosquitto.port, topic="shelfcast/v1/s1/n1/screens/+/recommendations", wait=0.5)
    assert got["shelfcast/v1/s1/n1/screens/screen-a/recommendations"] == {"seq": n - 1}
    assert 0 < r < n, f"{r} reads for {n} PUBACKs"  # paho alone: 3 reads per PUBACK
    assert decoded[0] == 0  # MQTT 3.1.1 PUBACKs: the 2-byte id read directly, paho's bookkeeping after it

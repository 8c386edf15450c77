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


async def _connected_publisher(url: str, store: str, node: str, settle: float = 0.2) -> Any:
    """A started ``ScreenPublisher`` once it is connected to the test broker (and has settled)."""
    import asyncio

    from edge.signage.mqtt import ScreenPublisher

    pub = ScreenPublisher(url, prefix="shelfcast/v1", store=store, node=node)
    pub.start()
    for _ in range(200):
        if pub.connected:
            break
        await asyncio.sleep(0.02)
    assert pub.connected and pub._client is not None
    await asyncio.sleep(settle)
    return pub


def _live_subscriber(port: int, topic: str, on_message: Callable[..., Any]) -> mqtt.Client:
    """A paho subscriber on ``topic`` (QoS 1), subscribed when this returns; the caller stops it."""
    ready = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    assert ready.wait(5)
    return sub


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
    payload is the last one, and the socket was read far fewer times than there were PUBACKs. (Screen sets
    go out at QoS 0; the status topic and anything else published QoS 1 on this client still use this.)"""
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
        assert pub._client is not None
        for i in range(n):
            info = pub._client.publish(pub.topic("screen-a"), json.dumps({"seq": i}).encode(), qos=1, retain=True)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS
            pub._want_write()
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


@pytest.mark.parametrize("size", [0, 10, 125, 126, 200, 16_370, 16_390, 70_000])
def test_the_lean_publish_packet_is_the_one_paho_builds(size: int) -> None:
    """Sets are written as a PUBLISH built here (pre-encoded topic): byte for byte paho's retained QoS 0
    packet, across the 1-, 2- and 3-byte remaining-length forms."""
    from edge.signage.mqtt import _publish_head, _publish_packet

    topic = "shelfcast/v1/s1/n1/screens/screen-é/recommendations"
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    got: list[bytes] = []
    c._sock = object()  # type: ignore[assignment]  # _send_publish only checks that there is one
    c._packet_queue = lambda cmd, packet, mid, qos, info=None: got.append(bytes(packet))  # type: ignore[method-assign]
    try:
        c._send_publish(0, topic.encode(), payload, qos=0, retain=True)
    finally:
        c._sock = None  # not a socket: paho must not try to close it
    assert _publish_packet(_publish_head(topic), payload) == got[0]


def test_sets_go_out_qos0_in_order_also_when_the_socket_is_full(mosquitto: Any) -> None:
    """Large sets fill the socket: the lean path hands the rest of a partly written packet, and every
    later one, to paho's queue, which writes them in order. A live subscriber gets every set, in order, at
    QoS 0 with the retain flag of a live message cleared as MQTT does; a new one gets the last, retained."""
    import asyncio

    topic = "shelfcast/v1/s2/n2/screens/+/recommendations"
    seen: list[tuple[int, int]] = []
    sub = _live_subscriber(mosquitto.port, topic, lambda c, u, m: seen.append((json.loads(m.payload)["seq"], m.qos)))
    n, pad = 60, "x" * 200_000

    async def run() -> int:
        pub = await _connected_publisher(mosquitto.url, "s2", "n2", settle=0.0)
        import socket

        sock = pub._client.socket()
        assert isinstance(sock, socket.socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # small: a 200 kB set cannot go in one send
        queued = 0
        for i in range(n):
            assert pub.publish("screen-b", json.dumps({"seq": i, "pad": pad}).encode())
            if i % 5 == 4:  # the sets of one loop iteration go out together: a few iterations' worth
                await asyncio.sleep(0)
                queued = max(queued, len(pub._client._out_packet))
        for _ in range(500):
            if not pub._client.want_write():
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        await pub.aclose()
        return queued

    try:
        queued = asyncio.run(run())
        wait_until(lambda: len(seen) >= n, timeout=15)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert queued > 0, "the socket never filled: the paho-queue path was not exercised"
    assert [s for s, _ in seen] == list(range(n)) and {q for _, q in seen} == {0}
    got = retained(mosquitto.port, topic=topic, wait=0.5)
    assert got["shelfcast/v1/s2/n2/screens/screen-b/recommendations"]["seq"] == n - 1


def test_a_burst_of_sets_is_not_held_by_nagle(mosquitto: Any) -> None:
    """QoS 0 sets get no PUBACK to carry the broker's ACK: without TCP_NODELAY the 2nd..6th set of a burst
    waited for the delayed ACK (42 ms measured). A live subscriber gets every set of each burst promptly: the
    median over the bursts' sets (5 of 6 would be held without it) stays far below that delay."""
    import asyncio
    import socket
    import statistics

    arrived: dict[int, float] = {}
    sub = _live_subscriber(mosquitto.port, "shelfcast/v1/s3/n3/screens/+/recommendations",
                           lambda c, u, m: arrived.setdefault(json.loads(m.payload)["i"], time.perf_counter()))
    sent: dict[int, float] = {}
    nodelay = [0]

    async def run() -> None:
        pub = await _connected_publisher(mosquitto.url, "s3", "n3")
        sock = pub._client.socket()
        nodelay[0] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        for burst in range(3):
            for k in range(6):
                i = burst * 6 + k
                sent[i] = time.perf_counter()
                pub.publish(f"screen-{k}", json.dumps({"i": i}).encode())
            await asyncio.sleep(0.15)
        await pub.aclose()

    try:
        asyncio.run(run())
        wait_until(lambda: len(arrived) >= len(sent), timeout=5)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert nodelay[0] != 0, "TCP_NODELAY is off on the publisher's socket"
    typical = statistics.median(arrived[i] - sent[i] for i in sent)
    assert typical < 0.02, f"half the sets took over {typical * 1e3:.1f} ms to reach a live subscriber"


def test_the_sets_of_one_loop_iteration_go_out_in_one_send(mosquitto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each send to the broker wakes it: the sets published in one loop iteration (a burst: one per shelf)
    are written together with one ``send``, in order; a live subscriber gets each of them."""
    import asyncio

    sends: list[int] = []
    paho_send = mqtt.Client._sock_send

    def counting(self: mqtt.Client, buf: bytes) -> int:
        sends.append(len(buf))
        return paho_send(self, buf)

    monkeypatch.setattr(mqtt.Client, "_sock_send", counting)
    seen: list[int] = []
    sub = _live_subscriber(mosquitto.port, "shelfcast/v1/s4/n4/screens/+/recommendations",
                           lambda c, u, m: seen.append(json.loads(m.payload)["i"]))

    async def run() -> int:
        pub = await _connected_publisher(mosquitto.url, "s4", "n4")
        sends.clear()
        for i in range(4):
            assert pub.publish(f"screen-{i}", json.dumps({"i": i}).encode())
        assert not sends  # queued for the end of this iteration
        await asyncio.sleep(0.05)
        n = len(sends)
        await pub.aclose()
        return n

    try:
        n = asyncio.run(run())
        wait_until(lambda: len(seen) >= 4, timeout=5)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert n == 1 and seen == [0, 1, 2, 3]

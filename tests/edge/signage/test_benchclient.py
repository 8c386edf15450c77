"""The e2e bench's screen clients: frames are stamped when their last byte arrived, and the raw MQTT player reads
what a real broker sends (against Mosquitto, with paho as the publisher). Payloads are compact JSON, as the node's
``encode`` writes them."""

from __future__ import annotations

import importlib
import json
import struct
import time
from typing import Any

bc = importlib.import_module("edge.signage.benchclient")

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"


def _frame(seq: int) -> bytes:
    data = json.dumps({"screen": "screen-0", "seq": seq, "items": []}, separators=(",", ":"))
    return f"id: {seq}\nevent: recommendations\ndata: {data}\n\n".encode()


def test_sse_frame_split_across_reads_is_stamped_when_it_is_complete() -> None:
    f1, f2, f3 = _frame(1), _frame(2), _frame(3)
    chunks = [(100, HEAD + f1 + f2[:9]),  # frame 2's id line arrives here ...
              (200, f2[9:-1]),  # ... most of its data here ...
              (300, f2[-1:] + b": ping\n\n" + f3)]  # ... and its closing blank line here (then a comment, frame 3)
    assert bc.parse_sse(chunks) == [[1, 100], [2, 300], [3, 300]]
    assert bc.parse_sse([(5, HEAD)]) == []  # headers only: no frame
    assert bc.parse_sse([(7, HEAD + f1[:-1])]) == []  # not complete yet: never stamped


def _compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _publish(topic: str, payload: bytes, retain: bool = False) -> bytes:
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + payload
    return bytes([0x30 | (1 if retain else 0)]) + bc._varint(len(body)) + body


def test_mqtt_packets_are_cut_and_stamped_at_their_last_byte() -> None:
    big = _compact({"screen": "screen-1", "seq": 7, "pad": "x" * 300})  # a 2-byte remaining length
    p_ret = _publish("a/screens/screen-1/recommendations", json.dumps({"screen": "screen-1", "seq": 6}).encode(),
                     retain=True)
    p_big = _publish("a/screens/screen-1/recommendations", big)
    p_small = _publish("a/screens/screen-2/recommendations", b'{"screen":"screen-2","seq":8}')
    stream = p_ret + p_big + p_small
    cut1, cut2 = len(p_ret) + 1, len(p_ret) + len(p_big) + 3  # inside p_big's length bytes; inside p_small
    chunks = [(10, stream[:cut1]), (20, stream[cut1:cut2]), (30, stream[cut2:])]
    assert bc.parse_mqtt(chunks) == {"screen-1": [[7, 20]], "screen-2": [[8, 30]]}  # retained one skipped
    assert [p[0] >> 4 for p in bc.mqtt_packets(stream)] == [3, 3, 3]
    assert bc.mqtt_packets(stream[:-1])[-1][2] != p_small[-1:]  # a cut packet is not returned whole
    assert len(bc.mqtt_packets(stream[:-1])) == 2


def test_raw_player_reads_live_sets_from_mosquitto(mosquitto: Any) -> None:
    import paho.mqtt.client as mqtt

    topic = "shelfcast/bench/node/screens/screen-3/recommendations"
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-pub")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    try:
        pub.publish(topic, b'{"screen":"screen-3","seq":1}', qos=1, retain=True).wait_for_publish(5)
        s = bc._mqtt_connect(mosquitto.url, "shelfcast/bench/+/screens/+/recommendations")
        try:
            for seq in (2, 3):
                pub.publish(topic, _compact({"screen": "screen-3", "seq": seq}), qos=1).wait_for_publish(5)
            s.settimeout(5)
            chunks: list[tuple[int, bytes]] = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                got = bc.parse_mqtt(chunks)
                if len(got.get("screen-3", [])) >= 2:
                    break
                try:
                    chunks.append((time.perf_counter_ns(), s.recv(65536)))
                except TimeoutError:
                    break
        finally:
            s.close()
    finally:
        pub.loop_stop()
        pub.disconnect()
    got = bc.parse_mqtt(chunks)
    assert [seq for seq, _ in got["screen-3"]] == [2, 3]  # the retained seq 1 is not a live arrival

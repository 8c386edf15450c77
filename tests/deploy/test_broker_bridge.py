"""The local Mosquitto config the installer renders, run by a real Mosquitto, bridged to a real "cloud" one."""

from __future__ import annotations

import queue
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge.config import parse_config
from edge.deployment import render_mosquitto_conf, render_udev_rules


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(port)


@pytest.fixture
def local_broker(tmp_path: Path, mosquitto: Any) -> Iterator[tuple[int, Any]]:
    """Mosquitto running the rendered node config; its bridge points at the ``mosquitto`` fixture (the cloud)."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto not installed")
    cfg = parse_config(f"node: {{store_id: store-1, node_id: node-9, data_dir: {tmp_path}}}\n"
                       f"mqtt:\n  cloud: {{url: '{mosquitto.url}'}}\n")
    port = free_port()
    text = render_mosquitto_conf(cfg, port=port)
    assert "connection shelfcast-cloud" in text and f"address 127.0.0.1:{mosquitto.port}" in text
    assert "set_tcp_nodelay true" in text  # and the broker below must accept it
    conf = tmp_path / "local.conf"
    (tmp_path / "p").mkdir()
    # the rendered file is a conf.d drop-in; Debian's main mosquitto.conf supplies persistence like this
    conf.write_text(f"user root\npersistence true\npersistence_location {tmp_path}/p/\n{text}")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port)
        yield port, mosquitto
    finally:
        proc.kill()
        proc.wait(5)


def client(port: int, name: str, topic: str | None = None) -> tuple[mqtt.Client, queue.Queue[tuple[str, bytes]]]:
    q: queue.Queue[tuple[str, bytes]] = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    c.on_message = lambda cl, ud, m: q.put((m.topic, bytes(m.payload)))
    c.connect("127.0.0.1", port)
    c.loop_start()
    if topic:
        c.subscribe(topic, qos=1)
    return c, q


def test_bridge_carries_local_namespace_and_screen_status_only(local_broker: tuple[int, Any]) -> None:
    port, cloud = local_broker
    up_sub, up_q = client(cloud.port, "cloud-sub", "shelfcast/v1/#")
    down_sub, down_q = client(port, "local-sub", "shelfcast/v1/store-1/node-9/#")
    pub_local, _ = client(port, "local-pub")
    pub_cloud, _ = client(cloud.port, "cloud-pub")
    try:
        deadline = time.monotonic() + 10
        seen: dict[str, bytes] = {}
        while "shelfcast/v1/store-1/node-9/local/ha/state" not in seen and time.monotonic() < deadline:
            pub_local.publish("shelfcast/v1/store-1/node-9/local/ha/state", b"e1", qos=1)  # until the bridge is up
            try:
                t, payload = up_q.get(timeout=0.5)
                seen[t] = payload
            except queue.Empty:
                pass
        assert seen.get("shelfcast/v1/store-1/node-9/local/ha/state") == b"e1"
        assert seen.get("shelfcast/v1/store-1/node-9/bridge/state") == b"1"  # the cloud sees the link state
        time.sleep(0.5)  # late copies of the retries above
        while not up_q.empty():
            up_q.get_nowait()
        pub_local.publish("shelfcast/v1/store-1/node-9/signage/status", b"online", qos=1)
        assert up_q.get(timeout=5) == ("shelfcast/v1/store-1/node-9/signage/status", b"online")
        # what the sync room carries itself, and the per-shopper screen sets, stay off the uplink
        kept_local = ("shelfcast/v1/store-1/node-9/screens/s1/recommendations", "shelfcast/v1/store-1/node-9/events",
                      "shelfcast/v1/store-1/other-node/local/x", "something/else")
        for t in kept_local:
            pub_local.publish(t, b"no", qos=1)
        while not down_q.empty():
            down_q.get_nowait()
        pub_cloud.publish("shelfcast/v1/store-1/node-9/cmd/reboot", b"sync's own", qos=1)
        pub_cloud.publish("shelfcast/v1/store-1/node-9/local/tool/ping", b"c1", qos=1)
        got_down = [down_q.get(timeout=5)]
        time.sleep(0.5)
        got_down += list(down_q.queue)
        assert [t for t, _ in got_down if "/local/" in t or "/cmd/" in t] == [
            "shelfcast/v1/store-1/node-9/local/tool/ping"]
        assert [t for t, _ in list(up_q.queue) if t in kept_local] == []
    finally:
        for c in (up_sub, down_sub, pub_local, pub_cloud):
            c.loop_stop()
            c.disconnect()


def test_udev_rules_for_several_controller_ids() -> None:
    rules = render_udev_rules(["1209:5C5C", "2e8a:000a"])
    assert rules.count("SUBSYSTEM==\"tty\"") == 4
    assert 'ATTRS{idVendor}=="2e8a", ATTRS{idProduct}=="000a"' in rules
    assert 'ATTRS{idVendor}=="1209", ATTRS{idProduct}=="5c5c"' in rules  # udev compares lower-case hex
    for line in rules.splitlines():
        if not line.startswith("#"):
            assert line.count('"') % 2 == 0 and 'MODE="0660"' in line

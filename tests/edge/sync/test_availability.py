"""Availability and state on a real Mosquitto: retained online / offline (last will) / stopped, state
republished on every reconnect, and Home Assistant discovery republished when Home Assistant announces itself."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import paho.mqtt.publish as pub

HERE = Path(__file__).parent
AVAIL = "shelfcast/v1/s1/node-1/availability"
STATE = "shelfcast/v1/s1/node-1/state"


def test_online_state_on_every_reconnect_then_stopped(mosquitto: Any, node_config: Any, start_node: Any,
                                                      retained: Any, wait_for: Any) -> None:
    node = start_node(node_config(mosquitto.url))
    assert wait_for(lambda: retained(mosquitto.port, AVAIL) == b"online")
    state = json.loads(retained(mosquitto.port, STATE) or b"{}")
    assert state["node"] == "node-1" and state["model"] == "v1" and "outbox_pending" in state
    t_restart = time.time()
    mosquitto.restart()
    assert wait_for(lambda: node.room.link.stats["connects"] >= 2, 20)
    fresh = wait_for(lambda: json.loads(retained(mosquitto.port, STATE) or b"{}").get("t", 0) > t_restart)
    assert fresh, "state was not republished after the reconnect"
    assert retained(mosquitto.port, AVAIL) == b"online"
    node.run(node.room.stop())
    assert retained(mosquitto.port, AVAIL) == b"stopped"
    node.run(node.room.start())  # so the fixture's close() finds it running


def test_last_will_is_offline_when_the_node_dies(mosquitto: Any, node_config: Any, tmp_path: Path,
                                                  retained: Any, wait_for: Any) -> None:
    cfg = tmp_path / "node-config.json"
    cfg.write_text(node_config(mosquitto.url).model_dump_json(by_alias=True))
    st = tmp_path / "status.json"
    p = subprocess.Popen([sys.executable, str(HERE / "node_harness.py"), str(cfg), "--status", str(st),
                          "--fake-model"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: retained(mosquitto.port, AVAIL) == b"online", 30)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    assert wait_for(lambda: retained(mosquitto.port, AVAIL) == b"offline", 10)


def test_home_assistant_discovery_republished_when_it_announces_itself(mosquitto: Any, node_config: Any,
                                                                       start_node: Any, wait_for: Any) -> None:
    raw = node_config(mosquitto.url, sync={"homeassistant": True}).model_dump(by_alias=True)
    raw["layout"] = {"zones": [{"id": "z", "polygon": [[0, 0], [1, 0], [1, 1]]}],
                     "shelves": [{"id": "shelf-a", "zone": "z", "position": [0.5, 0.5]}],
                     "screens": [{"id": "screen-1", "zone": "z", "position": [0.2, 0.2]}]}
    from edge.config import NodeConfig

    configs: list[tuple[str, dict[str, Any]]] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ha", protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, u, m: configs.append((m.topic, json.loads(m.payload)))
    c.on_connect = lambda cl, *a: cl.subscribe("homeassistant/+/+/config", qos=1)
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    try:
        start_node(NodeConfig.model_validate(raw))
        assert wait_for(lambda: len(configs) >= 5)
        first = len(configs)
        devices = {json.dumps(cfg["device"]["identifiers"]) for _, cfg in configs}
        assert len(devices) == 3  # the node, its screen and its shelf
        assert all(cfg["availability_topic"] == AVAIL and cfg["state_topic"] == STATE for _, cfg in configs)
        assert any(cfg["device"].get("via_device") for _, cfg in configs)
        pub.single("homeassistant/status", b"online", qos=1, hostname="127.0.0.1", port=mosquitto.port,
                   protocol=5)
        assert wait_for(lambda: len(configs) >= 2 * first)
    finally:
        c.loop_stop()
        c.disconnect()

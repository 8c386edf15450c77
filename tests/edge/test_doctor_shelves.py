"""doctor's `shelves` check with a controller left in its bootloader by an interrupted flash, over a real pty:
with the node stopped (doctor asks the controller) and with a real node running and holding the port (doctor
reads the node's own health). Both used to PASS while the shelf sent no weights."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge import doctor
from edge.config import load_config
from firmware_bridge import protocol as P
from firmware_bridge.flash import Flasher, query
from firmware_bridge.image import build_image, read_image
from firmware_bridge.sim import SimulatedStore

CTRL = "ctrl-boot-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def stuck(tmp_path: Path) -> Iterator[str]:
    """A controller whose flash was interrupted: in its bootloader with part of an image staged."""
    image = tmp_path / "fw.scfw"
    image.write_bytes(build_image(b"\x5a" * 20_000, "SC-LC8-r2", (1, 9, 0)))
    img = read_image(image)
    with SimulatedStore(seed=9) as sim:
        sim.add_controller(CTRL, slot_count=4)
        port = sim.port(CTRL)
        with Flasher(port) as f:
            f.to_bootloader()
            assert f.request(P.FlashBegin(img.header)).status == P.Status.OK
            assert f.request(P.FlashData(0, img.payload[:P.FLASH_CHUNK])).status == P.Status.OK
        assert query(port).mode == P.MODE_BOOTLOADER
        yield port


def config(tmp_path: Path, port: str, broker_url: str, signage_port: int) -> Path:
    raw: dict[str, Any] = {
        "node": {"store_id": "s1", "node_id": "n1", "data_dir": str(tmp_path / "data"), "timezone": "UTC"},
        "layout": {"zones": [{"id": "z", "polygon": [[0, 0], [4, 0], [4, 4]]}],
                   "shelves": [{"id": "shelf-a", "zone": "z", "position": [1, 1], "controller": CTRL,
                                "slots": [{"slot": 0, "sku": "sku-0"}]}]},
        "shelves": {"enabled": True, "ports": [{"port": port}]},
        "camera": {"enabled": False},
        "signage": {"enabled": True, "host": "127.0.0.1", "port": signage_port},
        "mqtt": {"local": {"url": broker_url}},
    }
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_controller_in_its_bootloader_is_a_warning(tmp_path: Path, stuck: str) -> None:
    cfg = load_config(config(tmp_path, stuck, "mqtt://127.0.0.1:1", free_port()))
    c = {x.name: x for x in doctor.check_shelves(cfg)}["shelves"]
    assert c.status == "warn", c  # old code: pass, "ctrl-boot-1 fw 1.4.2"
    assert "bootloader" in c.detail and stuck in c.detail and "1.4.2" in c.detail, c.detail
    assert "firmware flash --port" in c.fix and "power-cycle" in c.fix, c.fix


def test_running_node_holding_the_port_reports_what_it_knows(tmp_path: Path, stuck: str, mosquitto: Any,
                                                              node_thread: Any) -> None:
    path = config(tmp_path, stuck, mosquitto.url, free_port())
    with node_thread(path):
        cfg = load_config(path)
        deadline = time.monotonic() + 15
        while True:  # the node opens the port and hears the bootloader's HELLO shortly after it starts
            health = doctor.node_health(cfg)[2] or {}
            ctrl = health.get("rooms", {}).get("shelves", {}).get("controllers", {}).get(CTRL, {})
            if ctrl.get("mode") == "bootloader" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        c = {x.name: x for x in doctor.check_shelves(cfg)}["shelves"]
    assert "in use by the running node" in c.detail, c.detail
    assert c.status == "warn", c  # old code: pass
    assert "is in its bootloader" in c.detail and "firmware flash --port" in c.detail, c.detail

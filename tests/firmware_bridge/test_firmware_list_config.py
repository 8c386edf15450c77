"""`shelfcast firmware list` as the guide writes it (no flags) on a node: it uses the node's own config
($SHELFCAST_CONFIG, else /etc/shelfcast/shelfcast.yaml), so controllers named in shelves.ports or with a VID:PID
from shelves.usb_ids are found. It used to look only for USB id 1209:5c5c unless given --config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from firmware_bridge.sim import SimulatedStore

REPO = Path(__file__).resolve().parents[2]


def firmware_list(env_config: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SHELFCAST_CONFIG"}
    if env_config is not None:
        env["SHELFCAST_CONFIG"] = str(env_config)
    return subprocess.run([sys.executable, "-m", "edge.cli", "firmware", "list", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env=env)


def test_list_without_flags_uses_the_node_config(tmp_path: Path) -> None:
    with SimulatedStore(seed=4) as sim:
        sim.add_controller("ctrl-list-1", slot_count=4)
        port = sim.port("ctrl-list-1")
        cfg = tmp_path / "shelfcast.yaml"
        cfg.write_text(yaml.safe_dump({"node": {"data_dir": str(tmp_path / "data")},
                                       "shelves": {"usb_ids": ["1234:abcd"], "ports": [{"port": port}]}}))
        r = firmware_list(cfg, "--json")
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)["controllers"]
        # old code: [] (only USB id 1209:5c5c was looked for)
        assert [(x["port"], x["controller"], x["mode"]) for x in rows] == [(port, "ctrl-list-1", "app")], rows
        text = firmware_list(cfg)
        assert text.returncode == 0 and "ctrl-list-1" in text.stdout and port in text.stdout, text.stdout


def test_a_broken_node_config_is_named_not_a_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "shelfcast.yaml"
    cfg.write_text("shelves: {usb_ids: [nonsense]}\n")
    r = firmware_list(cfg)
    assert "Traceback" not in r.stderr, r.stderr
    assert f"note: {cfg} is not a valid config" in r.stderr and "config validate" in r.stderr, r.stderr
    assert r.returncode == 0 and "no shelf controllers found" in r.stdout, r.stdout
    given = firmware_list(None, "--config", str(cfg))  # named on the command line: the config's problems, exit 1
    assert given.returncode == 1 and "usb_ids" in given.stderr and "Traceback" not in given.stderr, given.stderr

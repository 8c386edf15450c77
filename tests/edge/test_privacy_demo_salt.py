"""A node on the public demo salt with a cloud link: the hashes of raw-id check-ins would go to the cloud, and
anyone can reverse them by hashing every loyalty number with the salt that is in the source. Such a node refuses
``POST /api/checkin`` (a 409 naming `shelfcast provision --customer-salt FILE`); everything else keeps working:
screens, the cloud's already-hashed ``cmd`` ``check_in``, sync. Without a cloud link (``shelfcast demo``, a
node not provisioned yet) a check-in works as before. ``shelfcast run``, ``doctor``, ``config validate`` and the
installer's config check (``python -m edge.deployment validate``, run before an upgrade replaces anything) say it.

Real ``shelfcast run`` processes, a real Mosquitto, the real doctor/validate CLIs, the real installer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.publish as publish
import yaml

from edge.config import DEMO_CUSTOMER_SALT
from edge.fusion import hash_customer

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
RAW_ID = "LOYALTY-5151515151"
TOKEN = "tok-demo-salt-0123456789abcdef"
FIX = "shelfcast provision --customer-salt FILE"


def test_with_a_cloud_link_raw_checkins_are_refused_and_the_rest_works(tmp_path: Path, mosquitto: Any,
                                                                       node_process: Any, admin_node_yaml: Any,
                                                                       mqtt_spy: Any, free_port: Any,
                                                                       admin_http: Any) -> None:
    port = free_port()
    cfg = admin_node_yaml(tmp_path, port=port, cloud=mosquitto.url, token=TOKEN)
    spy = mqtt_spy(mosquitto.port)
    reversible = hash_customer(RAW_ID, DEMO_CUSTOMER_SALT)
    from_cloud = hash_customer(RAW_ID, "the-retailers-salt-on-the-cloud-side")  # hashed where the salt is
    p = node_process.start(cfg)
    out = ""
    try:
        out = node_process.wait_running(p)
        status, body = admin_http(port, "/api/checkin", {"customer": RAW_ID, "screen": "dairy-screen"},
                                  token=TOKEN)
        assert status == 409, (status, body)
        err = json.loads(body)["error"]
        assert FIX in err and "demo salt" in err and "mqtt.cloud.url" in err, err
        assert RAW_ID.encode() not in body and reversible.encode() not in body
        # the screens keep working
        status, rec = admin_http(port, "/api/screens/dairy-screen/recommendations", token=TOKEN)
        assert status == 200 and json.loads(rec)["items"], rec
        # the cloud's check-in, already hashed, still links a visit and goes up
        time.sleep(1.0)  # the node's cloud link subscribes after 'running'
        cmd = {"id": "c0ffee02", "command": "check_in", "args": {"customer": from_cloud, "session": "visit-cloud-1"}}
        publish.single("shelfcast/v1/s1/n1/cmd", json.dumps(cmd), qos=1, hostname="127.0.0.1", port=mosquitto.port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = spy.messages()
            up = [d for t, d in seen if t == "shelfcast/v1/s1/n1/events" and from_cloud.encode() in d]
            res = [d for t, d in seen if t == "shelfcast/v1/s1/n1/cmd/result" and b"c0ffee02" in d]
            if up and res:
                break
            time.sleep(0.2)
    finally:
        out += node_process.stop(p)
        seen = spy.messages()
        spy.close()
    assert up, "the cloud's hashed check-in did not reach the events topic"
    assert res and b'"ok": true' in res[0].replace(b'"ok":true', b'"ok": true'), res
    # the refused check-in left nothing: not its reversible hash, not the raw id, anywhere
    traffic = b"\n".join(t.encode() + b" " + d for t, d in seen)
    db = b"".join(f.read_bytes() for f in (tmp_path / "data").rglob("*") if f.is_file())
    for where, data in {"MQTT": traffic, "SQLite files": db, "node output": out.encode()}.items():
        assert reversible.encode() not in data, f"the demo-salt hash is in the {where}"
        assert RAW_ID.encode() not in data, f"the raw id is in the {where}"
    assert from_cloud.encode() in db  # the cloud's check-in was stored
    warn = [ln for ln in out.splitlines() if "demo salt" in ln]
    assert len(warn) == 1 and "WARNING" in warn[0] and "refused" in warn[0] and FIX in warn[0], out


def test_without_a_cloud_link_a_checkin_works_as_before(tmp_path: Path, node_process: Any, admin_node_yaml: Any,
                                                        free_port: Any, admin_http: Any) -> None:
    port = free_port()
    p = node_process.start(admin_node_yaml(tmp_path, port=port, cloud=None, token=TOKEN))
    try:
        node_process.wait_running(p)
        status, body = admin_http(port, "/api/checkin", {"customer": RAW_ID, "screen": "dairy-screen"},
                                  token=TOKEN)
    finally:
        out = node_process.stop(p)
    assert status == 200, (status, body)
    assert json.loads(body)["customer"] == hash_customer(RAW_ID, DEMO_CUSTOMER_SALT)
    assert "refused" not in out


def test_doctor_says_checkins_are_refused(tmp_path: Path, admin_node_yaml: Any, doctor_json: Any) -> None:
    cfg = admin_node_yaml(tmp_path, port=8080, cloud="mqtts://cloud.example.com:8883", token=TOKEN)
    c = doctor_json(cfg)["customer_salt"]
    assert c["status"] == "warn", c  # the node still serves and syncs: a warning, as without the cloud link
    assert "POST /api/checkin" in c["detail"] and "refused" in c["detail"], c
    assert FIX in c["fix"], c
    (tmp_path / "b").mkdir()
    c = doctor_json(admin_node_yaml(tmp_path / "b", port=8080, cloud=None, token=TOKEN))["customer_salt"]
    assert c["status"] == "warn" and "refused" not in c["detail"], c  # no cloud link: check-ins still work


def test_config_checks_say_it_before_a_restart(tmp_path: Path, admin_node_yaml: Any) -> None:
    cfg = admin_node_yaml(tmp_path, port=8080, cloud="mqtts://cloud.example.com:8883", token=TOKEN)
    for argv in (["-m", "edge.deployment", "validate", "--config", str(cfg)],  # what the installer runs
                 ["-m", "edge", "config", "validate", str(cfg)]):
        r = subprocess.run([sys.executable, "-P", *argv], capture_output=True, text=True, timeout=120, env=ENV,
                           cwd=ROOT)
        assert r.returncode == 0, r.stderr  # still valid: the node starts, serves, syncs
        assert "valid" in r.stdout
        assert "POST /api/checkin" in r.stderr and "refused" in r.stderr and FIX in r.stderr, (argv, r.stderr)
        assert "Traceback" not in r.stderr
    (tmp_path / "b").mkdir()
    quiet = admin_node_yaml(tmp_path / "b", port=8080, cloud=None, token=TOKEN)
    r = subprocess.run([sys.executable, "-m", "edge.deployment", "validate", "--config", str(quiet)],
                       capture_output=True, text=True, timeout=120, env=ENV, cwd=ROOT)
    assert r.returncode == 0 and "refused" not in r.stderr, r.stderr


def test_provision_with_a_cloud_broker_and_no_salt_says_checkins_will_be_refused(tmp_path: Path) -> None:
    def provision(d: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge.provision", "provision", "--store-id", "store-7",
                               "--node-id", "node-2", "--config", str(d / "etc" / "shelfcast.yaml"), "--no-qr",
                               *extra], capture_output=True, text=True, timeout=120, env=ENV, cwd=ROOT)

    r = provision(tmp_path, "--cloud-broker", "mqtts://cloud.example.com:8883")
    assert r.returncode == 0, r.stderr  # it still provisions: the node serves screens and syncs
    warn = [ln for ln in r.stderr.splitlines() if "demo salt" in ln]
    assert len(warn) == 1 and "POST /api/checkin" in warn[0] and "refused" in warn[0] and FIX in warn[0], r.stderr
    (tmp_path / "b").mkdir()
    r = provision(tmp_path / "b")  # no cloud broker yet: the plain warning
    assert r.returncode == 0 and "refused" not in r.stderr and "demo salt" in r.stderr, r.stderr


def test_the_installer_says_it_before_an_upgrade_replaces_anything(tmp_path: Path) -> None:
    """`deploy/install.sh` run again over an installed node on the demo salt with a cloud link (a --destdir
    scratch root and the fast venv of tests/deploy/test_upgrade.py): the note is printed by the config check that
    runs before pip replaces the code, and the upgrade goes on (the node still serves)."""
    import sysconfig

    install = ["bash", str(ROOT / "deploy" / "install.sh"), "--destdir", str(tmp_path / "root"),
               "--python", sys.executable, "--venv-options", "--without-pip",
               "--inherit-site", sysconfig.get_paths()["purelib"],
               "--pip-options", "--no-deps --no-build-isolation --no-index"]
    p = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "refused" not in p.stderr  # the template config has no cloud link
    cfg = tmp_path / "root" / "etc" / "shelfcast" / "shelfcast.yaml"
    raw = yaml.safe_load(cfg.read_text())
    raw.setdefault("mqtt", {})["cloud"] = {"url": "mqtts://cloud.example.com:8883"}
    cfg.write_text(yaml.safe_dump(raw))
    p = subprocess.run([*install, "--source", str(ROOT)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout
    before = p.stdout.split("before anything is replaced", 1)[1].split("==> venv", 1)[0]
    assert "POST /api/checkin" in before and "refused" in before and FIX in before, p.stdout

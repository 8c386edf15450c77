"""Privacy, end to end on a real node: a shopper checks in with a raw loyalty id; the raw id and the retailer's
salt appear nowhere the node writes, sends or serves — not in the SQLite files, the MQTT traffic (every topic),
the DEBUG log, the HTTP endpoints anyone on the store network can read, or the support bundle — while the salted
hash does reach the cloud (so the check-in really went through). docs/privacy.md is the inventory."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from edge.fusion import hash_customer

ROOT = Path(__file__).resolve().parents[2]
RAW_ID = "LOYALTY-4242424242"
SALT = "acme-privacy-salt-7f3c9e1d2b4a68f0e5c1"
TOKEN = "tok-privacy-0123456789abcdef"


def node_config(demo_yaml: Any, tmp_path: Path, broker_url: str, port: int) -> Path:
    (tmp_path / "salt").write_text(SALT + "\n")
    (tmp_path / "token").write_text(TOKEN + "\n")
    return demo_yaml(tmp_path, node={"store_id": "s1", "node_id": "n1", "data_dir": str(tmp_path / "data")},
                     camera={"enabled": False}, shelves={"enabled": False},
                     signage={"host": "127.0.0.1", "port": port, "admin_token": f"file:{tmp_path / 'token'}"},
                     fusion={"customer_salt": f"file:{tmp_path / 'salt'}"}, mqtt={"cloud": {"url": broker_url}},
                     logging={"level": "DEBUG"})


def http(port: int, path: str, body: dict[str, Any] | None = None) -> bytes:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=None if body is None else
                                 json.dumps(body).encode(), method="GET" if body is None else "POST",
                                 headers={} if body is None else {"Authorization": f"Bearer {TOKEN}",
                                                                   "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return bytes(r.read())


def test_a_raw_loyalty_id_and_the_salt_never_leave_their_place(tmp_path: Path, mosquitto: Any, node_process: Any,
                                                               demo_yaml: Any, mqtt_spy: Any, free_port: Any) -> None:
    port = free_port()
    cfg = node_config(demo_yaml, tmp_path, mosquitto.url, port)
    spy = mqtt_spy(mosquitto.port, "#")
    p = node_process.start(cfg)
    try:
        out = node_process.wait_running(p)
        answer = http(port, "/api/checkin", {"customer": RAW_ID, "session": "visit-privacy-1"})
        http(port, "/api/checkin", {"customer": f"  {RAW_ID} ", "screen": "dairy-screen"})
        served = b"".join(http(port, path) for path in (
            "/", "/api/screens", "/api/health", "/metrics", "/screens/dairy-screen",
            "/api/screens/dairy-screen/recommendations"))
        hashed = hash_customer(RAW_ID, SALT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(hashed.encode() in d for d in spy.payloads()):
                break
            time.sleep(0.2)
    finally:
        out = out + node_process.stop(p) if "out" in locals() else node_process.stop(p)
        spy.close()
    seen = spy.messages()
    log = tmp_path / "node.log"
    log.write_text(out)
    bundle = tmp_path / "bundle.tar.gz"
    r = subprocess.run([sys.executable, "-m", "edge", "support-bundle", "--config", str(cfg), "--out", str(bundle),
                        "--log-file", str(log)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    with tarfile.open(bundle) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert any(n.endswith("node.log") for n in members), sorted(members)  # the log really went in

    # the check-in went through: the hash is stored and sent upstream
    assert hashed.encode() in answer
    upstream = [(t, d) for t, d in seen if hashed.encode() in d]
    assert upstream and all(t == "shelfcast/v1/s1/n1/events" for t, _ in upstream), [t for t, _ in seen]
    db_bytes = b"".join(f.read_bytes() for f in (tmp_path / "data").rglob("*") if f.is_file())
    assert hashed.encode() in db_bytes

    places: dict[str, bytes] = {
        "MQTT (every topic)": b"\n".join(t.encode() + b" " + d for t, d in seen),
        "SQLite files": db_bytes,
        "node output (DEBUG)": out.encode(),
        "HTTP endpoints": served,
        "support bundle": b"\n".join(members.values()),
        "check-in answer": answer,
    }
    for where, data in places.items():
        assert RAW_ID.encode() not in data, f"the raw loyalty id is in the {where}"
        assert SALT.encode() not in data, f"the customer salt is in the {where}"
    # a screen's public JSON names the anonymous visit at most, never the shopper's key
    assert hashed.encode() not in served

"""Privacy: a shopper profile from the cloud is keyed by the salted hash (hash_customer: 64 lowercase hex, the only
form a check-in ever carries). A profile keyed by anything else — a raw loyalty number from a misconfigured cloud
export — is refused whole with an error naming the rule, and never lands in the node's database; the raw value is
echoed neither in the log nor in the error sent upstream."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from edge.fusion import hash_customer

RAW = "4242424242"  # a loyalty number: 10 digits, which the old pattern [A-Za-z0-9_-]{8,128} took as a key
SALT = "acme-profile-salt-0b1c2d3e4f5a6b7c8d9e"


def node_config(demo_yaml: Any, tmp_path: Path, broker_url: str) -> Path:
    (tmp_path / "salt").write_text(SALT + "\n")
    return demo_yaml(tmp_path, node={"store_id": "s1", "node_id": "n1", "data_dir": str(tmp_path / "data")},
                     camera={"enabled": False}, shelves={"enabled": False}, signage={"host": "127.0.0.1", "port": 0},
                     fusion={"customer_salt": f"file:{tmp_path / 'salt'}"}, mqtt={"cloud": {"url": broker_url}})


def test_a_profile_keyed_by_a_raw_id_is_refused(tmp_path: Path, mosquitto: Any, node_process: Any, demo_yaml: Any,
                                                mqtt_spy: Any) -> None:
    cfg = node_config(demo_yaml, tmp_path, mosquitto.url)
    hashed = hash_customer("loyalty-77", SALT)
    spy = mqtt_spy(mosquitto.port, "shelfcast/v1/s1/n1/error")  # a batch arrives decompressed
    p = node_process.start(cfg)
    try:
        out = node_process.wait_running(p)
        time.sleep(1.0)  # the node's cloud link subscribes after 'running'

        def send(payload: dict[str, Any]) -> None:
            spy.client.publish("shelfcast/v1/s1/n1/profiles/delta", json.dumps(payload), qos=1).wait_for_publish(5)

        send({"id": "pr-raw", "profiles": [{"customer": RAW, "demographics": {"age": "35-44"},
                                            "history": [["1082185", 1.7e9, 2.0]]}]})
        send({"id": "pr-upper", "profiles": [{"customer": hashed.upper()}]})
        send({"id": "pr-ok", "profiles": [{"customer": hashed, "demographics": {"age": "25-34"}}]})
        deadline = time.monotonic() + 20
        db = tmp_path / "data" / "shelfcast.db"
        keys: list[str] = []
        while time.monotonic() < deadline:
            if db.exists():
                with sqlite3.connect(db) as c:
                    keys = [r[0] for r in c.execute("SELECT customer FROM profiles")]
                if hashed in keys and b"".join(spy.payloads()).count(b"hash_customer") >= 2:
                    break
            time.sleep(0.2)
    finally:
        out = out + node_process.stop(p) if "out" in locals() else node_process.stop(p)
        spy.close()
    with sqlite3.connect(tmp_path / "data" / "shelfcast.db") as c:
        keys = [r[0] for r in c.execute("SELECT customer FROM profiles")]
    assert keys == [hashed], keys  # old code: ['4242424242', 'ABCD…' (upper case), hash]
    rejected = [ln for ln in out.splitlines() if "rejected message" in ln and "profiles/delta" in ln]
    assert len(rejected) == 2 and all("hash_customer" in ln for ln in rejected), out
    assert RAW not in out and hashed.upper() not in out
    upstream = b"".join(spy.payloads())
    assert upstream.count(b"hash_customer") >= 2, upstream
    assert RAW.encode() not in upstream

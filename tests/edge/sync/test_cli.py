"""The sync commands as a user runs them: keygen, model publish to a live node, clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def test_keygen_then_publish_a_signed_model_to_a_running_node(mosquitto: Any, node_config: Any, start_node: Any,
                                                               upstream: Any, steps: Any, fakes: Any,
                                                               tmp_path: Path, run_cli: Any) -> None:
    r = run_cli("model", "keygen", "--out", str(tmp_path / "keys"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    priv, pub = Path(out["private_key"]), Path(out["public_key"])
    assert priv.stat().st_mode & 0o777 == 0o600 and b"PUBLIC KEY" in pub.read_bytes()
    node = start_node(node_config(mosquitto.url, public_key=pub))
    model = fakes.write_model(tmp_path / "v9", "v9")
    r = run_cli("model", "publish", "--broker", mosquitto.url, "--store", "s1", "--node", "_all",
                "--model", str(model), "--sign-key", str(priv))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["version"] == "v9" and res["chunks"] >= 3 and res["topic"].endswith("/s1/_all/release/model/manifest")
    assert upstream.wait_for(lambda: [s for s in steps(upstream, "v9") if s[0] == "swapped"], 20), \
        steps(upstream, "v9")
    assert node.rec.model.version == "v9"


def test_user_errors_are_one_clear_line(tmp_path: Path, run_cli: Any) -> None:
    r = run_cli("cloud", "ingest", "--broker", "http://nope", "--out", str(tmp_path))
    assert r.returncode == 2 and "mqtt://HOST:PORT" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("model", "publish", "--broker", "mqtt://127.0.0.1:1", "--store", "s", "--model",
                str(tmp_path / "missing"), "--sign-key", str(tmp_path / "k"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "m.tflite").write_bytes(b"x" * 5000)
    r = run_cli("model", "publish", "--broker", "mqtt://127.0.0.1:1", "--store", "s", "--model",
                str(tmp_path / "m.tflite"), "--sign-key", str(tmp_path / "m.tflite"))
    assert r.returncode == 2 and "--sign-key" in r.stderr and "Traceback" not in r.stderr

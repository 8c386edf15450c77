"""The contract: every name an issue gives still exists and works (docs/contract.md is the table).

Operators' scripts, dashboards and the evaluation tooling call ShelfCast by the names the issues give:
commands, flags, HTTP paths, JSON keys, MQTT topics, config keys and files. One test per issue runs the
real command (the installed ``shelfcast`` script), real HTTP against a running node, a real Mosquitto and
the real Python API, and asserts those names, so a rename or a lost key fails here. Benches run once with
their smallest settings; their JSON is parsed strictly (``NaN`` is not JSON: jq and browsers refuse it).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "shipped"
DEMO_YAML = REPO / "edge" / "data" / "demo_store.yaml"


# -- helpers --------------------------------------------------------------------------------------------
def _shelfcast() -> list[str]:
    script = Path(sys.executable).with_name("shelfcast")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edge.cli"]


def sc(*args: str, timeout: float = 90, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``shelfcast ARGS`` as an operator's script would."""
    return subprocess.run([*_shelfcast(), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (jq, JavaScript and most JSON parsers refuse it)")


def strict_json(text: str) -> Any:
    """Parse one JSON document (the last non-empty line of ``text``) the way jq would: no NaN or Infinity."""
    line = [x for x in text.splitlines() if x.strip()][-1]
    return json.loads(line, parse_constant=_no_constant)


def has_keys(obj: dict[str, Any], keys: str) -> None:
    missing = [k for k in keys.split() if k not in obj]
    assert not missing, f"missing keys {missing} in {sorted(obj)}"


def no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-2000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_tree() -> dict[str, Any]:
    """The real CLI parser as {command: {"flags": set, "sub": {...}}} (what ``--help`` prints)."""
    from edge.cli import BROKEN_MODULES, build_parser

    def walk(p: argparse.ArgumentParser) -> dict[str, Any]:
        node: dict[str, Any] = {"flags": set(), "sub": {}}
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    node["sub"][name] = walk(sp)
            else:
                node["flags"].update(a.option_strings)
        return node

    tree = walk(build_parser())
    assert not BROKEN_MODULES, BROKEN_MODULES
    return tree


def flags(tree: dict[str, Any], path: str) -> set[str]:
    node = tree
    for part in path.split():
        assert part in node["sub"], f"`shelfcast {path}`: no {part!r} (have {sorted(node['sub'])})"
        node = node["sub"][part]
    return set(node["flags"])


def need(tree: dict[str, Any], path: str, wanted: str) -> None:
    missing = set(wanted.split()) - flags(tree, path)
    assert not missing, f"`shelfcast {path}` lost {sorted(missing)}"


# ``retained`` (the fixture in tests/conftest.py): the retained message a new subscriber gets; here asked as an
# operator's script would, with mosquitto_sub's MQTT 3.1.1 and 5 s: ``retained(port, topic, **AS_SCRIPT)``.
AS_SCRIPT: dict[str, Any] = {"timeout": 5.0, "protocol": mqtt.MQTTv311}


def demo_yaml_with(data_dir: Path) -> str:
    return re.sub(r"data_dir: [^,}\n]+", f"data_dir: {data_dir}", DEMO_YAML.read_text(), count=1)


def fields(cls: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# -- #2 Foundation ----------------------------------------------------------------------------------------
def test_issue2_foundation_cli_config_store_events_demo(tmp_path: Path, mosquitto: Any, retained: Any) -> None:
    tree = cli_tree()
    for cmd in ("demo", "run", "config", "version", "bench", "doctor", "firmware", "calibrate", "model", "cloud",
                "provision", "report", "support-bundle"):
        assert cmd in tree["sub"], f"`shelfcast {cmd}` is gone"
    assert {"validate", "schema"} <= set(tree["sub"]["config"]["sub"])
    need(tree, "run", "--config")
    need(tree, "demo", "--duration --seed --data-dir --port --cloud-broker")
    for f in ("pyproject.toml", "README.md", "docs/architecture.md", ".ci/run", "tests/run.sh", "tests/conftest.py",
              "edge/data/demo_store.yaml", "edge/data/catalogue.csv"):
        assert (REPO / f).is_file(), f

    r = sc("version")
    assert r.returncode == 0 and "0." in r.stdout, r.stderr

    r = sc("config", "schema")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    props = schema["properties"]
    for section in ("node", "layout", "shelves", "camera", "model", "signage", "mqtt", "logging"):
        assert section in props, f"config section {section} is gone"
    defs = schema["$defs"]

    def section_keys(name: str) -> set[str]:
        ref = props[name].get("$ref") or props[name]["anyOf"][0]["$ref"]
        return set(defs[ref.split("/")[-1]]["properties"])

    assert {"store_id", "node_id", "data_dir"} <= section_keys("node")
    assert {"zones", "shelves", "screens"} <= section_keys("layout")
    assert {"local", "cloud"} <= section_keys("mqtt")
    assert {"host", "port", "admin_token"} <= section_keys("signage")

    bad = tmp_path / "bad.yaml"
    bad.write_text("node:\n  store_id: s1\n  bogus_key: 1\nsignage:\n  port: eighty\n")
    r = sc("config", "validate", str(bad))
    no_traceback(r)
    assert r.returncode == 1 and "node.bogus_key" in r.stderr and "signage.port" in r.stderr, r.stderr
    assert "line 3" in r.stderr and "line 5" in r.stderr, r.stderr
    cross = tmp_path / "cross.yaml"
    cross.write_text("layout:\n  zones:\n  - {id: a, polygon: [[0, 0], [1, 0]]}\n"
                     "  shelves:\n  - {id: s1, zone: nowhere, slots: 3}\n"
                     "  screens:\n  - {id: sc1, zone: a, position: [0, 0]}\n  - {id: sc1, zone: a, position: [1, 0]}\n")
    r = sc("config", "validate", str(cross))
    no_traceback(r)  # old code: TypeError from the cross-checks on a wrong-typed `slots`
    assert r.returncode == 1, r.stderr
    for named in ("layout.zones.0.polygon", "at least 3 points", "layout.shelves.0.zone", "nowhere",
                  "layout.screens.1.id", "layout.shelves.0.slots"):
        assert named in r.stderr, (named, r.stderr)
    from edge.config import ConfigError, parse_config
    for text in ("layout: {zones: [{id: [1], polygon: [[0, 0], [1, 0], [1, 1]]}]}",
                 "layout: {shelves: [{id: s, zone: [x]}]}", "layout: {screens: [{id: s, shelf: [1]}]}",
                 "layout: {screens: [{id: {a: 1}}, {id: {a: 1}}]}",
                 "layout: {zones: [{id: a, polygon: [[0, 0], [1, 0], [1, 1]]}]}\n"
                 "signage: {promotions: [{zones: [[1]]}]}"):
        with pytest.raises(ConfigError):  # old code: TypeError (unhashable type: 'list')
            parse_config(text)
    assert sc("config", "validate", str(DEMO_YAML)).returncode == 0
    r = sc("run", "--config", str(tmp_path / "missing.yaml"))
    no_traceback(r)
    assert r.returncode == 1 and "file not found" in r.stderr, r.stderr

    # `shelfcast bench store --json --rate R` (the #2 closing note's SD-wear and latency command)
    r = sc("bench", "store", "--json", "--events", "50", "--rate", "500", "--flush-interval-ms", "20")
    assert r.returncode == 0, r.stderr
    has_keys(strict_json(r.stdout), "events rate commit_latency_p50_ms bytes_written_per_1000_events")
    r = sc("bench", "store", "--json", "--events", "0")
    no_traceback(r)  # old code: IndexError (--events 0) / ZeroDivisionError (--rate 0) tracebacks
    assert r.returncode == 2 and "--events must be at least 1" in r.stderr, r.stderr

    from edge.events import Impression, RecommendationSet, ShelfEvent, ShopperEvent, TrackUpdate
    assert {"session", "sku", "action", "zone", "t"} <= set(fields(ShopperEvent))
    assert {"screen", "session", "items", "model_version", "t"} <= set(fields(RecommendationSet))
    assert {"screen", "session", "skus", "model_version", "t"} <= set(fields(Impression))
    for cls in (ShelfEvent, TrackUpdate, ShopperEvent, RecommendationSet, Impression):
        assert callable(getattr(cls, "to_json", None)), f"{cls.__name__}.to_json is gone"

    # the demo, with every flag the issues name (#2, #6's --port, #7's --cloud-broker)
    data = tmp_path / "demo-data"
    r = sc("demo", "--duration", "3", "--seed", "1", "--data-dir", str(data), "--port", str(free_port()),
           "--cloud-broker", mosquitto.url, "--quiet", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = strict_json(r.stdout)
    has_keys(summary, "events recommendations pushed outbox_pending")
    assert summary["recommendations"] > 0 and summary["outbox_pending"] == 0, summary
    with sqlite3.connect(data / "shelfcast.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"products", "planogram", "stock", "profiles", "sessions", "events", "outbox", "impressions",
            "models"} <= tables, tables
    # #7: availability and state under shelfcast/v1/<store>/<node>/
    assert retained(mosquitto.port, "shelfcast/v1/demo-store/demo-node/availability", **AS_SCRIPT) == b"stopped"
    state = json.loads(retained(mosquitto.port, "shelfcast/v1/demo-store/demo-node/state", **AS_SCRIPT) or b"{}")
    has_keys(state, "status version store node model outbox_pending screens shelves")


# -- #3 The ranking model ---------------------------------------------------------------------------------
def test_issue3_ranker_api_manifest_model_cli_bench(tmp_path: Path) -> None:
    from edge.ranking import ModelError, Ranker, Recommendation, RecRequest
    from edge.ranking.features import DEMOGRAPHIC_FIELDS

    ranker = Ranker.load(path=None)
    vocab = list(ranker.vocabulary)
    assert len(vocab) >= 1000 and all(isinstance(s, str) for s in vocab[:50])
    profile = {"age": "35-44", "income": "50-74K", "home_ownership": "Homeowner", "marital_status": "Married",
               "household_size": "2", "household_comp": "2 Adults No Kids", "kids_count": "0"}
    assert set(profile) <= set(DEMOGRAPHIC_FIELDS), DEMOGRAPHIC_FIELDS
    req = RecRequest(history=[(vocab[0], datetime(2026, 11, 20, 10), 1.0)], session=[vocab[1], "no-such-sku"],
                     store_id=None, zone=None, when=datetime(2026, 12, 1, 10), profile=profile,
                     exclude=(vocab[2],), k=10)
    recs = ranker.recommend(req)
    assert 1 <= len(recs) <= 10 and all(isinstance(x, Recommendation) for x in recs)
    assert fields(Recommendation) == ["sku", "score", "reason"]
    assert vocab[2] not in [x.sku for x in recs]
    assert ranker.stats["unknown_sku"] == 1, ranker.stats  # "ignored and counted"
    assert ranker.recommend(RecRequest()), "an empty request falls back, never an empty list"
    clamped = ranker.stats["clamped"]
    for bad_when in (float("nan"), 1e30, -1e30):  # "NaN or out-of-range context is clamped" (old code: 1e30 crashed)
        assert len(ranker.recommend(RecRequest(when=bad_when, session=[vocab[1]]))) == 10
    assert ranker.stats["clamped"] == clamped + 3, ranker.stats
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in SHIPPED.iterdir():
        (broken / f.name).write_bytes(f.read_bytes()[: 1000] if f.name == "model.tflite" else f.read_bytes())
    with pytest.raises(ModelError, match=r"sha256|truncated|size"):
        Ranker.load(path=broken)

    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    has_keys(manifest, "version created training_data vocabulary feature_spec metrics sha256")
    has_keys(manifest["training_data"], "first_utc last_utc")
    for inp in manifest["feature_spec"]["inputs"]:
        has_keys(inp, "name shape dtype quantization")
    assert (SHIPPED / "model.tflite").is_file() and (REPO / "docs" / "model-card.md").is_file()

    tree = cli_tree()
    for sub in ("prepare", "train", "quantize", "evaluate", "export", "all", "stage2", "publish", "keygen"):
        assert sub in tree["sub"]["model"]["sub"], f"`shelfcast model {sub}` is gone"
    for sub in ("prepare", "train", "quantize", "evaluate", "export", "all"):
        need(tree, f"model {sub}", "--work --seed --progress --no-progress")
    need(tree, "model prepare", "--input")
    need(tree, "model export", "--out --version")
    work = tmp_path / "work"
    work.mkdir()
    r = sc("model", "prepare", "--work", str(work), "--input", str(tmp_path / "none"), "--no-progress")
    no_traceback(r)
    assert r.returncode == 2 and "transactions/products/customers" in r.stderr, r.stderr
    r = sc("model", "train", "--work", str(work), "--no-progress")
    no_traceback(r)
    assert r.returncode == 2 and "shelfcast model prepare" in r.stderr, r.stderr

    r = sc("bench", "ranking", "--json", "--n-invoke", "20", "--n-requests", "20")
    assert r.returncode == 0, r.stderr[-2000:]
    has_keys(strict_json(r.stdout), "catalog_items invoke_p50_us invoke_p99_us recommend_p50_us recommend_p99_us "
                                    "rss_mb")
    r = sc("bench", "ranking", "--json", "--n-requests", "0")
    no_traceback(r)  # old code: IndexError traceback
    assert r.returncode == 2 and "--n-requests must be at least 1" in r.stderr, r.stderr


# -- #4 firmware_bridge -----------------------------------------------------------------------------------
def test_issue4_firmware_cli_sim_shelf_event_bench(tmp_path: Path) -> None:
    from edge.events import ShelfEvent
    from firmware_bridge.sim import SimulatedStore

    assert fields(ShelfEvent)[:6] == ["shelf", "slot", "sku", "delta_units", "confidence", "t"]
    assert (REPO / "docs" / "shelf-protocol.md").is_file()
    tree = cli_tree()
    assert {"list", "flash", "tare", "calibrate", "pack"} <= set(tree["sub"]["firmware"]["sub"])
    need(tree, "firmware list", "--port --json")
    need(tree, "firmware flash", "--port")
    need(tree, "bench serial", "--json")
    r = subprocess.run([sys.executable, "-m", "firmware_bridge.sim", "--help"], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 0 and "--controllers" in r.stdout, r.stderr

    with SimulatedStore(seed=3) as sim:
        sim.add_controller("ctrl-contract", slot_count=4)
        r = sc("firmware", "list", "--json", "--port", sim.port("ctrl-contract"))
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)["controllers"][0]
    has_keys(row, "port controller hardware firmware")
    assert row["controller"] == "ctrl-contract", row
    image = tmp_path / "bad.scfw"
    image.write_bytes(b"xx")
    r = sc("firmware", "flash", "--port", str(tmp_path / "no-port"), str(image))
    no_traceback(r)
    assert r.returncode == 2 and "nothing was written" in r.stderr, r.stderr

    r = sc("bench", "serial", "--json", "--shelf-hours", "0.1", "--pty-seconds", "1", "--frames", "200")
    assert r.returncode == 0, r.stderr[-2000:]
    res = strict_json(r.stdout)  # old code: NaN latencies when no pick was timed over the pty
    has_keys(res, "frames_per_s event_latency_p50_us event_latency_p99_us pick_detection_recall "
                  "unit_count_accuracy false_events_per_shelf_hour")


# -- #5 Camera positioning and fusion ---------------------------------------------------------------------
def test_issue5_vision_calibrate_track_update_bench(tmp_path: Path) -> None:
    from edge.events import TrackUpdate
    from edge.fusion import Fusion

    assert fields(TrackUpdate) == ["track", "x", "y", "zone", "dwell", "t"]
    assert callable(getattr(Fusion, "check_in", None))
    tree = cli_tree()
    need(tree, "calibrate camera", "--point --points --snapshot --preview --write --json")
    r = sc("calibrate", "camera", "--synthetic", "--no-preview", "--json")
    assert r.returncode == 0, r.stderr
    has_keys(strict_json(r.stdout), "homography reprojection_rmse_cm")
    r = sc("calibrate", "camera", "--point", "1,1:0,0", "--point", "2,2:1,1", "--no-preview")
    no_traceback(r)
    assert r.returncode == 2 and "at least 4" in r.stderr, r.stderr

    r = sc("bench", "vision", "--json", "--seconds", "3", "--shoppers", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    has_keys(strict_json(r.stdout), "fps position_rmse_m zone_accuracy id_switches_per_10_shopper_min "
                                    "attribution_recall attribution_precision")


def test_issue5_check_in_by_mqtt_and_by_http(tmp_path: Path, mosquitto: Any) -> None:
    """"A session linked to a known customer when a check-in arrives (... app check-in by MQTT or HTTP)": the
    cloud sends `cmd` `check_in` with the salted hash (old code: the command was rejected, no MQTT path)."""
    import paho.mqtt.publish as publish

    from edge.config import NodeConfig
    from edge.events import ShopperEvent
    from edge.fusion import hash_customer

    helpers = _signage_helpers()
    raw = helpers.demo_config(tmp_path / "node").model_dump(by_alias=True)
    raw["mqtt"]["cloud"]["url"] = mosquitto.url
    node = helpers.RunningNode(NodeConfig.model_validate(raw))
    try:
        sync = node.node.sync
        assert sync is not None and sync.link.connected.wait(15), "the node did not reach the cloud broker"
        customer = hash_customer("loyalty-42", node.config.fusion.customer_salt.get_secret_value())
        node.publish(ShopperEvent(session="s-9", sku="1029743", action="pick", zone="dairy", shelf="dairy-1", slot=0))
        cmd = {"id": "c0ffee01", "command": "check_in", "args": {"customer": customer, "screen": "dairy-screen"}}
        publish.single("shelfcast/v1/demo-store/demo-node/cmd", json.dumps(cmd), qos=1, hostname="127.0.0.1",
                       port=mosquitto.port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            v = node.sync(lambda: node.node.recommender.visits.get("s-9"))
            if v is not None and v.customer == customer:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the MQTT check-in did not link session s-9 (errors: {sync.errors})")
        with pytest.raises(ValueError, match="salted hash"):
            sync._check_in_event({"customer": "loyalty-42", "screen": "dairy-screen"})  # a raw id is refused
        with pytest.raises(ValueError, match="known screens"):
            sync._check_in_event({"customer": customer, "screen": ["dairy-screen"]})
        status, _, _ = node.get("/api/checkin", method="POST", body=b"{}")
        assert status in (401, 403), "the HTTP check-in is an admin action"
    finally:
        node.stop()


# -- #6 Signage -------------------------------------------------------------------------------------------
def _signage_helpers() -> Any:
    spec = importlib.util.spec_from_file_location("contract_signage_conftest",
                                                  REPO / "tests" / "edge" / "signage" / "conftest.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_issue6_signage_http_mqtt_report_bench(tmp_path: Path, mosquitto: Any, retained: Any) -> None:
    helpers = _signage_helpers()
    node = helpers.RunningNode(helpers.demo_config(tmp_path / "node", mosquitto.url))
    try:
        screens = [s.id for s in node.config.layout.screens]
        status, ctype, index = node.get("/")
        assert status == 200 and "text/html" in ctype
        for sid in screens:
            assert f"/screens/{sid}" in index, f"/ does not link /screens/{sid}"
        status, ctype, _ = node.get(f"/screens/{screens[0]}")
        assert status == 200 and "text/html" in ctype
        rec = node.json(f"/api/screens/{screens[0]}/recommendations")
        has_keys(rec, "screen session items model_version updated")
        assert rec["screen"] == screens[0] and rec["items"], rec
        for item in rec["items"]:
            has_keys(item, "sku name price reason")
        health = node.json("/api/health")
        assert health["status"] in ("ok", "degraded"), health
        status, ctype, metrics = node.get("/metrics")
        assert status == 200 and ctype.startswith("text/plain") and "# TYPE " in metrics
        status, _, body = node.get("/api/screens/no-such-screen/recommendations")
        assert status == 404 and screens[0] in body, body
        status, ctype, body = node.get("/screens/no-such-screen")
        assert status == 404 and "text/html" in ctype and f"/screens/{screens[0]}" in body
        status, _, body = node.get(f"/api/screens/{screens[0]}/recommendations?limit=abc")
        assert status == 400 and "limit" in body, body
        status, _, _ = node.get("/api/checkin", method="POST", body=b"{}")
        assert status in (401, 403), "admin actions need the token"

        topic = f"shelfcast/v1/{node.config.node.store_id}/{node.config.node.node_id}/screens/{screens[0]}" \
                "/recommendations"
        payload = retained(mosquitto.port, topic, **{**AS_SCRIPT, "timeout": 10})
        assert payload is not None, f"nothing retained on {topic}"
        msg = json.loads(payload)
        has_keys(msg, "schema screen session items model_version updated")
        assert (REPO / "docs" / "signage-screenshot.png").is_file()
        data_dir = Path(node.config.node.data_dir)
    finally:
        node.stop()

    r = sc("report", "--data-dir", str(data_dir), "--json")
    assert r.returncode == 0, r.stderr
    has_keys(strict_json(r.stdout), "screens models")
    tree = cli_tree()
    need(tree, "bench e2e", "--json --rate --duration --screens")
    r = sc("bench", "e2e", "--json", "--rate", "50", "--duration", "1", "--screens", "1", "--no-mqtt", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    has_keys(strict_json(r.stdout), "rate events push_p50_ms push_p99_ms dropped rss_mb")


# -- #7 Cloud sync ----------------------------------------------------------------------------------------
def test_issue7_topics_ingest_publish_bench_sync(tmp_path: Path, mosquitto: Any, retained: Any) -> None:
    from edge.sync.topics import Topics

    t = Topics("shelfcast/v1", "s1", "n1")
    assert (t.events, t.availability, t.state) == ("shelfcast/v1/s1/n1/events", "shelfcast/v1/s1/n1/availability",
                                                    "shelfcast/v1/s1/n1/state")
    subs = set(t.subscriptions())
    for kind in ("catalogue", "planogram", "stock", "profiles"):
        assert f"shelfcast/v1/s1/n1/{kind}/delta" in subs
    assert {"shelfcast/v1/s1/n1/release/+/manifest", "shelfcast/v1/s1/n1/cmd", "shelfcast/v1/s1/n1/config"} <= subs
    assert (REPO / "docs" / "mqtt.md").is_file()

    tree = cli_tree()
    need(tree, "cloud ingest", "--broker --out")
    need(tree, "model publish", "--broker --store --model --sign-key --version")
    need(tree, "bench sync", "--json")
    p = subprocess.Popen([*_shelfcast(), "cloud", "ingest", "--broker", mosquitto.url, "--out", str(tmp_path / "in")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert p.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # SIGTERM once it listens (its stderr says so)
            line = p.stderr.readline()
            if not line or "subscribed" in line:
                break
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    has_keys(strict_json(out), "received unique")

    r = sc("model", "keygen", "--out", str(tmp_path / "keys"))
    assert r.returncode == 0, r.stderr
    key = json.loads(r.stdout)["private_key"]
    r = sc("model", "keygen", "--out", "/proc/no-such-dir")
    no_traceback(r)  # old code: FileNotFoundError traceback
    assert r.returncode == 2 and "pick a writable directory" in r.stderr, r.stderr
    r = sc("model", "publish", "--broker", mosquitto.url, "--store", "s1", "--model", str(SHIPPED),
           "--sign-key", key, "--version", "2026.12.01-contract")
    assert r.returncode == 0, r.stderr
    manifest = json.loads(retained(mosquitto.port, "shelfcast/v1/s1/_all/release/model/manifest", **AS_SCRIPT) or b"{}")
    has_keys(manifest, "version sha256 size signature")
    assert manifest["version"] == "2026.12.01-contract"
    chunk = retained(mosquitto.port, "shelfcast/v1/s1/_all/release/model/chunk/0", **AS_SCRIPT)
    assert chunk is not None and len(chunk) <= 128 * 1024

    r = sc("bench", "sync", "--json", "--events-per-s", "100", "--outage-s", "1", "--before-s", "1", "--after-s", "1",
           timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    has_keys(strict_json(r.stdout), "events outage_s received_unique lost duplicates_delivered drain_events_per_s "
                                    "bytes_written_per_1000_events")


# -- #8 Field deployment ----------------------------------------------------------------------------------
def test_issue8_install_units_doctor_provision_support_bundle(tmp_path: Path) -> None:
    r = subprocess.run(["bash", str(REPO / "deploy" / "install.sh"), "--help"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and "--destdir" in r.stdout and "--prefix" in r.stdout and "--firstboot" in r.stdout
    r = subprocess.run(["bash", str(REPO / "deploy" / "uninstall.sh"), "--help"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and "--purge" in r.stdout
    unit = (REPO / "deploy" / "systemd" / "shelfcast.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=",
                 "PrivateTmp=yes", "StartLimitBurst="):
        assert line in unit, line
    assert (REPO / "deploy" / "systemd" / "shelfcast-kiosk.service").is_file()
    assert (REPO / "docs" / "technician-guide.md").is_file()

    tree = cli_tree()
    need(tree, "doctor", "--config --json")
    need(tree, "provision", "--store-id --node-id --cloud-broker --cert --model-key --qr --boot-partition --config")
    need(tree, "support-bundle", "--config --out")

    cfg = tmp_path / "shelfcast.yaml"
    (tmp_path / "data").mkdir()
    cfg.write_text(demo_yaml_with(tmp_path / "data"))
    r = sc("doctor", "--config", str(cfg), "--json", "--no-firmware", "--timeout", "1")
    no_traceback(r)
    checks = json.loads(r.stdout)["checks"]
    assert checks and all(set(c) >= {"name", "status", "detail", "fix"} for c in checks), checks
    worst = max({"fail": 2, "warn": 1}.get(c["status"], 0) for c in checks)
    assert r.returncode == worst, (r.returncode, [(c["name"], c["status"]) for c in checks])

    prov = tmp_path / "prov"
    r = sc("provision", "--store-id", "s9", "--node-id", "n9", "--cloud-broker", "mqtts://cloud.example:8883",
           "--config", str(prov / "shelfcast.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    for k in ("config", "key", "csr", "qr"):
        assert Path(res[k]).is_file() or (prov / Path(res[k]).name).is_file(), (k, res)
    assert "store_id: s9" in (prov / "shelfcast.yaml").read_text()

    out = tmp_path / "bundle.tar.gz"
    r = sc("support-bundle", "--config", str(cfg), "--out", str(out))
    assert r.returncode == 0, r.stderr
    with tarfile.open(out) as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"config.yaml", "doctor.json", "versions.json", "database.json"} <= names, names

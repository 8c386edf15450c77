"""``shelfcast doctor`` against a healthy demo node, then against each broken condition.

Real parts: the demo store's node started and stopped (SQLite cache on disk), a
real Mosquitto (plain and TLS with certificates made here), a simulated shelf
controller behind a real pty (firmware version via the real handshake), the
bundled int8 model through LiteRT. Every failure must be named with its fix.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from edge import doctor
from edge.config import load_config
from edge.doctor import Check, run_checks

SIM_CTRL = "ctrl-doctor-1"


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def write_cfg(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sim() -> Iterator[Any]:
    from firmware_bridge.sim import SimulatedStore

    with SimulatedStore(seed=3) as store:
        store.add_controller(SIM_CTRL, slot_count=6)
        yield store


@pytest.fixture(scope="module")
def golden_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo store's node run once (start, stop): its data dir, copied by each test that breaks it."""
    raw = yaml.safe_load(resources.files("edge").joinpath("data/demo_store.yaml").read_text())
    data = tmp_path_factory.mktemp("golden") / "data"
    raw["node"]["data_dir"] = str(data)
    raw["signage"] = {"enabled": False}
    raw["camera"] = {"enabled": False}
    raw["shelves"] = {"enabled": False}
    cfg_path = write_cfg(data.parent / "node.yaml", raw)

    from edge.app import Node

    async def run_once() -> None:
        node = Node(load_config(cfg_path))
        await node.start()
        await node.stop()

    asyncio.run(run_once())
    assert (data / "shelfcast.db").exists()
    return data


@pytest.fixture
def healthy(tmp_path: Path, mosquitto: Any, sim: Any, golden_data: Path) -> dict[str, Any]:
    """The demo store's config, pointed at real local services, with the cache its node left on disk."""
    raw = yaml.safe_load(resources.files("edge").joinpath("data/demo_store.yaml").read_text())
    data = tmp_path / "data"
    shutil.copytree(golden_data, data)
    raw["node"]["data_dir"] = str(data)
    raw["node"]["timezone"] = "UTC"
    raw["signage"] = {"enabled": False, "host": "127.0.0.1", "port": 0}
    raw["mqtt"] = {"local": {"url": mosquitto.url}, "cloud": {"url": mosquitto.url}}
    raw["shelves"] = {"enabled": True, "ports": [{"port": sim.port(SIM_CTRL)}]}
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    pub = tmp_path / "model-signing.pub"
    pub.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    raw["model"] = {"public_key": str(pub)}
    cfg_path = write_cfg(tmp_path / "node.yaml", raw)
    return {"raw": raw, "path": cfg_path, "tmp": tmp_path}


def bundled_model_loads() -> bool:
    try:
        from edge.ranking.ranker import Ranker

        Ranker.load()
    except Exception:
        return False
    return True


def disk_has_room(path: str) -> bool:
    return shutil.disk_usage(path).free / 1e6 >= doctor.WARN_FREE_MB


def test_healthy_demo_node(healthy: dict[str, Any]) -> None:
    checks = run_checks(healthy["path"], broker_timeout_s=3)
    c = by_name(checks)
    for name in ("config", "database", "shelf_permissions", "shelves", "camera", "calibration",
                 "local_broker", "cloud_broker"):
        assert c[name].status == "pass", c[name]
    # data_dir passes unless this machine's disk really is low (then the warning is the right answer)
    want = "pass" if disk_has_room(healthy["raw"]["node"]["data_dir"]) else "warn"
    assert c["data_dir"].status == want, c["data_dir"]
    assert SIM_CTRL in c["shelves"].detail and "fw " in c["shelves"].detail  # real handshake over the pty
    assert "CONNACK ok" in c["local_broker"].detail
    assert "integrity ok" in c["database"].detail
    if bundled_model_loads():
        assert c["model"].status == "pass", c["model"]
        assert "sha256 verified" in c["model"].detail and "signing key pinned" in c["model"].detail
    assert all(ch.status != "fail" for ch in checks if ch.name != "model"), [ch for ch in checks
                                                                            if ch.status == "fail"]
    for ch in checks:  # whatever warns here (clock in a container, …) still says how to fix it
        if ch.status in ("warn", "fail"):
            assert ch.fix, ch


def test_missing_model(healthy: dict[str, Any]) -> None:
    raw = healthy["raw"]
    raw["model"]["path"] = str(healthy["tmp"] / "no-such-release")
    c = by_name(run_checks(write_cfg(healthy["tmp"] / "m.yaml", raw), query_firmware=False))["model"]
    assert c.status == "fail" and "not found" in c.detail
    assert "model.path" in c.fix and "install.sh" in c.fix


def test_corrupted_model_release(healthy: dict[str, Any], tmp_path: Path) -> None:
    src = doctor._default_model_dir()
    if not (src / "model.tflite").exists():
        pytest.skip("no bundled model in this checkout yet")
    rel = tmp_path / "release"
    rel.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (rel / f.name).write_bytes(f.read_bytes())
    blob = (rel / "model.tflite").read_bytes()
    (rel / "model.tflite").write_bytes(blob[: len(blob) // 2])  # truncated download
    raw = healthy["raw"]
    raw["model"]["path"] = str(rel)
    c = by_name(run_checks(write_cfg(tmp_path / "m.yaml", raw), query_firmware=False))["model"]
    assert c.status == "fail" and ("sha256" in c.detail or "refused" in c.detail), c
    assert "re-fetch" in c.fix or "reinstall" in c.fix


def test_corrupted_database(healthy: dict[str, Any]) -> None:
    db = Path(healthy["raw"]["node"]["data_dir"]) / "shelfcast.db"
    with open(db, "r+b") as f:  # clobber the header and the first pages
        f.write(os.urandom(8192))
    c = by_name(run_checks(healthy["path"], query_firmware=False))["database"]
    assert c.status == "fail" and "corrupt" in c.detail
    assert "systemctl restart shelfcast" in c.fix


def test_database_recovered_copy_is_a_warning(healthy: dict[str, Any]) -> None:
    data = Path(healthy["raw"]["node"]["data_dir"])
    (data / "shelfcast.db.corrupt-20261128T101010").write_bytes(b"junk")
    c = by_name(run_checks(healthy["path"], query_firmware=False))["database"]
    assert c.status == "warn" and "corrupt-20261128T101010" in c.detail and c.fix


def test_unreachable_brokers(healthy: dict[str, Any], mosquitto: Any) -> None:
    raw = healthy["raw"]
    raw["mqtt"]["cloud"] = {"url": f"mqtt://127.0.0.1:{free_port()}"}  # nothing listens there
    path = write_cfg(healthy["tmp"] / "b.yaml", raw)
    mosquitto.stop()  # and the local broker is down
    c = by_name(run_checks(path, query_firmware=False, broker_timeout_s=1))
    for name in ("local_broker", "cloud_broker"):
        assert c[name].status == "fail" and "unreachable" in c[name].detail, c[name]
        assert "systemctl status mosquitto" in c[name].fix and "nc -vz" in c[name].fix


def test_port_that_is_not_mqtt(healthy: dict[str, Any]) -> None:
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()  # accepts TCP, never answers MQTT
    try:
        raw = healthy["raw"]
        raw["mqtt"]["cloud"] = {"url": f"mqtt://127.0.0.1:{srv.getsockname()[1]}"}
        c = by_name(run_checks(write_cfg(healthy["tmp"] / "n.yaml", raw), query_firmware=False,
                               broker_timeout_s=0.5))["cloud_broker"]
    finally:
        srv.close()
    assert c.status == "fail" and "no CONNACK" in c.detail and "client certificate" in c.fix


def _as_unprivileged_user(path: str, mode: int) -> bool:
    """os.access as a user who owns nothing: only the 'other' permission bits count (root ignores them)."""
    bits = os.stat(path).st_mode
    need = (0o004 if mode & os.R_OK else 0) | (0o002 if mode & os.W_OK else 0)
    return bits & need == need


def test_no_serial_permission(healthy: dict[str, Any], pty_pair: Any) -> None:
    raw = healthy["raw"]
    raw["shelves"]["ports"] = [{"port": pty_pair.slave_path}]
    path = write_cfg(healthy["tmp"] / "p.yaml", raw)
    os.chmod(pty_pair.slave_path, 0o000)
    access = os.access if os.geteuid() != 0 else _as_unprivileged_user
    c = by_name(run_checks(path, access=access, query_firmware=False))["shelf_permissions"]
    assert c.status == "fail" and pty_pair.slave_path in c.detail and "permission" in c.detail
    assert "usermod -aG dialout shelfcast" in c.fix
    os.chmod(pty_pair.slave_path, 0o666)
    c = by_name(run_checks(path, access=access, query_firmware=False))["shelf_permissions"]
    assert c.status == "pass"


def test_missing_shelf_port(healthy: dict[str, Any]) -> None:
    raw = healthy["raw"]
    raw["shelves"]["ports"] = [{"port": "/dev/shelfcast/shelf-nope"}]
    c = by_name(run_checks(write_cfg(healthy["tmp"] / "s.yaml", raw), query_firmware=False))["shelf_permissions"]
    assert c.status == "fail" and "not present" in c.detail and "/dev/shelfcast" in c.fix


@pytest.mark.parametrize("homography,expect", [
    ([[1, 2, 3], [2, 4, 6], [0, 0, 1]], "singular"),
    ([[0.5, 0, 900], [0, 0.5, 900], [0, 0, 1]], "outside the floor plan"),
])
def test_bad_calibration(healthy: dict[str, Any], homography: list[list[float]], expect: str) -> None:
    raw = healthy["raw"]
    raw["camera"] = {"enabled": True, "source": "synthetic", "homography": homography}
    c = by_name(run_checks(write_cfg(healthy["tmp"] / "c.yaml", raw), query_firmware=False))["calibration"]
    assert c.status == "fail" and expect in c.detail
    assert "shelfcast calibrate camera" in c.fix
    assert "--grab snapshot.png" in c.fix  # how to get the pixels the points need


def test_good_calibration_and_missing_camera(healthy: dict[str, Any]) -> None:
    raw = healthy["raw"]
    # 640x480 image onto the 16 m x 10 m floor: 2.5 cm per pixel
    raw["camera"] = {"enabled": True, "source": "synthetic", "homography": [[0.025, 0, 0], [0, 0.0208, 0], [0, 0, 1]]}
    c = by_name(run_checks(write_cfg(healthy["tmp"] / "g.yaml", raw), query_firmware=False))
    assert c["calibration"].status == "pass"
    raw["camera"]["source"] = "/dev/video97"
    c = by_name(run_checks(write_cfg(healthy["tmp"] / "v.yaml", raw), query_firmware=False))
    assert c["camera"].status == "fail" and "/dev/video97 does not exist" in c["camera"].detail
    assert "video group" in c["camera"].fix


def test_signage_page_and_running_node_health(healthy: dict[str, Any], node_thread: Any) -> None:
    raw = healthy["raw"]
    raw["signage"] = {"enabled": True, "host": "127.0.0.1", "port": free_port()}
    raw["shelves"] = {"enabled": False}
    raw["camera"] = {"enabled": False}
    path = write_cfg(healthy["tmp"] / "sg.yaml", raw)
    c = doctor.check_signage(load_config(path))  # the node is not running
    assert c.status == "fail" and "does not answer" in c.detail and "systemctl start shelfcast" in c.fix

    with node_thread(path):
        c = doctor.check_signage(load_config(path))
    assert c.status in ("pass", "warn") and "running node reports" in c.detail, c
    if c.status == "warn":
        assert c.fix


def test_invalid_config_and_data_dir(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("node:\n  store_id: 's 1'\n  nodeid: x\n")
    checks = run_checks(bad, query_firmware=False)
    c = by_name(checks)
    assert c["config"].status == "fail" and "nodeid" in c["config"].detail
    assert "config validate" in c["config"].fix
    assert c["database"].status == "skip"
    ro = tmp_path / "ro"
    ro.mkdir()
    c2 = doctor.check_data_dir(tmp_path / "absent")
    assert c2.status == "fail" and "chown shelfcast" in c2.fix
    c3 = doctor.check_data_dir(ro, min_free_mb=10**12)  # more than any disk: the free-space failure
    assert c3.status == "fail" and "journalctl --vacuum-size" in c3.fix


def test_power_and_throttling(tmp_path: Path) -> None:
    f = tmp_path / "get_throttled"
    f.write_text("0x50005\n")  # under-voltage now + throttled now, and both have occurred
    c = doctor.check_power(f, vcgencmd=None)
    assert c.status == "fail" and "under-voltage now" in c.detail and "power supply" in c.fix
    f.write_text("0x50000\n")
    assert doctor.check_power(f, vcgencmd=None).status == "warn"
    f.write_text("0x0\n")
    assert doctor.check_power(f, vcgencmd=None).status == "pass"
    assert doctor.check_power(tmp_path / "absent", vcgencmd=None).status == "skip"


def test_sd_card_wear(tmp_path: Path) -> None:
    dev = tmp_path / "block" / "mmcblk0" / "device"
    dev.mkdir(parents=True)
    (dev / "name").write_text("SC64G\n")
    assert doctor.check_sd_card(root=tmp_path / "not-a-mount", sys_block=tmp_path / "block").status == "pass"
    (dev / "life_time").write_text("0x0a 0x0b\n")
    c = doctor.check_sd_card(root=tmp_path / "not-a-mount", sys_block=tmp_path / "block")
    assert c.status == "fail" and "replace the card" in c.fix


def test_exit_code_is_worst_status() -> None:
    mk = lambda s: Check("x", s, "d", "f")  # noqa: E731
    assert doctor.exit_code([mk("pass"), mk("skip")]) == 0
    assert doctor.exit_code([mk("pass"), mk("warn")]) == 1
    assert doctor.exit_code([mk("warn"), mk("fail"), mk("pass")]) == 2


# -- TLS to the cloud broker -----------------------------------------------------------------------------

def _cert(subject: str, key: Any, issuer: tuple[str, Any] | None, *, ca: bool = False, san: str | None = None,
          days: int = 30) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    iname, ikey = issuer if issuer else (subject, key)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, iname)])).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        import ipaddress

        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san))]), critical=False)
    return b.sign(ikey, hashes.SHA256())


def _pem(path: Path, obj: Any) -> Path:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


def test_tls_cloud_broker(healthy: dict[str, Any], mosquitto: Any, tmp_path: Path) -> None:
    ca_key, srv_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("ShelfCast test CA", ca_key, None, ca=True)
    other_ca = _cert("Some other CA", other_key, None, ca=True)
    srv = _cert("broker", srv_key, ("ShelfCast test CA", ca_key), san="127.0.0.1")
    port = free_port()
    mosquitto.extra = [f"listener {port} 127.0.0.1", f"cafile {_pem(tmp_path / 'ca.crt', ca)}",
                       f"certfile {_pem(tmp_path / 'srv.crt', srv)}", f"keyfile {_pem(tmp_path / 'srv.key', srv_key)}"]
    mosquitto.restart()
    raw = healthy["raw"]
    raw["mqtt"]["cloud"] = {"url": f"mqtts://127.0.0.1:{port}", "ca_file": str(tmp_path / "ca.crt")}
    c = by_name(run_checks(write_cfg(tmp_path / "t.yaml", raw), query_firmware=False))["cloud_broker"]
    assert c.status == "pass" and "TLSv1" in c.detail, c
    raw["mqtt"]["cloud"]["ca_file"] = str(_pem(tmp_path / "other.crt", other_ca))
    c = by_name(run_checks(write_cfg(tmp_path / "u.yaml", raw), query_firmware=False))["cloud_broker"]
    assert c.status == "fail" and "TLS verification failed" in c.detail and "CA" in c.fix, c


# -- the command itself ------------------------------------------------------------------------------------

def test_cli_json_and_text(healthy: dict[str, Any]) -> None:
    db = Path(healthy["raw"]["node"]["data_dir"]) / "shelfcast.db"
    db.write_bytes(b"this is not a database" * 100)
    r = subprocess.run([sys.executable, "-m", "edge", "doctor", "--config", str(healthy["path"]), "--json",
                        "--no-firmware"], capture_output=True, text=True, timeout=120)  # the shelfcast CLI
    assert r.returncode == 2, r.stderr
    out = json.loads(r.stdout)
    assert list(out) == ["checks"]
    assert all(list(c) == ["name", "status", "detail", "fix"] for c in out["checks"])
    assert all(c["status"] in doctor.STATUSES for c in out["checks"])
    bad = [c for c in out["checks"] if c["status"] == "fail"]
    names = {c["name"] for c in bad} - (set() if bundled_model_loads() else {"model"})
    assert names == {"database"} and all(c["fix"] for c in bad)
    r = subprocess.run([sys.executable, "-m", "edge.doctor", "doctor", "--config", str(healthy["path"]),
                        "--no-firmware"], capture_output=True, text=True, timeout=120)  # the fast path
    text, code = r.stdout, r.returncode
    assert code == 2 and "FAIL  database" in text and "fix: restart the node" in text
    assert len(text.splitlines()) <= 40  # one screen

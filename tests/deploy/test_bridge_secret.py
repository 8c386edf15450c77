"""The cloud bridge password (mqtt.cloud.password) must not end up in a world-readable broker config.

The renderer (``python -m edge.deployment render``) and a real ``deploy/install.sh --destdir`` run (fast, as in
tests/deploy/test_install.py: the venv inherits this checkout's site-packages), with a config that has a cloud
password.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

PASSWORD = "br1dge-S3cret-0xC0FFEE"
CONFIG = f"""node:
  store_id: store-3
  node_id: node-1
  data_dir: /var/lib/shelfcast
shelves:
  enabled: false
signage:
  host: 0.0.0.0
  port: 8080
mqtt:
  local:
    url: mqtt://127.0.0.1:1883
  cloud:
    url: mqtt://cloud.example.com:1883
    username: store-3
    password: {PASSWORD}
"""


def test_render_writes_the_broker_config_private(tmp_path: Path, deploy: Any) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mosquitto.conf").write_text("old\n")
    os.chmod(out / "mosquitto.conf", 0o644)  # a file from an earlier render: narrowed, not kept 0644
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "edge.deployment", "render", "--config", str(cfg),
                            "--out-dir", str(out)], capture_output=True, text=True, timeout=120,
                           cwd=deploy.REPO,
                           env={**os.environ, "PYTHONPATH": str(deploy.REPO)})
        assert r.returncode == 0, r.stderr
        conf = out / "mosquitto.conf"
        assert f"remote_password {PASSWORD}" in conf.read_text()  # mosquitto needs it, so it is there
        assert stat.S_IMODE(conf.stat().st_mode) & 0o077 == 0, oct(conf.stat().st_mode)


def test_install_puts_the_bridge_password_in_a_0640_root_mosquitto_file(tmp_path: Path, deploy: Any) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(CONFIG)
    root = tmp_path / "root"
    r = deploy.install(root, "--config", str(cfg), "--no-kiosk")
    assert r.returncode == 0, r.stdout + r.stderr
    conf = root / "etc/mosquitto/conf.d/shelfcast.conf"
    assert f"remote_password {PASSWORD}" in conf.read_text()
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640, oct(conf.stat().st_mode)  # not world-readable
    actions = (root / "opt/shelfcast/install-actions.log").read_text().splitlines()
    assert "chown root:mosquitto /etc/mosquitto/conf.d/shelfcast.conf" in actions  # mosquitto's group reads it
    # an install from before the fix left it 0644: the next run narrows it (and changes nothing else)
    os.chmod(conf, 0o644)
    r = subprocess.run(["bash", str(root / "opt/shelfcast/lib/install.sh"), "--destdir", str(root)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    assert "wrote /etc/mosquitto/conf.d/shelfcast.conf" in r.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mosquitto_user_reads_the_installed_0640_file_others_cannot(tmp_path: Path, deploy: Any) -> None:
    """The recorded `chown root:mosquitto` applied, a real mosquitto run as the mosquitto user loads the bridge
    config (on a free loopback port instead of 1883); run as nobody it cannot open it."""
    if os.geteuid() != 0 or shutil.which("mosquitto") is None:
        pytest.skip("needs root (to chown and to switch users) and mosquitto")
    try:
        mq = pwd.getpwnam("mosquitto")
        gid = grp.getgrnam("mosquitto").gr_gid
    except KeyError:
        pytest.skip("no mosquitto user/group (apt-get install mosquitto)")
    cfg = tmp_path / "node.yaml"
    cfg.write_text(CONFIG)
    root = tmp_path / "root"
    r = deploy.install(root, "--config", str(cfg), "--no-kiosk")
    assert r.returncode == 0, r.stdout + r.stderr
    port = _free_port()
    conf_dir = Path(tempfile.mkdtemp(prefix="shelfcast-conf.d-", dir="/tmp"))  # pytest's tmp is root-only (0700)
    os.chmod(conf_dir, 0o755)  # only the file's own mode and group decide who reads it
    conf = conf_dir / "shelfcast.conf"
    installed = root / "etc/mosquitto/conf.d/shelfcast.conf"
    conf.write_text(installed.read_text().replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")
                    + "persistence false\nlog_dest stdout\n")
    os.chmod(conf, stat.S_IMODE(installed.stat().st_mode))  # the installed mode (0640) ...
    os.chown(conf, 0, gid)  # ... and the recorded chown root:mosquitto
    nobody = subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                             "mosquitto", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert nobody.returncode != 0 and "Unable to open config file" in nobody.stdout + nobody.stderr
    p = subprocess.Popen(["setpriv", "--reuid", str(mq.pw_uid), "--regid", str(gid), "--clear-groups",
                          "mosquitto", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = False
    try:
        deadline = time.monotonic() + 20
        while p.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                started = True
                break
            except OSError:
                time.sleep(0.1)
    finally:
        p.terminate()
        out = p.communicate(timeout=20)[0]
        shutil.rmtree(conf_dir)
    assert started, f"mosquitto (as the mosquitto user) did not start: {out}"
    assert "Connecting bridge" in out and "cloud.example.com" in out, out  # it read the bridge section

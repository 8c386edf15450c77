"""``deploy/install.sh --destdir`` run for real into a scratch root, then the node started from that install.

Speed choice (documented in docs/technician-guide.md, "Building images and CI"): the venv is created
``--without-pip`` and ``--inherit-site`` points it at this checkout's venv site-packages, so pip installs
ShelfCast itself (``--no-deps --no-index``, a real wheel build of this checkout) and the runtime
dependencies come from what is already installed. Everything else in the script runs exactly as on a node,
except the system actions (apt-get, useradd, systemctl, udevadm, chown), which destdir mode records.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

UNITS = ("shelfcast.service", "shelfcast-kiosk.service", "shelfcast-firstboot.service")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, deploy: Any) -> Iterator[Path]:
    had_user = _user_exists("shelfcast")
    host_unit = Path("/etc/systemd/system/shelfcast.service")
    host_unit_before = host_unit.stat().st_mtime if host_unit.exists() else None
    r = tmp_path_factory.mktemp("destdir")
    p = deploy.install(r)
    assert p.returncode == 0, p.stdout + p.stderr
    # no effect outside the destdir
    assert _user_exists("shelfcast") == had_user
    assert (host_unit.stat().st_mtime if host_unit.exists() else None) == host_unit_before
    yield r


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_layout_and_recorded_system_actions(root: Path) -> None:
    for link in ("opt/shelfcast/bin/shelfcast", "usr/local/bin/shelfcast"):  # absolute: right once the root is /
        assert os.readlink(root / link) == "/opt/shelfcast/venv/bin/shelfcast"
    for f in ("opt/shelfcast/venv/bin/shelfcast", "opt/shelfcast/bin/shelfcast-kiosk",
              "opt/shelfcast/lib/install.sh", "opt/shelfcast/lib/uninstall.sh", "etc/shelfcast/shelfcast.yaml",
              "etc/udev/rules.d/99-shelfcast.rules", "etc/mosquitto/conf.d/shelfcast.conf",
              "etc/systemd/journald.conf.d/shelfcast.conf", *(f"etc/systemd/system/{u}" for u in UNITS)):
        assert (root / f).exists(), f
    assert (root / "var/lib/shelfcast").is_dir() and (root / "etc/shelfcast/keys").is_dir()
    assert (root / "etc/shelfcast/keys").stat().st_mode & 0o077 == 0
    actions = (root / "opt/shelfcast/install-actions.log").read_text()
    assert re.search(r"apt-get install .*python3-venv.*mosquitto.*chromium", actions)
    assert "useradd --system" in actions and "usermod -aG dialout,video shelfcast" in actions
    assert "systemctl enable mosquitto.service shelfcast-firstboot.service shelfcast.service" in actions
    assert "systemctl enable /usr/share/systemd/tmp.mount" in actions  # /tmp on tmpfs
    assert "udevadm control --reload-rules" in actions
    # no TensorFlow is asked for: plain install of the package, no extras
    site = next((root / "opt/shelfcast/venv/lib").glob("python3*/site-packages"))
    assert (site / "edge" / "doctor.py").exists()
    meta = next(site.glob("shelfcast-*.dist-info")) / "METADATA"
    requires = [ln for ln in meta.read_text().splitlines() if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert requires and not any("tensorflow" in ln for ln in requires)


def test_destdir_install_names_no_destdir(root: Path) -> None:
    """An image is built with --destdir DIR, then DIR becomes the card's root: nothing installed may name DIR
    (venv script shebangs, pyvenv.cfg, activate scripts, .pth files, the source paths in .pyc files)."""
    hits = subprocess.run(["grep", "-rlF", "--", str(root), *(str(root / d) for d in ("opt/shelfcast", "etc", "usr"))],
                          capture_output=True, text=True, timeout=60)
    assert hits.returncode == 1 and hits.stdout == "", hits.stdout + hits.stderr  # 1: grep found nothing
    venv = root / "opt/shelfcast/venv"
    assert (venv / "bin/shelfcast").read_text().splitlines()[0] == "#!/opt/shelfcast/venv/bin/python"
    assert 'VIRTUAL_ENV="/opt/shelfcast/venv"' in (venv / "bin/activate").read_text()
    pyc = next(venv.glob("lib/python3*/site-packages/edge/__pycache__/doctor.*.pyc"))
    assert b"/opt/shelfcast/venv/lib/" in pyc.read_bytes()  # tracebacks name the file where it will be


def test_destdir_install_runs_once_dir_is_the_root(root: Path) -> None:
    """The card as the node sees it: DIR/opt at /opt and DIR itself gone (a private mount namespace), then the
    commands shelfcast.service and a technician run."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        if os.environ.get("SHELFCAST_REQUIRE_SERVICES") == "1":
            pytest.fail("this check needs root and unshare(1) (util-linux): run the deploy tests with sudo in CI")
        pytest.skip("needs root and unshare(1) to bind-mount the destdir's /opt over /opt")
    from edge import __version__

    script = (f'mount --bind "{root}/opt" /opt && mount -t tmpfs none "{root}" && test ! -e "{root}/opt" && '
              "/opt/shelfcast/venv/bin/shelfcast version && /opt/shelfcast/bin/shelfcast version && "
              ". /opt/shelfcast/venv/bin/activate && echo \"$VIRTUAL_ENV\" && "
              "python -c 'import sys, edge; print(sys.prefix, edge.__file__)'")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], capture_output=True,
                       text=True, timeout=120, cwd="/")  # not this checkout: `python -c` would import edge from it
    assert r.returncode == 0, f"exit {r.returncode}: {r.stdout}{r.stderr}"
    out = r.stdout.splitlines()
    assert [json.loads(v)["shelfcast"] for v in out[:2]] == [__version__, __version__], r.stdout
    assert out[2] == "/opt/shelfcast/venv", r.stdout
    prefix, edge_file = out[3].split()
    assert prefix == "/opt/shelfcast/venv" and edge_file.startswith("/opt/shelfcast/venv/lib/"), r.stdout


def test_udev_mosquitto_journald(root: Path) -> None:
    rules = (root / "etc/udev/rules.d/99-shelfcast.rules").read_text()
    assert 'ATTRS{idVendor}=="1209", ATTRS{idProduct}=="5c5c"' in rules
    assert 'SYMLINK+="shelfcast/shelf-$env{ID_SERIAL_SHORT}"' in rules and 'GROUP="dialout"' in rules
    conf = (root / "etc/mosquitto/conf.d/shelfcast.conf").read_text()
    assert "listener 1883 127.0.0.1" in conf and "connection" not in conf  # not provisioned: no bridge yet
    j = (root / "etc/systemd/journald.conf.d/shelfcast.conf").read_text()
    assert "SystemMaxUse=64M" in j and "RuntimeMaxUse=" in j


def rendered_units(root: Path, dest: Path) -> list[Path]:
    """The installed units with the program prefix pointed at the destdir, so ExecStart paths exist."""
    dest.mkdir(exist_ok=True)
    out = []
    for u in UNITS:
        text = (root / "etc/systemd/system" / u).read_text().replace("/opt/shelfcast", str(root / "opt/shelfcast"))
        (dest / u).write_text(text)
        out.append(dest / u)
    return out


def need_systemd_analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("SHELFCAST_REQUIRE_SERVICES") == "1":
            pytest.fail("systemd-analyze is required in CI: sudo apt-get install -y systemd")
        pytest.skip("systemd-analyze not installed")


def test_units_pass_systemd_analyze_verify(root: Path, tmp_path: Path) -> None:
    need_systemd_analyze()
    units = rendered_units(root, tmp_path / "units")
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", "--recursive-errors=no", *map(str, units)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # the same check does catch a broken unit
    bad = tmp_path / "units" / "shelfcast.service"
    bad.write_text(bad.read_text().replace("Type=notify", "Type=notifyy"))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", "--recursive-errors=no", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "notifyy" in r.stderr
    svc = (root / "etc/systemd/system/shelfcast.service").read_text()
    for line in ("Type=notify", "WatchdogSec=30", "Restart=on-failure", "StartLimitBurst=5", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "ReadWritePaths=/var/lib/shelfcast", "PrivateTmp=yes",
                 "SupplementaryGroups=dialout video", "User=shelfcast"):
        assert line in svc, line


def test_node_unit_hardening_score(root: Path, tmp_path: Path) -> None:
    need_systemd_analyze()
    units = rendered_units(root, tmp_path / "units")
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(units[0])], capture_output=True,
                       text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 3.0  # measured 1.9 ("OK"); docs/technician-guide.md


def entry_point(root: Path) -> list[str]:
    """The installed `shelfcast` script run from the destdir: its shebang names /opt/shelfcast/venv/bin/python,
    the path it has once the destdir is the root, so here the venv's interpreter (found by its own path) runs it."""
    venv = root / "opt/shelfcast/venv"
    return [str(venv / "bin/python"), str(venv / "bin/shelfcast")]


def run_config(root: Path, tmp: Path) -> Path:
    """The installed config with data_dir inside the destdir and the signage on a free port."""
    raw = yaml.safe_load((root / "etc/shelfcast/shelfcast.yaml").read_text())
    raw["node"]["data_dir"] = str(root / "var/lib/shelfcast")
    raw["signage"] = {"enabled": True, "host": "127.0.0.1", "port": 0}
    raw["mqtt"] = {}
    p = tmp / "run.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_node_from_the_install_notifies_systemd(root: Path, tmp_path: Path) -> None:
    """Type=notify as systemd sees it: READY=1 after start, WATCHDOG=1 at half WATCHDOG_USEC, STOPPING=1."""
    sock_path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(90)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="400000")
    proc = subprocess.Popen([*entry_point(root), "run", "--config", str(run_config(root, tmp_path))], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = s.recv(4096).decode()
        assert first.startswith("READY=1") and f"MAINPID={proc.pid}" in first
        t0 = time.monotonic()
        pings = [s.recv(4096).decode() for _ in range(3)]
        assert pings == ["WATCHDOG=1"] * 3
        assert time.monotonic() - t0 < 5
        proc.send_signal(signal.SIGTERM)
        assert s.recv(4096).decode().startswith("STOPPING=1")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        s.close()
    assert (root / "var/lib/shelfcast/shelfcast.db").exists()


def test_doctor_from_the_install(root: Path, tmp_path: Path) -> None:
    cfg = run_config(root, tmp_path)
    r = subprocess.run([*entry_point(root), "doctor", "--config", str(cfg), "--json", "--no-firmware"],
                       capture_output=True, text=True, timeout=120)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode in (1, 2)  # an unprovisioned node with no shelves plugged in is not healthy
    assert checks["config"]["status"] == "warn" and "provision" in checks["config"]["fix"]
    data = root / "var/lib/shelfcast"  # passes unless this machine's disk really is low (then it warns)
    from edge.doctor import WARN_FREE_MB

    room = shutil.disk_usage(data if data.exists() else root).free / 1e6 >= WARN_FREE_MB
    assert checks["data_dir"]["status"] == ("pass" if room else "warn"), checks["data_dir"]
    assert checks["shelves"]["status"] == "warn" and checks["shelves"]["fix"]


def test_rerun_is_idempotent_and_keeps_the_config(root: Path, deploy: Any) -> None:
    cfg = root / "etc/shelfcast/shelfcast.yaml"
    cfg.write_text(cfg.read_text().replace("node_id: node-1", "node_id: node-7"))
    before = {p: p.stat().st_mtime_ns for p in (root / "etc").rglob("*") if p.is_file()}
    p = deploy.install(root)
    assert p.returncode == 0, p.stderr
    assert "wrote" not in p.stdout, p.stdout  # nothing that was right was rewritten
    assert "node_id: node-7" in cfg.read_text()
    assert (root / "etc/shelfcast/shelfcast.yaml.dist").exists()
    after = {p: p.stat().st_mtime_ns for p in (root / "etc").rglob("*") if p.is_file()}
    changed = [p for p in before if after.get(p) != before[p]]
    assert changed == [], changed
    # the copy the installer keeps re-runs it on the node (after `provision --cert`, a config change …)
    p = subprocess.run(["bash", str(root / "opt/shelfcast/lib/install.sh"), "--destdir", str(root)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "keeping the installed ShelfCast" in p.stdout and "wrote" not in p.stdout, p.stdout


def write_bundle(root: Path, tmp_path: Path, store_id: str, node_id: str) -> bytes:
    """What `shelfcast provision --boot-partition` writes onto the card's boot partition; returns the CA."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=9))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    boot = root / "boot/firmware"
    boot.mkdir(parents=True)
    python = str(root / "opt/shelfcast/venv/bin/python")  # the technician's laptop would run `shelfcast provision`
    r = subprocess.run([python, "-m", "edge.provision", "provision", "--boot-partition", str(boot),
                        "--store-id", store_id, "--node-id", node_id, "--cloud-broker",
                        "mqtts://cloud.example.com:8883", "--ca-file", str(ca_file)],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return ca_file.read_bytes()


# systemctl verbs that queue a job which starts the unit (or restarts it) and, without --no-block, wait for it
STARTING_VERBS = {"start", "restart", "try-restart", "reload-or-restart", "try-reload-or-restart", "condrestart",
                  "force-reload", "reload", "isolate"}


def blocking_jobs_on(command: str, later: set[str]) -> list[str]:
    """The units in LATER that COMMAND (a `systemctl ...` line) starts and waits for. A unit ordered Before=X that
    does this at boot waits for X's job while X's job waits for it: a deadlock until TimeoutStartSec."""
    argv = shlex.split(command)
    at = next((i for i, a in enumerate(argv) if os.path.basename(a) == "systemctl"), None)
    if at is None:
        return []
    args = argv[at + 1:]
    if "--no-block" in args:
        return []
    words = [a for a in args if not a.startswith("-")]
    if not words or not (words[0] in STARTING_VERBS or (words[0] == "enable" and "--now" in args)):
        return []
    units = {w if "." in w else f"{w}.service" for w in words[1:]}
    return sorted(units & later)


def unit_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_blocking_jobs_on_sees_the_deadlock() -> None:
    later = {"mosquitto.service"}
    assert blocking_jobs_on("systemctl restart mosquitto.service", later) == ["mosquitto.service"]
    assert blocking_jobs_on("/bin/systemctl -q start mosquitto", later) == ["mosquitto.service"]
    assert blocking_jobs_on("systemctl enable --now mosquitto.service", later) == ["mosquitto.service"]
    assert blocking_jobs_on("systemctl --no-block try-restart mosquitto.service", later) == []
    assert blocking_jobs_on("systemctl restart shelfcast.service", later) == []
    assert blocking_jobs_on("systemctl enable mosquitto.service", later) == []


def test_no_unit_waits_for_a_unit_ordered_after_it(root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every installed unit with Before=X: neither its Exec lines nor the script they run (install.sh --firstboot,
    run here for real on a card with a first-boot bundle; destdir mode records each systemctl it issues)
    starts X and waits for it."""
    card = tmp_path_factory.mktemp("card")
    shutil.copytree(root, card, symlinks=True, dirs_exist_ok=True)
    shutil.rmtree(card / "boot", ignore_errors=True)
    write_bundle(card, tmp_path_factory.mktemp("laptop"), "store-8", "node-3")
    log = card / "opt/shelfcast/install-actions.log"
    checked = []
    for unit in sorted((card / "etc/systemd/system").glob("shelfcast*.service")):
        settings = unit_settings(unit)
        later = {u for v in settings.get("Before", []) for u in v.split()}
        if not later:
            continue
        for key in ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecCondition"):
            for line in settings.get(key, []):
                command = line.lstrip("-@:+!")
                argv = shlex.split(command)
                commands = [command]
                if argv[0] == "/opt/shelfcast/lib/install.sh":
                    log.write_text("")
                    p = subprocess.run(["bash", str(card / argv[0].lstrip("/")), "--destdir", str(card), *argv[1:]],
                                       capture_output=True, text=True, timeout=300)
                    assert p.returncode == 0, p.stdout + p.stderr
                    assert "first boot done" in p.stdout, p.stdout  # the whole first boot ran, broker part too
                    commands = log.read_text().splitlines()
                    assert any("systemctl" in c for c in commands), commands
                else:
                    assert os.path.basename(argv[0]) == "systemctl", f"{unit.name}: extend this test for {command}"
                for c in commands:
                    assert blocking_jobs_on(c, later) == [], (
                        f"{unit.name} is ordered Before={' '.join(sorted(later))} but runs `{c}`, which waits "
                        "for a job that waits for it: a boot-time deadlock until TimeoutStartSec")
                checked.append((unit.name, command))
    assert ("shelfcast-firstboot.service", "/opt/shelfcast/lib/install.sh --firstboot --boot-dir /boot/firmware") \
        in checked, checked


def test_firstboot_bundle_then_bridge(root: Path, tmp_path: Path) -> None:
    ca_pem = write_bundle(root, tmp_path, "store-5", "node-2")
    boot = root / "boot/firmware"
    p = subprocess.run(["bash", str(root / "opt/shelfcast/lib/install.sh"), "--destdir", str(root), "--firstboot",
                        "--boot-dir", "/boot/firmware"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    raw = yaml.safe_load((root / "etc/shelfcast/shelfcast.yaml").read_text())
    assert raw["node"]["store_id"] == "store-5"
    conf = (root / "etc/mosquitto/conf.d/shelfcast.conf").read_text()
    assert "address cloud.example.com:8883" in conf and "topic shelfcast/v1/store-5/node-2/local/# both 1" in conf
    assert "bridge_cafile /etc/mosquitto/certs/shelfcast/ca.crt" in conf
    assert (root / "etc/mosquitto/certs/shelfcast/ca.crt").read_bytes() == ca_pem
    assert not list((boot / "shelfcast").glob("keys/*.key"))  # the private key left the boot partition
    actions = (root / "opt/shelfcast/install-actions.log").read_text()
    assert "chown mosquitto:mosquitto /etc/mosquitto/certs/shelfcast/ca.crt" in actions
    # a second boot finds no bundle and does nothing
    p = subprocess.run(["bash", str(root / "opt/shelfcast/lib/install.sh"), "--destdir", str(root), "--firstboot",
                        "--boot-dir", "/boot/firmware"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "nothing to do" in p.stdout


def test_uninstall_keeps_data_unless_purged(tmp_path_factory: pytest.TempPathFactory, root: Path,
                                            deploy: Any) -> None:
    r2 = tmp_path_factory.mktemp("copy")
    shutil.copytree(root, r2, symlinks=True, dirs_exist_ok=True)
    (r2 / "var/lib/shelfcast/shelfcast.db").write_bytes(b"keep me")
    p = subprocess.run(["bash", str(deploy.UNINSTALL), "--destdir", str(r2)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert not (r2 / "opt/shelfcast").exists() and not (r2 / "etc/systemd/system/shelfcast.service").exists()
    assert not (r2 / "etc/udev/rules.d/99-shelfcast.rules").exists()
    assert (r2 / "var/lib/shelfcast/shelfcast.db").read_bytes() == b"keep me"
    assert (r2 / "etc/shelfcast/shelfcast.yaml").exists()
    p = subprocess.run(["bash", str(deploy.UNINSTALL), "--destdir", str(r2), "--purge"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and not (r2 / "var/lib/shelfcast").exists() and not (r2 / "etc/shelfcast").exists()
    assert "userdel shelfcast" in (r2 / "var/log/shelfcast-uninstall-actions.log").read_text()


def test_bad_usage(tmp_path: Path, deploy: Any) -> None:
    p = subprocess.run(["bash", str(deploy.INSTALL), "--frobnicate"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "unknown option" in p.stderr
    p = subprocess.run(["bash", str(deploy.INSTALL), "--destdir", str(tmp_path), "--prefix", "relative"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "absolute" in p.stderr



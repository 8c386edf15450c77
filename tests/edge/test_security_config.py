"""Security audit (2026-12-01): a cloud broker configured with TLS files but a plain mqtt:// URL is refused.

The link speaks TLS only for ``mqtts://``; with ``mqtt://`` it ignored ``ca_file``/``cert_file``/``key_file`` and sent
events (and any password) in clear text while the config looked like TLS. Checked through the real CLI
(``shelfcast config validate``, ``shelfcast provision``) on real files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "edge"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHELFCAST_CONFIG": str(cwd / "unused.yaml")}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def _pem_ca(path: Path) -> Path:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audit CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize("files", [("ca_file",), ("ca_file", "cert_file", "key_file")])
def test_plain_mqtt_url_with_tls_files_is_refused(tmp_path: Path, files: tuple[str, ...]) -> None:
    ca = _pem_ca(tmp_path / "ca.pem")
    lines = ["mqtt:", "  cloud:", "    url: mqtt://broker.example.com:1883"]
    lines += [f"    {f}: {ca}" for f in files]
    cfg = tmp_path / "node.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    r = _run("config", "validate", str(cfg), cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "mqtt.cloud" in out and "not be encrypted" in out and "mqtts://broker.example.com:8883" in out, out
    assert "Traceback" not in out
    cfg.write_text("\n".join(lines).replace("mqtt://broker.example.com:1883", "mqtts://broker.example.com:8883")
                   + "\n")
    r = _run("config", "validate", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_provision_refuses_a_plain_broker_with_a_ca_file(tmp_path: Path) -> None:
    ca = _pem_ca(tmp_path / "ca.pem")
    cfg = tmp_path / "etc" / "shelfcast.yaml"
    r = _run("provision", "--config", str(cfg), "--store-id", "s1", "--node-id", "n1", "--no-qr",
             "--cloud-broker", "mqtt://broker.example.com:1883", "--ca-file", str(ca), cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "mqtts://broker.example.com:8883" in out and "Traceback" not in out, out
    assert not cfg.exists()  # nothing half-written
    r = _run("provision", "--config", str(cfg), "--store-id", "s1", "--node-id", "n1", "--no-qr",
             "--cloud-broker", "mqtts://broker.example.com:8883", "--ca-file", str(ca), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mqtts://broker.example.com:8883" in cfg.read_text()


def test_provision_keeps_secrets_of_the_old_config_private(tmp_path: Path) -> None:
    cfg = tmp_path / "etc" / "shelfcast.yaml"
    cfg.parent.mkdir()
    cfg.write_text("node:\n  store_id: s1\nsignage:\n  admin_token: literal-admin-token-77\n")
    os.chmod(cfg, 0o644)  # a hand-written config, world-readable
    r = _run("provision", "--config", str(cfg), "--store-id", "s1", "--node-id", "n1", "--no-qr", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    bak = cfg.with_name("shelfcast.yaml.bak")
    assert "literal-admin-token-77" in bak.read_text()
    assert cfg.stat().st_mode & 0o777 == 0o640
    assert bak.stat().st_mode & 0o007 == 0, oct(bak.stat().st_mode)  # not world-readable
    keys = tmp_path / "etc" / "keys"
    assert keys.stat().st_mode & 0o777 == 0o700 and (keys / "node.key").stat().st_mode & 0o777 == 0o600
    assert "literal-admin-token-77" not in r.stdout + r.stderr


@pytest.mark.parametrize("value", ["env:SC_AUDIT_EMPTY", "''", "'   '", "file:{empty}"])
def test_an_empty_admin_token_is_refused(tmp_path: Path, value: str) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"signage:\n  admin_token: {value.format(empty=empty)}\n")
    env = {**os.environ, "SC_AUDIT_EMPTY": ""}
    r = subprocess.run([*CLI, "config", "validate", str(cfg)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env=env)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "signage.admin_token" in out and "admin token is empty" in out and "Traceback" not in out, out
    cfg.write_text("signage:\n  admin_token: null\n")  # no token: admin actions off, a valid config
    r = subprocess.run([*CLI, "config", "validate", str(cfg)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr

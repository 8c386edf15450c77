"""``shelfcast provision`` keeps the previous config as ``shelfcast.yaml.bak``; an old secret does not linger in it.

Before 2026-12-01 the .bak was a byte copy (0640): after a rotation (``provision --admin-token FILE``,
``--password-file FILE``) a config that held the old admin token or broker password literally kept them in the
.bak until the next provision. Now it is 0600 and holds no literal secret the new config replaced; a secret the new
config still holds stays, and a config that loses nothing is kept byte for byte. The support bundle never holds
the .bak. Real CLI processes on real files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

CLI = [sys.executable, "-m", "edge"]
OLD_TOKEN = "old-admin-token-0123456789abcdef"
OLD_PASSWORD = "old-broker-password-hunter2"
NEW_TOKEN = "new-admin-token-fedcba9876543210"
NEW_PASSWORD = "new-broker-password-swordfish"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHELFCAST_CONFIG": str(cwd / "unused.yaml")}
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def hand_written(etc: Path, data: Path) -> Path:
    """A config with the secrets written in it literally (as the guide allowed before provision had the flags)."""
    cfg = etc / "shelfcast.yaml"
    etc.mkdir(parents=True)
    cfg.write_text(
        "# store 17, back office Pi (hand-written)\n"
        f"node:\n  store_id: s17\n  node_id: n1\n  data_dir: {data}\n"
        "mqtt:\n  cloud:\n    url: mqtts://broker.example.com:8883\n    username: node-s17\n"
        f"    password: {OLD_PASSWORD}\n"
        f"signage:\n  port: 8099\n  admin_token: {OLD_TOKEN}\n")
    return cfg


def test_a_rotated_token_and_password_do_not_stay_in_the_kept_config(tmp_path: Path) -> None:
    """Old code: the .bak held both old secrets, mode 0640."""
    cfg = hand_written(tmp_path / "etc", tmp_path / "data")
    (tmp_path / "token").write_text(NEW_TOKEN + "\n")
    (tmp_path / "pw").write_text(NEW_PASSWORD + "\n")
    r = run("provision", "--config", str(cfg), "--store-id", "s17", "--node-id", "n1", "--no-qr",
            "--keys-dir", str(tmp_path / "etc" / "keys"),
            "--admin-token", str(tmp_path / "token"), "--password-file", str(tmp_path / "pw"), cwd=tmp_path)
    bak = cfg.with_name("shelfcast.yaml.bak")
    text = bak.read_text()
    assert OLD_TOKEN not in text and OLD_PASSWORD not in text, text
    assert bak.stat().st_mode & 0o777 == 0o600, oct(bak.stat().st_mode)
    # what was removed is said, and everything else of the old config is still there
    assert "signage.admin_token" in text and "mqtt.cloud.password" in text, text
    old = yaml.safe_load(text)
    assert old["signage"]["port"] == 8099 and old["mqtt"]["cloud"]["username"] == "node-s17", old
    assert "admin_token" not in old["signage"] and "password" not in old["mqtt"]["cloud"], old
    # the new config works with the new secrets, kept beside the key
    assert "file:" in cfg.read_text() and NEW_TOKEN not in cfg.read_text()
    assert (tmp_path / "etc" / "keys" / "admin-token").read_text().strip() == NEW_TOKEN
    out = r.stdout + r.stderr
    assert OLD_TOKEN not in out and NEW_TOKEN not in out, out


def test_a_secret_the_new_config_still_holds_and_the_comments_stay(tmp_path: Path) -> None:
    """A provision that rotates nothing (a new node id): the .bak is the old file byte for byte, only 0600."""
    cfg = hand_written(tmp_path / "etc", tmp_path / "data")
    before = cfg.read_bytes()
    run("provision", "--config", str(cfg), "--store-id", "s17", "--node-id", "n2", "--no-qr",
        "--keys-dir", str(tmp_path / "etc" / "keys"), cwd=tmp_path)
    bak = cfg.with_name("shelfcast.yaml.bak")
    assert bak.read_bytes() == before
    assert bak.stat().st_mode & 0o777 == 0o600, oct(bak.stat().st_mode)


def test_the_support_bundle_never_holds_the_kept_config(tmp_path: Path) -> None:
    cfg = hand_written(tmp_path / "etc", tmp_path / "data")
    (tmp_path / "token").write_text(NEW_TOKEN + "\n")
    run("provision", "--config", str(cfg), "--store-id", "s17", "--node-id", "n1", "--no-qr",
        "--keys-dir", str(tmp_path / "etc" / "keys"), "--admin-token", str(tmp_path / "token"), cwd=tmp_path)
    bak = cfg.with_name("shelfcast.yaml.bak")
    assert bak.exists()
    out = tmp_path / "bundle.tar.gz"
    run("support-bundle", "--config", str(cfg), "--out", str(out), cwd=tmp_path)
    with tarfile.open(out) as tar:
        names = [m.name for m in tar.getmembers()]
        blob = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
    assert not any(n.endswith(".bak") for n in names), names
    for secret in (OLD_TOKEN, OLD_PASSWORD, NEW_TOKEN):
        assert secret.encode() not in blob, secret

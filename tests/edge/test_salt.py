"""fusion.customer_salt: a deployed node must not hash shopper ids with the public demo salt.

Real config files through the real loader, the real `shelfcast doctor` and `shelfcast provision` CLIs in
subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.config import DEMO_CUSTOMER_SALT, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
RETAILER_SALT = "acme-7f3c9e1d2b4a68f0e5c1d9b7a3f2e6c4"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_doctor_warns_on_the_demo_salt_and_names_the_fix(tmp_path: Path, doctor_json: Any) -> None:
    cfg = write(tmp_path / "n.yaml", f"node:\n  data_dir: {tmp_path}\nshelves:\n  enabled: false\n")
    c = doctor_json(cfg)["customer_salt"]
    assert c["status"] == "warn", c
    assert "demo salt" in c["detail"]
    assert "shelfcast provision --customer-salt FILE" in c["fix"]


def test_doctor_passes_with_the_retailers_salt_from_a_file(tmp_path: Path, doctor_json: Any) -> None:
    salt = write(tmp_path / "customer-salt", RETAILER_SALT + "\n")
    cfg = write(tmp_path / "n.yaml", f"node:\n  data_dir: {tmp_path}\nshelves:\n  enabled: false\n"
                                     f"fusion:\n  customer_salt: file:{salt}\n")
    c = doctor_json(cfg)["customer_salt"]
    assert c["status"] == "pass", c
    assert RETAILER_SALT not in json.dumps(c)  # the secret itself is never printed


def test_config_loader_resolves_file_and_env_salts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    salt = write(tmp_path / "customer-salt", RETAILER_SALT + "\n")
    cfg = load_config(write(tmp_path / "f.yaml", f"fusion:\n  customer_salt: file:{salt}\n"))
    assert cfg.fusion.customer_salt.get_secret_value() == RETAILER_SALT
    assert not cfg.fusion.uses_demo_salt()
    monkeypatch.setenv("SHELFCAST_TEST_SALT", RETAILER_SALT)
    cfg = load_config(write(tmp_path / "e.yaml", "fusion:\n  customer_salt: env:SHELFCAST_TEST_SALT\n"))
    assert cfg.fusion.customer_salt.get_secret_value() == RETAILER_SALT
    assert load_config(write(tmp_path / "d.yaml", "{}\n")).fusion.uses_demo_salt()
    assert load_config(write(tmp_path / "d.yaml", "{}\n")).fusion.customer_salt.get_secret_value() == \
        DEMO_CUSTOMER_SALT


@pytest.mark.parametrize("value", ["''", "'   '", "file:{empty}"])
def test_an_empty_salt_is_refused_with_the_fix(tmp_path: Path, value: str) -> None:
    empty = write(tmp_path / "empty-salt", "\n")
    path = write(tmp_path / "x.yaml", "fusion:\n  customer_salt: " + value.format(empty=empty) + "\n")
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    text = ei.value.render()
    assert "fusion.customer_salt" in text and "line 2" in text
    assert "customer salt is empty" in text and "--customer-salt FILE" in text



# -- shelfcast provision --customer-salt ---------------------------------------------------------------------


def provision(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`shelfcast provision` as a technician runs it (the module's own fast entry point, a real subprocess)."""
    return subprocess.run([sys.executable, "-m", "edge.provision", "provision", "--store-id", "store-7",
                           "--node-id", "node-2", "--config", str(tmp_path / "etc" / "shelfcast.yaml"), "--no-qr",
                           *extra], capture_output=True, text=True, timeout=120, env=ENV, cwd=ROOT)


def checkin_hash(salt: str, raw_id: str = "LOYALTY-0042") -> str:
    from edge.signage.http import hash_customer as checkin_customer  # what a screen check-in stores

    return checkin_customer(salt, raw_id)


def test_provision_with_customer_salt_sets_the_retailers_salt(tmp_path: Path, doctor_json: Any) -> None:
    src = write(tmp_path / "acme.salt", RETAILER_SALT + "\n")
    r = provision(tmp_path, "--customer-salt", str(src))
    assert r.returncode == 0, r.stderr
    assert "demo salt" not in r.stderr and "DEMO SALT" not in r.stdout
    cfg_path = tmp_path / "etc" / "shelfcast.yaml"
    text = cfg_path.read_text()
    assert RETAILER_SALT not in text  # referenced, not copied into the config
    assert yaml.safe_load(text)["fusion"]["customer_salt"].startswith("file:")
    kept = tmp_path / "etc" / "keys" / "customer-salt"
    assert kept.read_text().strip() == RETAILER_SALT and kept.stat().st_mode & 0o777 == 0o600
    src.unlink()  # the operator's copy (a USB stick) may go away: the node reads its own
    cfg = load_config(cfg_path)
    salt = cfg.fusion.customer_salt.get_secret_value()
    assert salt == RETAILER_SALT and not cfg.fusion.uses_demo_salt()
    assert checkin_hash(salt) != checkin_hash(DEMO_CUSTOMER_SALT)
    # provisioning again without the flag keeps the retailer's salt and says nothing about the demo one
    r = provision(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "demo salt" not in r.stderr
    assert load_config(cfg_path).fusion.customer_salt.get_secret_value() == RETAILER_SALT
    # and the doctor is content
    assert doctor_json(cfg_path)["customer_salt"]["status"] == "pass"


def test_provision_without_customer_salt_warns_in_one_line(tmp_path: Path) -> None:
    r = provision(tmp_path)
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "demo salt" in ln]
    assert len(warn) == 1, r.stderr
    assert "--customer-salt FILE" in warn[0]
    assert "DEMO SALT (--customer-salt FILE)" in r.stdout  # the printed label says it too
    cfg = load_config(tmp_path / "etc" / "shelfcast.yaml")  # it still provisioned
    assert cfg.node.store_id == "store-7" and cfg.fusion.uses_demo_salt()
    assert not (tmp_path / "etc" / "keys" / "customer-salt").exists()  # nothing generated behind its back
    r = provision(tmp_path, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["demo_salt"] is True
    assert sum("demo salt" in ln for ln in r.stderr.splitlines()) == 1


@pytest.mark.parametrize(("content", "says"), [(None, "cannot read it"), ("\n", "is empty"),
                                               (DEMO_CUSTOMER_SALT + "\n", "public demo salt")])
def test_provision_refuses_a_bad_salt_file_with_the_fix(tmp_path: Path, content: str | None, says: str) -> None:
    src = tmp_path / "acme.salt"
    if content is not None:
        src.write_text(content)
    r = provision(tmp_path, "--customer-salt", str(src))
    assert r.returncode != 0
    assert says in r.stderr and str(src) in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "etc" / "shelfcast.yaml").exists()  # nothing half-written


def test_boot_partition_bundle_carries_the_salt_and_takes_it_off_the_card(tmp_path: Path) -> None:
    from edge.provision import apply_bundle

    boot = tmp_path / "boot"
    boot.mkdir()
    src = write(tmp_path / "acme.salt", RETAILER_SALT + "\n")
    r = provision(tmp_path, "--boot-partition", str(boot), "--customer-salt", str(src))
    assert r.returncode == 0, r.stderr
    bundle = boot / "shelfcast"
    raw = yaml.safe_load((bundle / "shelfcast.yaml").read_text())
    assert raw["fusion"]["customer_salt"] == "file:/etc/shelfcast/keys/customer-salt"  # where it lives on the node
    etc = tmp_path / "node-etc"
    apply_bundle(bundle, etc / "shelfcast.yaml", etc / "keys")
    assert not (bundle / "keys" / "customer-salt").exists()  # not left on the FAT partition
    assert (etc / "keys" / "customer-salt").stat().st_mode & 0o777 == 0o600
    assert load_config(etc / "shelfcast.yaml").fusion.customer_salt.get_secret_value() == RETAILER_SALT

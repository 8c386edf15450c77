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

import pytest

from edge.config import DEMO_CUSTOMER_SALT, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
RETAILER_SALT = "acme-7f3c9e1d2b4a68f0e5c1d9b7a3f2e6c4"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def doctor_json(cfg: Path) -> dict[str, dict[str, str]]:
    r = subprocess.run([sys.executable, "-m", "edge.doctor", "doctor", "--config", str(cfg), "--json",
                        "--no-firmware", "--timeout", "1"], capture_output=True, text=True, timeout=120, env=ENV,
                       cwd=ROOT)
    assert r.returncode in (1, 2), r.stderr  # other checks fail on a test machine (no node running)
    return {c["name"]: c for c in json.loads(r.stdout)["checks"]}


def test_doctor_warns_on_the_demo_salt_and_names_the_fix(tmp_path: Path) -> None:
    cfg = write(tmp_path / "n.yaml", f"node:\n  data_dir: {tmp_path}\nshelves:\n  enabled: false\n")
    c = doctor_json(cfg)["customer_salt"]
    assert c["status"] == "warn", c
    assert "demo salt" in c["detail"]
    assert "shelfcast provision --customer-salt FILE" in c["fix"]


def test_doctor_passes_with_the_retailers_salt_from_a_file(tmp_path: Path) -> None:
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


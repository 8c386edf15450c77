"""`shelfcast run` logs one WARNING at start when shopper ids would be hashed with the public demo salt."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run_node(tmp_path: Path, procs: Any, extra: str = "") -> str:
    p = procs.start(procs.minimal_config(tmp_path, extra))
    return procs.wait_running(p) + procs.stop(p)


def test_run_warns_once_on_the_demo_salt(tmp_path: Path, node_process: Any) -> None:
    out = run_node(tmp_path, node_process)
    warn = [ln for ln in out.splitlines() if "demo salt" in ln]
    assert len(warn) == 1 and "WARNING" in warn[0] and "--customer-salt FILE" in warn[0], out


def test_run_is_quiet_with_the_retailers_salt(tmp_path: Path, node_process: Any) -> None:
    salt = tmp_path / "customer-salt"
    salt.write_text("acme-7f3c9e1d2b4a68f0e5c1d9b7a3f2e6c4\n")
    assert "demo salt" not in run_node(tmp_path, node_process, f"fusion:\n  customer_salt: file:{salt}\n")


def test_demo_does_not_warn(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "edge", "demo", "--duration", "1", "--quiet"], capture_output=True,
                       text=True, timeout=120, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "demo salt" not in r.stdout + r.stderr

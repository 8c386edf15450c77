"""The CLI as a user runs it: real subprocesses, exit codes, messages, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def sc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_config_validate_names_unknown_key_and_bad_port(tmp_path: Path) -> None:
    f = tmp_path / "node.yaml"
    f.write_text("node:\n  store_id: s1\n  nodeid: n1\nsignage:\n  port: not-a-port\n")
    r = sc("config", "validate", str(f))
    assert r.returncode == 1
    assert "line 3: node.nodeid: unknown key" in r.stderr
    assert "line 5: signage.port" in r.stderr and "not-a-port" in r.stderr
    assert "Traceback" not in r.stderr


def test_config_validate_ok_and_schema(tmp_path: Path) -> None:
    f = tmp_path / "node.yaml"
    f.write_text("node:\n  store_id: s1\n")
    r = sc("config", "validate", str(f))
    assert r.returncode == 0, r.stderr
    schema = json.loads(sc("config", "schema").stdout)
    assert "node" in schema["properties"] and "signage" in schema["properties"]


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    r = sc("run", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 1 and "file not found" in r.stderr and "Traceback" not in r.stderr
    r = sc("demo", "--duration", "-1")
    assert r.returncode == 2 and "--duration must be" in r.stderr
    r = sc("nonsense")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_demo_runs_end_to_end_and_recommendations_change(tmp_path: Path) -> None:
    r = sc("demo", "--duration", "6", "--seed", "3", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    for key in ("events", "recommendations", "pushed", "outbox_pending"):
        assert key in summary
    assert summary["events"] > 5
    assert summary["recommendations"] >= summary["events"] * 0.9
    assert summary["pushed"] > 0
    assert summary["screen_changes"] > 3  # sets change as shoppers pick
    # the data dir keeps the accepted events
    import sqlite3

    conn = sqlite3.connect(tmp_path / "d" / "shelfcast.db")
    n = conn.execute("SELECT count(*) FROM events WHERE type='shopper'").fetchone()[0]
    assert n >= summary["events"]


def test_version() -> None:
    r = sc("version")
    assert r.returncode == 0 and json.loads(r.stdout)["shelfcast"]


def test_every_command_module_loads() -> None:
    import importlib

    from edge import cli

    cli.build_parser()
    assert cli.BROKEN_MODULES == {}
    for mod in cli.COMMAND_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            assert exc.name is not None and mod.startswith(exc.name), f"{mod}: {exc}"

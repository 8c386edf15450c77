"""One node per data dir: a second `shelfcast run` on the same config says who holds it and how to stop it.

Before, it started beside the first: both shared the database and, with the same MQTT client ids, knocked each
other off the local broker every ~2 s with only "lost (Unspecified error)" in the log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _start(cfg: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV, cwd=ROOT)


def _wait_running(p: subprocess.Popen[str]) -> str:
    assert p.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    for line in p.stdout:
        lines.append(line)
        if "running" in line or time.monotonic() > deadline:
            break
    out = "".join(lines)
    assert "running" in out, out
    return out


def _stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def test_a_second_node_on_the_same_data_dir_is_refused_and_the_first_keeps_running(tmp_path: Path) -> None:
    cfg = tmp_path / "n.yaml"
    cfg.write_text(f"node:\n  data_dir: {tmp_path / 'data'}\nshelves:\n  enabled: false\nsignage:\n  port: 0\n")
    first = _start(cfg)
    try:
        _wait_running(first)
        second = _start(cfg)
        try:
            out = second.communicate(timeout=30)[0]
        finally:
            _stop(second)
        assert second.returncode == 2, out
        assert f"pid {first.pid}" in out and "sudo systemctl stop shelfcast" in out, out
        assert "Traceback" not in out, out
        assert first.poll() is None  # the first node was not disturbed
    finally:
        _stop(first)
    # the lock goes with the process: a node starts again on the same dir at once
    again = _start(cfg)
    try:
        _wait_running(again)
    finally:
        _stop(again)


def test_a_lock_left_by_a_killed_node_does_not_block_the_next(tmp_path: Path) -> None:
    cfg = tmp_path / "n.yaml"
    cfg.write_text(f"node:\n  data_dir: {tmp_path / 'data'}\nshelves:\n  enabled: false\nsignage:\n  port: 0\n")
    first = _start(cfg)
    _wait_running(first)
    first.kill()  # kill -9: the lock file stays, the flock does not
    first.communicate()
    assert (tmp_path / "data" / "shelfcast.lock").exists()
    nxt = _start(cfg)
    try:
        _wait_running(nxt)
    finally:
        _stop(nxt)

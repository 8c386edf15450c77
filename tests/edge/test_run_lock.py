"""One node per data dir: a second `shelfcast run` on the same config says who holds it and how to stop it.

Before, it started beside the first: both shared the database and, with the same MQTT client ids, knocked each
other off the local broker every ~2 s with only "lost (Unspecified error)" in the log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def test_a_second_node_on_the_same_data_dir_is_refused_and_the_first_keeps_running(
        tmp_path: Path, node_process: Any) -> None:
    cfg = node_process.minimal_config(tmp_path)
    first = node_process.start(cfg)
    node_process.wait_running(first)
    second = node_process.start(cfg)
    out = second.communicate(timeout=30)[0]
    assert second.returncode == 2, out
    assert f"pid {first.pid}" in out and "sudo systemctl stop shelfcast" in out, out
    assert "Traceback" not in out, out
    assert first.poll() is None  # the first node was not disturbed
    node_process.stop(first)
    # the lock goes with the process: a node starts again on the same dir at once
    again = node_process.start(cfg)
    node_process.wait_running(again)
    node_process.stop(again)


def test_a_lock_left_by_a_killed_node_does_not_block_the_next(tmp_path: Path, node_process: Any) -> None:
    cfg = node_process.minimal_config(tmp_path)
    first = node_process.start(cfg)
    node_process.wait_running(first)
    first.kill()  # kill -9: the lock file stays, the flock does not
    first.communicate()
    assert (tmp_path / "data" / "shelfcast.lock").exists()
    nxt = node_process.start(cfg)
    node_process.wait_running(nxt)
    node_process.stop(nxt)

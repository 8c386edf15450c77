"""The event-loop thread's priority (``node.loop_nice``): raised while the node runs, put back at stop, and a
host that does not allow it gets the node running at its old priority with a message naming the fix."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from importlib import resources
from pathlib import Path

import pytest
import yaml

from edge.app import Node
from edge.config import NodeConfig

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


def _config(tmp_path: Path, nice: int) -> NodeConfig:
    raw = yaml.safe_load(resources.files("edge").joinpath("data/demo_store.yaml").read_text())
    raw["node"]["data_dir"] = str(tmp_path / "data")
    raw["node"]["loop_nice"] = nice
    raw["signage"] = {"enabled": False}
    raw["camera"] = {"enabled": False}
    raw["shelves"] = {"enabled": False}
    return NodeConfig.model_validate(raw)


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _run_node(cfg: NodeConfig) -> tuple[int, int, int, object]:
    """(nice before, nice while running, nice after stop, health's loop_nice), in a fresh thread."""
    out: list[tuple[int, int, int, object]] = []

    def body() -> None:
        async def go() -> None:
            before = _nice()
            node = Node(cfg)
            await node.start()
            running, reported = _nice(), node.health()["loop_nice"]
            await node.stop()
            out.append((before, running, _nice(), reported))

        asyncio.run(go())

    t = threading.Thread(target=body)
    t.start()
    t.join(60)
    assert out, "the node did not start and stop"
    return out[0]


def test_the_loop_thread_runs_at_loop_nice_and_gets_its_priority_back_at_stop(tmp_path: Path) -> None:
    before, running, after, reported = _run_node(_config(tmp_path, -5))
    if os.geteuid() == 0 or before <= -5:  # allowed (root here, LimitNICE under the shipped unit)
        assert (running, reported) == (-5, -5)
    else:  # a plain user: refused, the node runs on at its priority and says which nice it has
        assert (running, reported) == (before, before)
    assert after == before


def test_zero_leaves_the_priority_alone(tmp_path: Path) -> None:
    before, running, after, reported = _run_node(_config(tmp_path, 0))
    assert running == before == after
    assert reported is None


def test_config_names_the_key_and_the_range() -> None:
    with pytest.raises(ValueError) as err:
        NodeConfig.model_validate({"node": {"loop_nice": -30}})
    assert "loop_nice" in str(err.value) and "-20" in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_an_unprivileged_user_is_refused_and_keeps_its_priority() -> None:
    """As a service user without LimitNICE (RLIMIT_NICE 0) and without root: the kernel refuses, nothing raises."""
    code = (
        "import os, resource\n"
        "from edge.app import set_thread_nice\n"  # imported first: the stdlib may not be readable by nobody
        "resource.setrlimit(resource.RLIMIT_NICE, (0, 0)); os.setgid(65534); os.setuid(65534)\n"
        "before, after, why = set_thread_nice(-5)\n"
        "print(before, after, repr(why))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr
    before, after, why = res.stdout.split(maxsplit=2)
    assert before == after and "Permission denied" in why


def test_a_refusal_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 caplog: pytest.LogCaptureFixture) -> None:
    """The message a technician sees (the refusal itself is the kernel's, above; here it is forced so the test
    runs as root too)."""
    real = os.setpriority

    def refuse(which: int, who: int, prio: int) -> None:
        if prio < 0:
            raise PermissionError(13, "Permission denied")
        real(which, who, prio)

    monkeypatch.setattr(os, "setpriority", refuse)
    caplog.set_level("INFO", logger="edge.app")
    before, running, after, reported = _run_node(_config(tmp_path, -5))
    assert running == before == after == reported
    msg = " ".join(r.getMessage() for r in caplog.records if "loop_nice" in r.getMessage())
    assert "not permitted" in msg and "LimitNICE=-5" in msg and "node.loop_nice: 0" in msg

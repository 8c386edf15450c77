"""The sd_notify notifier against a real unix datagram socket set as NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.systemd import Notifier, watchdog_interval


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    try:
        yield s, path
    finally:
        s.close()


def recv_all(s: socket.socket, timeout: float = 0.2) -> list[str]:
    out = []
    s.settimeout(timeout)
    while True:
        try:
            out.append(s.recv(4096).decode())
        except TimeoutError:
            return out


def test_ready_watchdog_stopping(notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    n = Notifier(env={"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("serving s1/n1")
    msg = s.recv(4096).decode().split("\n")
    assert msg[0] == "READY=1" and f"MAINPID={os.getpid()}" in msg and "STATUS=serving s1/n1" in msg
    assert n.watchdog() and s.recv(4096) == b"WATCHDOG=1"
    assert n.stopping() and s.recv(4096) == b"STOPPING=1"
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"shelfcast-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    try:
        assert Notifier(env={"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert s.recv(4096) == b"WATCHDOG=1"
    finally:
        s.close()


def test_no_socket_is_a_noop_and_a_dead_socket_never_raises(tmp_path: Path) -> None:
    n = Notifier(env={})
    assert not n.enabled and not n.ready() and n.sent == 0
    gone = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.ready() is False and gone.watchdog() is False and gone.errors == 2


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, pid=99) is None  # not for us
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "99"}, pid=99) == 1.0


def test_watchdog_loop_pings_from_the_event_loop(notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    n = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # ping every 50 ms
    healthy = True

    async def run(seconds: float) -> None:
        task = asyncio.create_task(n.watchdog_loop(lambda: healthy))
        await asyncio.sleep(seconds)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run(0.5))
    pings = recv_all(s)
    assert 4 <= len(pings) <= 12 and set(pings) == {"WATCHDOG=1"}
    healthy = False  # a wedged node withholds its pings so systemd restarts it
    asyncio.run(run(0.3))
    assert recv_all(s) == []

"""A tiny, dependency-free ``sd_notify`` client.

Why our own: the node runs as a ``Type=notify`` service with a watchdog, and
the protocol is one datagram on a unix socket (``$NOTIFY_SOCKET``); pulling in
``systemd-python`` (a C extension that needs libsystemd headers on the Pi)
for that is not worth it. Outside systemd every call is a cheap no-op.

Protocol (sd_notify(3)): newline-separated ``KEY=VALUE`` assignments sent as
one datagram. A socket path starting with ``@`` is in the abstract namespace.
``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, when set, must be our pid) tells how
often the service must send ``WATCHDOG=1``; we ping at half that period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "watchdog_interval"]

log = logging.getLogger(__name__)


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None when no watchdog is asked."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid:
        try:
            if int(wpid) != (os.getpid() if pid is None else pid):
                return None  # the watchdog is meant for another process (e.g. our parent)
        except ValueError:
            return None
    return value / 1e6 / 2.0


class Notifier:
    """Sends state changes to systemd. ``Notifier()`` reads ``$NOTIFY_SOCKET``; no socket → no-op."""

    def __init__(self, address: str | None = None, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = address if address is not None else env.get("NOTIFY_SOCKET")
        self.address: str | None = None
        if addr:
            self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        self.interval = watchdog_interval(env)
        self.sent = 0
        self.errors = 0
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True if sent. Never raises: supervision must not kill us."""
        if self.address is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            self.errors += 1
            if self.errors == 1:
                log.warning("sd_notify to %r failed: %s", self.address, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            lines.append(f"STATUS={status}")
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        lines = ["STOPPING=1"]
        if status:
            lines.append(f"STATUS={status}")
        return self.notify(*lines)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def watchdog_loop(self, healthy: Callable[[], bool] | None = None) -> None:
        """Ping ``WATCHDOG=1`` every half period from the event loop itself.

        Running on the node's own loop is the point: if the loop stalls (a
        blocking call, a deadlock) the pings stop and systemd restarts us.
        ``healthy()`` returning False withholds the ping (e.g. a wedged store writer).
        """
        if self.interval is None or self.address is None:
            return
        period = max(0.05, self.interval)
        last = time.monotonic()
        while True:
            ok = True
            if healthy is not None:
                try:
                    ok = bool(healthy())
                except Exception:  # a broken probe must not starve the watchdog forever silently
                    log.exception("watchdog health probe failed")
                    ok = False
            if ok:
                self.watchdog()
            now = time.monotonic()
            late = now - last - period
            if late > period:
                log.warning("event loop was stalled %.1f s (watchdog period %.1f s)", late, period)
            last = now
            await asyncio.sleep(period)

"""``SignageRoom``: recommendation sets out to screens, shelf displays and players.

The hot path (all on the event loop, nothing blocks, nothing logged per set):
``ScreenBoard`` accepts a set → ``on_set`` keeps it as the screen's latest and
schedules one ``_flush`` for this loop tick (a burst for one screen becomes
one push; after each visit the recommender ranks, ``flush_now`` runs it at
once) → ``_flush`` encodes it once and hands the bytes to the SSE hub
(latest wins per client), the MQTT publisher (retained), the shelf display
(rate-limited, latest wins) and the feedback loop (impressions).

Screens are assigned by the ``Recommender`` (nearest present shopper in the
zone); this room re-asks it every second so a screen whose shopper left goes
back to the zone's popular items, and asks once per screen at start so no
screen is ever blank.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edge.bus import Bus
from edge.config import NodeConfig, Screen
from edge.events import RecommendationSet, ShopperEvent
from edge.recommend import Recommender
from edge.signage.feedback import Feedback
from edge.signage.hub import Hub
from edge.signage.mqtt import ScreenPublisher
from edge.signage.payload import encode, sse_frame
from edge.store import Store

if TYPE_CHECKING:
    from edge.app import ScreenBoard

__all__ = ["SignageRoom"]

log = logging.getLogger("shelfcast.signage")

HEARTBEAT = b"event: ping\ndata: {}\n\n"
TLS_CHECK_S = 30.0
"""How often a running HTTPS site looks for a renewed signage.tls_cert/tls_key pair (a renewal job writes over the
same paths; the files' mtime, size and inode tell), and how often an HTTPS site whose files did not load is tried
again. A module constant, not a config key; tests make it short."""

_TlsStamp = tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]


class SignageRoom:
    name = "signage"

    def __init__(self, config: NodeConfig, store: Store, bus: Bus, board: ScreenBoard, recommender: Recommender,
                 *, health: Callable[[], dict[str, Any]] | None = None,
                 displays: Callable[[], Any] | None = None,
                 write_timeout_s: float = 5.0, max_buffer: int = 256 * 1024, sndbuf: int = 64 * 1024,
                 heartbeat_s: float = 15.0, display_interval_s: float = 0.5, serve_http: bool = True) -> None:
        self.config = config
        self.cfg = config.signage
        self.store = store
        self.bus = bus
        self.board = board
        self.recommender = recommender
        self.node_health = health
        self.displays = displays  # returns the shelf room (with ``show``) or None
        self.screens: dict[str, Screen] = {s.id: s for s in config.layout.screens}
        self._displays_in_zone: dict[str, list[Screen]] = {}
        for s in config.layout.screens:
            if s.kind == "shelf_display":
                self._displays_in_zone.setdefault(s.zone, []).append(s)
        self.store_id, self.node_id = config.node.store_id, config.node.node_id
        self.latencies: deque[float] = deque(maxlen=4096)  # seconds, on_set → SSE transport write
        self.hub = Hub(write_timeout_s=write_timeout_s, max_buffer=max_buffer, on_sent=self.latencies.append)
        self.sndbuf = sndbuf
        self.heartbeat_s = heartbeat_s
        self.display_interval_s = display_interval_s
        loc = config.mqtt.local
        self.mqtt = ScreenPublisher(
            loc.url, prefix=config.mqtt.topic_prefix, store=self.store_id, node=self.node_id,
            client_id=loc.client_id, username=loc.username,
            password=loc.password.get_secret_value() if loc.password else None, keepalive_s=loc.keepalive_s,
            ca_file=str(loc.ca_file) if loc.ca_file else None, cert_file=str(loc.cert_file) if loc.cert_file else None,
            key_file=str(loc.key_file) if loc.key_file else None)
        self.feedback = Feedback(store, window_s=self.cfg.conversion_window_s,
                                 upstream_topic=recommender.upstream_topic)
        self.current: dict[str, tuple[RecommendationSet, str]] = {}  # screen -> (set, its JSON)
        self.serve_http = serve_http
        self.port: int | None = None  # the bound port (config port 0 picks a free one)
        self.http_error: str | None = None
        self.tls_port: int | None = None  # the bound HTTPS port (signage.tls_cert set and listening)
        self.tls_error: str | None = None
        self._tls_site: web.BaseSite | None = None
        self._tls_live: ssl.SSLContext | None = None  # what new handshakes use (a renewal replaces it)
        self._tls_stamp: _TlsStamp | None = None  # the files of the pair in use
        self.tls_not_after: float | None = None  # the certificate in use: its notAfter, Unix time
        self.tls_reloads = 0  # renewed pairs switched to without a restart
        self._dirty: dict[str, RecommendationSet] = {}
        self._dirty_t: dict[str, float] = {}
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._display_last: dict[str, float] = {}
        self._display_pending: dict[str, RecommendationSet] = {}
        self._display_timer: dict[str, asyncio.TimerHandle] = {}
        self._display_tasks: set[asyncio.Task[Any]] = set()
        self.stats = {"sets": 0, "pushes": 0, "coalesced": 0, "display_shows": 0, "display_failed": 0,
                      "display_unwired": 0, "handovers": 0}

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.board.listeners.append(self.on_set)
        self.recommender.after_push.append(self.flush_now)
        self.bus.subscribe(ShopperEvent, self._on_shopper)
        self.mqtt.start()
        if self.serve_http and self.cfg.enabled:
            await self._start_http()
        for sid, sc in self.screens.items():  # never blank: every screen has a set from the first second
            if sc.kind != "shelf_display" or not self._zone_screens(sc.zone):
                self.bus.publish(self.recommender.refresh(sid))
        self._tasks.append(asyncio.create_task(self._housekeep(), name="signage-housekeeping"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="signage-heartbeat"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        for h in self._display_timer.values():
            h.cancel()
        self._display_timer.clear()
        with contextlib.suppress(ValueError):
            self.board.listeners.remove(self.on_set)
        with contextlib.suppress(ValueError):
            self.recommender.after_push.remove(self.flush_now)
        self.bus.unsubscribe(ShopperEvent, self._on_shopper)
        with contextlib.suppress(Exception):  # what has been on screen long enough is an impression
            self.feedback.tick()
        await self.stop_http()
        await self.mqtt.aclose()

    async def stop_http(self) -> None:
        """Close the HTTP side (clients see the link drop; MQTT and displays go on)."""
        self.hub.close_all()
        if self._tls_site is not None:  # mirror order: HTTPS was opened after the plain port
            await self._tls_site.stop()
            self._tls_site = None
            self.tls_port = None
            self._tls_live = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def start_http(self) -> None:
        """(Re)open the HTTP side on the port it had (or the configured one)."""
        if self._runner is None:
            await self._start_http(self.port)

    async def _start_http(self, port: int | None = None) -> None:
        if not await self._try_bind(port):
            log.error("%s; retrying with backoff (up to 10 s), MQTT and displays keep working", self.http_error)
            self._tasks.append(asyncio.create_task(self._retry_http(port), name="signage-http-retry"))

    async def _try_bind(self, port: int | None) -> bool:
        from edge.signage.http import ScreensRunner, build_app

        want = self.cfg.port if port is None else port
        # ScreensRunner: aiohttp's AppRunner with the connection caps (signage.max_connections...) in front
        runner = ScreensRunner(build_app(self), handle_signals=False, access_log=None, handler_cancellation=True,
                               shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.cfg.host, want, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self.http_error = (f"cannot listen on {self.cfg.host}:{want}: {exc.strerror}; pick a free "
                               "signage.port or stop what uses it (`ss -ltnp`)")
            return False
        self._runner = runner
        socks = getattr(site._server, "sockets", None) or []
        self.port = socks[0].getsockname()[1] if socks else want
        self.http_error = None
        log.info("signage on http://%s:%s/", self.cfg.host, self.port)
        if self.cfg.tls_cert is not None and not await self._try_tls(runner):
            log.error("%s; the screens stay on plain HTTP%s; HTTPS is tried again %s, no restart needed",
                      self.tls_error, ", admin requests from other devices are refused (signage.admin_tls_only)"
                      if self.cfg.admin_tls_only else "", self._tls_retry_when())
            self._tasks.append(asyncio.create_task(self._retry_tls(runner), name="signage-https-retry"))
        return True

    def _tls_port_error(self) -> bool:
        return bool(self.tls_error and self.tls_error.startswith("cannot listen"))

    def _tls_retry_when(self) -> str:
        return "with backoff (up to 10 s)" if self._tls_port_error() else f"every {TLS_CHECK_S:.0f} s"

    async def _try_tls(self, runner: web.AppRunner, retried: bool = False) -> bool:
        """A second site on the same runner (same app, routes, gate and caps) speaking TLS on signage.tls_port."""
        from edge.signage.http import TLSSite, tls_context

        stamp = self._tls_files_stamp()  # before loading: a renewal written meanwhile is seen at the next check
        try:
            ctx = tls_context(self.cfg)
        except ValueError as exc:
            self.tls_error = str(exc)
            return False
        ctx.sni_callback = self._tls_pick
        site = TLSSite(runner, self.cfg.host, self.cfg.tls_port, ssl_context=ctx,
                       handshake_timeout_s=self.cfg.request_timeout_s)
        try:
            await site.start()
        except OSError as exc:
            with contextlib.suppress(Exception):
                await site.stop()
            self.tls_error = (f"cannot listen for HTTPS on {self.cfg.host}:{self.cfg.tls_port}: {exc.strerror}; pick "
                              "a free signage.tls_port or stop what uses it (`ss -ltnp`)")
            return False
        self._tls_site, self.tls_port, self.tls_error = site, self.cfg.tls_port, None
        self._tls_live, self._tls_stamp, self.tls_not_after = ctx, stamp, self._cert_not_after()
        log.info("signage on https://%s:%s/%s", self.cfg.host, self.tls_port,
                 " (HTTPS started on a retry: its files load and its port is free now, no restart needed)"
                 if retried else "")
        self._tasks.append(asyncio.create_task(self._watch_tls(runner), name="signage-https-renewal"))
        return True

    def _tls_pick(self, sslobj: ssl.SSLObject, _server_name: str | None, ctx: ssl.SSLContext) -> None:
        """The site's context's SNI callback (called on every handshake, with or without SNI): a handshake starts
        on the context the site was started with and switches to the pair in use now (a renewal replaces it
        whole, so a half-written pair never reaches a handshake). Connections already open keep theirs."""
        live = self._tls_live
        if live is not None and live is not ctx:
            sslobj.context = live

    def _tls_files_stamp(self) -> _TlsStamp:
        def one(path: object) -> tuple[int, int, int] | None:
            try:
                st = os.stat(str(path))
            except OSError:
                return None
            return st.st_mtime_ns, st.st_size, st.st_ino

        return one(self.cfg.tls_cert), one(self.cfg.tls_key)

    def _cert_not_after(self) -> float | None:
        from edge.signage.http import cert_not_after

        return None if self.cfg.tls_cert is None else cert_not_after(self.cfg.tls_cert)

    def check_tls_files(self) -> bool:
        """Switch new HTTPS handshakes to a renewed signage.tls_cert/tls_key when the files changed and the pair
        loads (one INFO naming its expiry). A pair that does not load (the key not yet written, a mismatch) keeps
        the one in use: one WARNING per problem, http.tls_error, tried again at the next check. True on a switch."""
        from edge.signage.http import tls_context

        if self._tls_site is None or self._tls_live is None:
            return False
        stamp = self._tls_files_stamp()
        if stamp == self._tls_stamp:
            return False
        try:
            ctx = tls_context(self.cfg)
        except ValueError as exc:
            err = f"a renewed HTTPS certificate is not used yet: {exc}; HTTPS keeps the certificate in use"
            if err != self.tls_error:
                log.warning("%s (checked again every %.0f s)", err, TLS_CHECK_S)
            self.tls_error = err
            return False
        self._tls_live, self._tls_stamp, self.tls_error = ctx, stamp, None
        self.tls_not_after = self._cert_not_after()
        self.tls_reloads += 1
        until = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.tls_not_after))
                 if self.tls_not_after is not None else "unknown")
        log.info("signage HTTPS: renewed certificate %s in use for new connections (valid until %s)",
                 self.cfg.tls_cert, until)
        return True

    async def _watch_tls(self, runner: web.AppRunner) -> None:
        """Every TLS_CHECK_S while this runner's HTTPS site runs: ``check_tls_files`` (off the hot path)."""
        while self._runner is runner and self._tls_site is not None:
            await asyncio.sleep(TLS_CHECK_S)
            if self._runner is runner and self._tls_site is not None:
                try:
                    self.check_tls_files()
                except Exception:  # never let the watch die: the next check tries again
                    log.exception("signage HTTPS: checking the certificate files failed")

    async def _retry_tls(self, runner: web.AppRunner) -> None:
        """HTTPS did not start: try again while this runner serves, until it does. Its port in use: with backoff
        (1 s up to 10 s, as the plain port). Its files not loading (a node that booted before the certificate was
        copied, a key the service user cannot read yet): every TLS_CHECK_S, as the renewal watch looks. A problem
        that changes is one WARNING, the same one again nothing; the start is ``_try_tls``'s one INFO."""
        delay = 1.0
        while self._runner is runner and self._tls_site is None:
            if self._tls_port_error():
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            else:
                await asyncio.sleep(TLS_CHECK_S)
            if self._runner is not runner:
                return
            before = self.tls_error
            try:
                if await self._try_tls(runner, retried=True):
                    return
            except Exception:  # never let the retry die: the next try goes on
                log.exception("signage HTTPS: starting it again failed")
                continue
            if self.tls_error != before:
                log.warning("%s; HTTPS is still off, tried again %s", self.tls_error, self._tls_retry_when())

    async def _retry_http(self, port: int | None) -> None:
        delay = 1.0
        while self._runner is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            if await self._try_bind(port):
                return

    # -- the hot path -----------------------------------------------------------------------------
    def on_set(self, rs: RecommendationSet) -> None:
        """ScreenBoard accepted ``rs``: keep it, push at the end of this loop tick (coalescing)."""
        if rs.screen in self._dirty:
            self.stats["coalesced"] += 1
        else:
            self._dirty_t[rs.screen] = time.perf_counter()
        self._dirty[rs.screen] = rs
        self.stats["sets"] += 1
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            if threading.get_ident() == self._loop_thread:
                self._loop.call_soon(self._flush)
            else:
                self._loop.call_soon_threadsafe(self._flush)

    def flush_now(self) -> None:
        """Push what is dirty now (the recommender calls this after each visit of a ranking pass: its sets
        go out at once; the ``_flush`` already scheduled then finds nothing to do)."""
        if self._dirty and threading.get_ident() == self._loop_thread:
            self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, {}
        for screen, rs in dirty.items():
            t = self._dirty_t.pop(screen, 0.0)
            sc = self.screens.get(screen)
            kind = sc.kind if sc is not None else "full"
            data = encode(rs, kind=kind, store=self.store_id, node=self.node_id)
            self.current[screen] = (rs, data)
            self.hub.offer(screen, sse_frame("recommendations", data, rs.seq), t)
            self.mqtt.publish(screen, data.encode())
            self.feedback.shown(rs)
            self.stats["pushes"] += 1
            if kind == "shelf_display":
                self._queue_display(screen, rs)
            elif rs.zone is not None:
                for d in self._displays_in_zone.get(rs.zone, ()):
                    # a shelf display shows one product: its set (and impression) is just the top item
                    self.bus.publish(dataclasses.replace(rs, screen=d.id, items=rs.items[:1]))

    def _on_shopper(self, ev: ShopperEvent) -> None:
        self.feedback.on_shopper_event(ev)

    # -- shelf displays ----------------------------------------------------------------------------
    def _zone_screens(self, zone: str) -> list[str]:
        return [s.id for s in self.screens.values() if s.zone == zone and s.kind != "shelf_display"]

    def _queue_display(self, screen: str, rs: RecommendationSet) -> None:
        """At most one SHOW per display per ``display_interval_s``; the latest set wins."""
        assert self._loop is not None
        self._display_pending[screen] = rs
        if screen in self._display_timer:
            return
        wait = self._display_last.get(screen, 0.0) + self.display_interval_s - time.monotonic()
        if wait <= 0:
            self._send_display(screen)
        else:
            self._display_timer[screen] = self._loop.call_later(wait, self._send_display, screen)

    def _send_display(self, screen: str) -> None:
        self._display_timer.pop(screen, None)
        rs = self._display_pending.pop(screen, None)
        sc = self.screens.get(screen)
        if rs is None or sc is None or not rs.items:
            return
        self._display_last[screen] = time.monotonic()
        room = self.displays() if self.displays is not None else None
        show = getattr(room, "show", None)
        if show is None or sc.shelf is None:
            self.stats["display_unwired"] += 1
            return
        top = rs.items[0]
        try:
            res = show(sc.shelf, sc.slot or 0, top.name, top.price, top.reason)
        except Exception:
            self.stats["display_failed"] += 1
            log.debug("show on %s failed", screen, exc_info=True)
            return
        if asyncio.iscoroutine(res):
            task = asyncio.ensure_future(res)
            self._display_tasks.add(task)
            task.add_done_callback(self._display_done)
        else:
            self.stats["display_shows" if res else "display_failed"] += 1

    def _display_done(self, task: asyncio.Task[Any]) -> None:
        self._display_tasks.discard(task)
        ok = not task.cancelled() and task.exception() is None and bool(task.result())
        self.stats["display_shows" if ok else "display_failed"] += 1

    # -- periodic ----------------------------------------------------------------------------------
    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.handover()
                self.feedback.tick()
                self.feedback.prune()
            except Exception:
                log.exception("signage housekeeping failed; retrying in 1 s")

    def handover(self) -> int:
        """Screens whose shopper left (or changed) get a fresh set; idle ones refresh each minute."""
        now = time.time()
        n = 0
        for sid, sc in self.screens.items():
            if sc.kind == "shelf_display":
                continue
            latest = self.board.latest.get(sid)
            v = self.recommender.serving(sid)
            want = None if v is None else v.session
            # an idle screen's set older than a minute, or stamped "ahead" (before the wall clock stepped back;
            # else it waited out the step): refresh it
            if latest is None or latest.session != want or (want is None and not 0.0 <= now - latest.t <= 60.0):
                self.bus.publish(self.recommender.refresh(sid))
                n += 1
        self.stats["handovers"] += n
        return n

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            self.hub.broadcast(HEARTBEAT)

    # -- reads for the HTTP side --------------------------------------------------------------------
    def set_for(self, screen: str) -> tuple[RecommendationSet, str]:
        cur = self.current.get(screen)
        if cur is None:  # not pushed yet (first tick): compute it now rather than show nothing
            rs = self.recommender.refresh(screen)
            sc = self.screens.get(screen)
            data = encode(rs, kind=sc.kind if sc else "full", store=self.store_id, node=self.node_id)
            cur = (rs, data)
        return cur

    def tune_socket(self, sock: socket.socket | None) -> None:
        """A small kernel send buffer per SSE client: a stuck reader is noticed early and costs little."""
        if sock is not None and self.sndbuf:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)

    def push_quantiles(self) -> dict[str, float | None]:
        xs = sorted(self.latencies)
        if not xs:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None}
        return {"p50_ms": round(xs[len(xs) // 2] * 1e3, 3), "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * .99))]
                * 1e3, 3), "max_ms": round(xs[-1] * 1e3, 3)}

    def _tls_expiry(self, tls_on: bool) -> dict[str, Any]:
        """The certificate HTTPS serves now: its notAfter (ISO-8601 UTC) and the days left (negative once
        expired); null when HTTPS is off or its dates cannot be read (the same as /metrics' expiry gauge)."""
        t = self.tls_not_after if tls_on else None
        if t is None:
            return {"tls_cert_not_after": None, "tls_cert_expires_in_days": None}
        return {"tls_cert_not_after": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)),
                "tls_cert_expires_in_days": round((t - time.time()) / 86400, 1)}

    def health(self) -> dict[str, Any]:
        http_ok = self._runner is not None and self.http_error is None
        mq = self.mqtt.health()
        status = "ok"
        tls_on = self._tls_site is not None
        tls_down = self.cfg.tls_cert is not None and not tls_on  # configured, but its files or port failed
        if (self.serve_http and self.cfg.enabled and (not http_ok or tls_down)) or mq["status"] == "degraded":
            status = "degraded"
        return {
            "status": status,
            "http": {"listening": http_ok, "host": self.cfg.host, "port": self.port, "error": self.http_error,
                     "tls": tls_on, "tls_port": self.tls_port, "tls_error": self.tls_error,
                     "admin_tls_only": self.cfg.admin_tls_only, **self._tls_expiry(tls_on)},
            "sse": {"clients": self.hub.count(), **self.hub.stats},
            "mqtt": mq,
            "feedback": self.feedback.health(),
            "push_latency": self.push_quantiles(),
            "screens": len(self.screens),
            **self.stats,
        }

"""The signage HTTP server (aiohttp): kiosk pages, JSON, SSE, health and metrics.

Read-only without a token. Every non-GET request is an admin action and needs
``Authorization: Bearer <signage.admin_token>``; with no token configured,
admin actions are off.

Routes::

    GET  /                                   the screens, with links
    GET  /screens/<id>[?orientation=auto|landscape|portrait&attract=SECONDS]
    GET  /api/screens                        the screens (JSON)
    GET  /api/screens/<id>/recommendations[?limit=1..50]
    GET  /api/screens/<id>/stream            Server-Sent Events ("recommendations", "ping")
    GET  /api/health                         the node's health
    GET  /metrics                            Prometheus text format
    POST /api/checkin                        {"customer": raw id, "screen" | "session": ...}   (admin)
    POST /api/screens/<id>/refresh           re-rank and push now                             (admin)

Limits against a hostile or broken client on the store network: live streams are capped in total
(``signage.max_streams``) and per client address (``signage.max_streams_per_ip``; loopback, the node itself,
counts only towards the total) — past a cap a new stream is a 503 with ``Retry-After`` and one line naming the
key, the connected screens are not touched. A connection that has not sent a whole request within
``signage.request_timeout_s`` is closed (slow or idle clients), an admin body that does not arrive in that time is
a 408, and one over 64 KiB a 413.

One level down, every TCP connection goes through a gate (``ScreensRunner``) before aiohttp sees it: open
connections are capped in total (``signage.max_connections``) and per client address
(``signage.max_connections_per_ip``; loopback is never refused) — past a cap the connection gets a 503 naming the
key and is closed, so a flood of idle, slow or keep-alive sockets from the store network cannot use up the
descriptors (LimitNOFILE) the rest of the node needs. A connection whose answer sits unacknowledged for
``request_timeout_s`` (the client stopped reading) is dropped by the kernel (TCP_USER_TIMEOUT). Static files are
revalidated on every use (``Cache-Control: no-cache`` with their ETag): an upgraded node's screen.js is never
taken from a stale cache.

The gate also keeps the bytes of requests aiohttp holds before handling them (an unfinished header block, requests
pipelined behind one being answered) within a budget: ``HEAD_FREE`` per connection, and past that a share of
``HEAD_POOL`` common to all; a connection that would go past it is closed (its first request gets a 503 saying
why). Without it, 1024 connections each holding an unfinished 124 KiB header block took ~250 MB of RSS, and 64
connections pipelining big-header requests without reading ~210 MB. ``signage.trusted_clients`` (addresses or
networks: a NAT gateway with several screens behind it, a player showing many screens) are left out of the
per-device caps, not of the totals nor of the header budget. The HTTPS site (``signage.tls_port``) goes through
the same gate at TCP accept, before its TLS handshake (``TLSSite``): a connection that never says hello counts
against the caps like a silent plain one, and one past a cap is closed at once.

Every response says ``Server: shelfcast`` (no versions: aiohttp's ``Python/3.11 aiohttp/3.x.y`` told an attacker
which exploits to try) and ``X-Content-Type-Options: nosniff``, also aiohttp's own 400s for requests it cannot
parse (their text quotes the offending bytes: plain text, never sniffed as a page).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import os
import socket
import ssl
import time
from asyncio import sslproto
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from edge.config import DEMO_SALT_CHECKINS_REFUSED
from edge.events import CheckIn
from edge.signage.hub import Client, direct_send, is_loopback
from edge.signage.payload import ICONS

if TYPE_CHECKING:
    from edge.config import SignageSection
    from edge.signage.room import SignageRoom

__all__ = ["ScreensRunner", "TLSSite", "build_app", "cert_not_after", "tls_context"]

log = logging.getLogger("shelfcast.signage")

STATIC = Path(__file__).parent / "static"
ROOM: web.AppKey[SignageRoom] = web.AppKey("signage_room")
REFUSALS: web.AppKey[dict[str, float]] = web.AppKey("signage_refusals")  # when a refusal was last logged
GATE: web.AppKey[Gate] = web.AppKey("signage_gate")


class _ClientFaults(logging.Filter):
    """aiohttp logs every request it cannot parse (a header too long, bytes that are not HTTP) as an ERROR with a
    traceback, ~10 lines: any device on the store network could fill the journal (and wear the SD card). Those
    are one WARNING line a minute, saying how many were left out; the node's own errors (a 500) pass untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.last = -1e9
        self.left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = time.monotonic()
        if now - self.last < 60.0:
            self.left_out += 1
            return False
        self.last = now
        what, why = record.getMessage(), " ".join(str(exc.message).split())
        record.msg = "bad HTTP request: %s: %s (one line a minute; %d left out since the last)"
        record.args = (what, why, self.left_out)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        self.left_out = 0
        return True


HTTP_LOG = logging.getLogger("shelfcast.signage.http")  # aiohttp's connection handler logs here
HTTP_LOG.addFilter(_ClientFaults())
MAX_BODY = 64 * 1024  # admin request bodies (a check-in is ~100 bytes)
MAX_HEADERS, MAX_FIELD = 32, 4096  # headers a request may have, bytes in one (aiohttp: 128, 8190)
RETRY_AFTER_S = 30  # a refused stream: the page's own reconnect backs off up to 30 s
CHECKIN_SHAPE = '{"customer": "<loyalty id>", "screen": "<screen id>"}'
KIND_LABEL = {"full": "full screen", "strip": "shelf-edge strip", "shelf_display": "shelf display"}
LINGER_S = 1.0  # a refused connection: how long its request is read (and dropped) so the 503 is not lost to a reset
MAX_LINGERING = 64  # refused connections lingering at once; past that one is closed right after its 503
SERVER = "shelfcast"  # the Server header of every response: no versions (aiohttp sent Python's and its own)
# Request bytes aiohttp holds before it hands a request to a handler (an unfinished header block, pipelined requests
# queued behind one being answered; aiohttp's parsed copies take ~2x the bytes in RSS): every connection may have
# HEAD_FREE in flight, the ones holding more share HEAD_POOL. A kiosk's request is ~600 bytes, one at a time.
HEAD_FREE = 8 * 1024
HEAD_POOL = 8 * 1024 * 1024
_EOH = b"\r\n\r\n"  # the end of a request's header block


class BadParam(ValueError):
    pass


def _shown(raw: str, limit: int = 40) -> str:
    """``raw`` for an error message: repr, cut to ``limit`` characters (a query value may be 8 KB)."""
    return repr(raw) if len(raw) <= limit else repr(raw[:limit]) + f"... ({len(raw)} characters)"


def _int_param(request: web.Request, name: str, lo: int, hi: int, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadParam(f"query parameter {name}={_shown(raw)} is not a whole number; use {lo}..{hi}") from None
    if not lo <= v <= hi:
        raise BadParam(f"query parameter {name}={v} is out of range; use {lo}..{hi}")
    return v


def _choice_param(request: web.Request, name: str, choices: tuple[str, ...], default: str) -> str:
    raw = request.query.get(name, default)
    if raw not in choices:
        raise BadParam(f"query parameter {name}={_shown(raw)} is not allowed; use one of {', '.join(choices)}")
    return raw


def _page(title: str, body: str, status: int = 200) -> web.Response:
    doc = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
           "<meta name=viewport content='width=device-width,initial-scale=1'>"
           "<link rel=stylesheet href='/static/site.css'></head><body class=site>"
           f"<main>{body}</main></body></html>")
    return web.Response(text=doc, content_type="text/html", status=status,
                        headers={"Cache-Control": "no-store"})


def _screen_list_html(room: SignageRoom) -> str:
    rows = []
    for sid, sc in room.screens.items():
        cur = room.current.get(sid)
        who = "—"
        if cur is not None:
            who = html.escape(cur[0].session or "nobody: popular items")
        rows.append(f"<li><a href='/screens/{html.escape(sid)}'>{html.escape(sid)}</a>"
                    f"<span>{KIND_LABEL.get(sc.kind, sc.kind)} · zone {html.escape(sc.zone)} · "
                    f"{sc.orientation}</span><span class=who>{who}</span></li>")
    return "<ul class=screens>" + "".join(rows) + "</ul>"


def _not_found_screen(room: SignageRoom, sid: str, as_json: bool) -> web.Response:
    known = list(room.screens)
    msg = (f"there is no screen {sid!r} on this node; known screens: {', '.join(known) or 'none'} "
           "(screens are configured under layout.screens)")
    if as_json:
        return web.json_response({"error": msg, "screens": known}, status=404)
    body = (f"<h1>No screen “{html.escape(sid)}”</h1><p>This node has no screen with that id. "
            "Screens are configured under <code>layout.screens</code> in the node's config. Pick one:</p>"
            + _screen_list_html(room))
    return _page("Unknown screen", body, status=404)


def _bad_request(msg: str, as_json: bool) -> web.Response:
    if as_json:
        return web.json_response({"error": msg}, status=400)
    return _page("Bad request", f"<h1>Bad request</h1><p>{html.escape(msg)}</p>", status=400)


@web.middleware
async def _errors_and_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    request.app[GATE].started(request.transport)  # its header block left aiohttp's queue: off the budget
    room = request.app[ROOM]
    as_json = request.path.startswith("/api/")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        if room.cfg.admin_tls_only and not request.secure and not is_loopback(str(request.remote)):
            # before the token is looked at: a token sent in clear over the store network is never accepted
            return web.json_response({"error": _tls_only_refusal(request, room.cfg.tls_port)}, status=403)
        token = room.cfg.admin_token
        if token is None:
            return web.json_response({"error": "admin actions are disabled on this node; set signage.admin_token "
                                               "(e.g. admin_token: env:SHELFCAST_ADMIN_TOKEN) to enable them"},
                                     status=403)
        got = request.headers.get("Authorization", "")
        if not got.startswith("Bearer "):
            return web.json_response({"error": "this is an admin action: send 'Authorization: Bearer <token>' "
                                               "with signage.admin_token"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        # strip only HTTP's own blanks (a Unicode blank is not nothing); bytes as received, so odd bytes are a 403
        want = token.get_secret_value().encode()
        if not want or not hmac.compare_digest(got[7:].strip(" \t").encode("utf-8", "surrogateescape"), want):
            return web.json_response({"error": "wrong admin token"}, status=403)
    try:
        return await handler(request)
    except BadParam as exc:
        return _bad_request(str(exc), as_json)
    except web.HTTPRequestEntityTooLarge:
        resp = web.json_response({"error": f"the request body is larger than {MAX_BODY // 1024} KiB, the most this "
                                           f"node reads; a check-in is a small JSON object like {CHECKIN_SHAPE}"},
                                 status=413)
        resp.force_close()  # close after it (aiohttp drops at most lingering_time more of the body)
        return resp
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(m for m in exc.allowed_methods if m != "HEAD"))
        msg = f"{request.method} is not allowed on {request.path}; use {allowed}"
        if "POST" in exc.allowed_methods:
            msg += " with 'Authorization: Bearer <signage.admin_token>' (an admin action)"
        if as_json:
            return web.json_response({"error": msg}, status=405, headers={"Allow": ", ".join(exc.allowed_methods)})
        return _page("Method not allowed", f"<h1>Method not allowed</h1><p>{html.escape(msg)}</p>", status=405)
    except web.HTTPNotFound:
        if as_json:
            return web.json_response({"error": f"no such endpoint {request.path}; see GET /"}, status=404)
        return _page("Not found", "<h1>Not found</h1><p>Nothing here. The screens:</p>" + _screen_list_html(room),
                     status=404)


def _tls_only_refusal(request: web.Request, tls_port: int) -> str:
    host = request.url.host or request.app[ROOM].cfg.host
    host = f"[{host}]" if ":" in host else host
    return (f"admin requests are refused on plain HTTP from other devices on this node (signage.admin_tls_only): "
            f"the admin token and loyalty ids would cross the store network in clear; send it to "
            f"https://{host}:{tls_port}{request.rel_url} (the node's certificate trusted by this device), "
            f"or set signage.admin_tls_only: false")


def cert_not_after(cert_file: str | os.PathLike[str]) -> float | None:
    """A PEM certificate's notAfter as a Unix time (None: unreadable or not a certificate): the node's renewal
    watch and ``shelfcast doctor``'s expiry checks read it the same way."""
    try:
        from cryptography import x509

        return x509.load_pem_x509_certificate(Path(cert_file).read_bytes()).not_valid_after_utc.timestamp()
    except (OSError, ValueError):
        return None


def tls_context(cfg: SignageSection) -> ssl.SSLContext:
    """The server context of ``signage.tls_cert``/``tls_key`` (TLS 1.2 or later); ValueError naming the key and the
    fix when a file is missing, unreadable (the service user must read the key), not PEM, or the pair does not
    match."""
    assert cfg.tls_cert is not None and cfg.tls_key is not None
    for key, path, begin in (("tls_cert", cfg.tls_cert, b"-----BEGIN CERTIFICATE-----"),
                             ("tls_key", cfg.tls_key, b"PRIVATE KEY-----")):
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise ValueError(f"signage.{key} {path} does not exist; put the PEM file there or fix the path") from None
        except PermissionError:
            raise ValueError(f"signage.{key} {path} cannot be read by the user the node runs as ({_user()}); let "
                             f"the service group read it: `sudo chown root:shelfcast {path} && sudo chmod 640 "
                             f"{path}`") from None
        except OSError as exc:
            raise ValueError(f"signage.{key} {path} cannot be read: {exc.strerror}") from None
        if begin not in data:
            what = "a certificate" if key == "tls_cert" else "a private key"
            raise ValueError(f"signage.{key} {path} is not {what} in PEM form (no {begin.decode().strip('-')} "
                             f"block); convert it: `openssl x509 -in FILE -out {path}` (certificate) or "
                             f"`openssl pkey -in FILE -out {path}` (key)")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
    except ssl.SSLError as exc:
        hint = ("the key is not the certificate's (signage.tls_key must be the private key signage.tls_cert was "
                "issued for)" if "MISMATCH" in str(exc).upper() else
                "check that signage.tls_cert is a PEM certificate and signage.tls_key its unencrypted PEM key")
        raise ValueError(f"signage.tls_cert {cfg.tls_cert} / signage.tls_key {cfg.tls_key} do not load: "
                         f"{exc.reason or exc}; {hint}") from None
    return ctx


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


async def index(request: web.Request) -> web.Response:
    room = request.app[ROOM]
    body = (f"<h1>ShelfCast signage</h1><p class=sub>store {html.escape(room.store_id)} · node "
            f"{html.escape(room.node_id)}</p>" + _screen_list_html(room)
            + "<p class=foot>JSON: <a href='/api/screens'>/api/screens</a> · "
              "<a href='/api/health'>/api/health</a> · <a href='/metrics'>/metrics</a></p>")
    return _page("ShelfCast signage", body)


async def screen_page(request: web.Request) -> web.Response:
    room = request.app[ROOM]
    sid = request.match_info["id"]
    sc = room.screens.get(sid)
    if sc is None:
        return _not_found_screen(room, sid, as_json=False)
    orientation = _choice_param(request, "orientation", ("auto", "landscape", "portrait"), "auto")
    attract = _int_param(request, "attract", 5, 3600, int(room.cfg.attract_after_s))
    _rs, data = room.set_for(sid)
    boot = {"screen": sid, "kind": sc.kind, "zone": sc.zone, "orientation": orientation,
            "configured_orientation": sc.orientation, "attract_after_s": attract, "icons": list(ICONS),
            "initial": json.loads(data), "store": room.store_id}
    text = (STATIC / "screen.html").read_text()
    text = text.replace("__SCREEN__", html.escape(sid)).replace(
        "__BOOT__", json.dumps(boot, ensure_ascii=False).replace("</", "<\\/"))
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})


async def api_screens(request: web.Request) -> web.Response:
    room = request.app[ROOM]
    out = []
    for sid, sc in room.screens.items():
        cur = room.current.get(sid)
        out.append({"id": sid, "kind": sc.kind, "zone": sc.zone, "position": list(sc.position),
                    "orientation": sc.orientation, "shelf": sc.shelf, "slot": sc.slot,
                    "session": cur[0].session if cur else None, "clients": room.hub.count(sid),
                    "page": f"/screens/{sid}", "recommendations": f"/api/screens/{sid}/recommendations",
                    "stream": f"/api/screens/{sid}/stream", "mqtt_topic": room.mqtt.topic(sid)})
    return web.json_response({"screens": out})


async def api_recommendations(request: web.Request) -> web.Response:
    room = request.app[ROOM]
    sid = request.match_info["id"]
    if sid not in room.screens:
        return _not_found_screen(room, sid, as_json=True)
    limit = _int_param(request, "limit", 1, 50, None)
    _rs, data = room.set_for(sid)
    if limit is not None:
        obj = json.loads(data)
        obj["items"] = obj["items"][:limit]
        return web.json_response(obj)
    return web.Response(text=data, content_type="application/json", headers={"Cache-Control": "no-store"})


async def api_stream(request: web.Request) -> web.StreamResponse:
    room = request.app[ROOM]
    sid = request.match_info["id"]
    if sid not in room.screens:
        return _not_found_screen(room, sid, as_json=True)
    peer = str(request.remote)
    cfg = room.cfg
    refused = room.hub.refuse(peer, cfg.max_streams, cfg.max_streams_per_ip)
    if refused is not None:
        return _refuse_stream(request, refused, peer)
    # the slot is taken before the first await, so a burst of connects cannot all slip past the caps; until the
    # transport is set, ``Hub.offer`` only leaves frames in the client's mailbox
    client = Client(screen=sid, peer=peer)
    room.hub.add(client)
    try:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        chunked = request.version >= (1, 1)
        if chunked:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        transport = request.transport
        room.tune_socket(transport.get_extra_info("socket") if transport is not None else None)
        await resp.write(b"retry: 2000\n\n")  # the headers are out: from now on frames may be written directly
        client.transport, client.chunked, client.send = transport, chunked, direct_send(transport)
        rs, data = room.set_for(sid)
        from edge.signage.payload import sse_frame

        client.pending = sse_frame("recommendations", data, rs.seq)
        client.pending_t = -1.0
        client.wake.set()

        def buffered() -> int:
            return transport.get_write_buffer_size() if transport is not None else 0

        why = await room.hub.serve(client, resp.write, buffered)
    finally:
        room.hub.remove(client)  # its slot, however it ended (``serve`` removes it too; twice is a no-op)
    if why == "slow" and transport is not None:
        transport.abort()  # drop it: it was not reading; the others never waited
    return resp


def _cap_refusal(what: str, fix: str, key: str, last_log: dict[str, float], which: str, subject: str) -> str:
    """The one-line refusal for a request past a cap (streams or connections), naming the key to raise; logged at
    most once a minute per cap (an exhaustion attempt is thousands of these; the rest are counted in health)."""
    msg = (f"refused: {what}; {fix}, or raise {key} in /etc/shelfcast/shelfcast.yaml and run "
           f"`sudo systemctl restart shelfcast`; retry in {RETRY_AFTER_S} s")
    now = time.monotonic()
    if now - last_log.get(which, -1e9) >= 60.0:
        last_log[which] = now
        log.warning("%s %s (more are counted in health and /metrics, logged once a minute)", subject, msg)
    return msg


def _refuse_stream(request: web.Request, which: str, peer: str) -> web.Response:
    """A 503 for a stream past a cap: one line naming the limit and the key to raise; the connection is closed."""
    cfg = request.app[ROOM].cfg
    if which == "total":
        key, cap = "signage.max_streams", cfg.max_streams
        what = f"this node already serves {cap} live screen streams, its limit ({key})"
        fix = "close screen pages that are not in use"
    else:
        key, cap = "signage.max_streams_per_ip", cfg.max_streams_per_ip
        what = f"{peer} already has {cap} live screen streams open, the limit per device ({key})"
        fix = "close that device's screen pages that are not in use"
    msg = _cap_refusal(what, fix, key, request.app[REFUSALS], which, f"SSE stream from {peer}")
    resp = web.Response(text=msg + "\n", status=503, content_type="text/plain",
                        headers={"Retry-After": str(RETRY_AFTER_S), "Cache-Control": "no-store"})
    resp.force_close()
    return resp


async def api_health(request: web.Request) -> web.Response:
    room = request.app[ROOM]
    h = room.node_health() if room.node_health is not None else {"status": "ok", "rooms": {"signage": room.health()}}
    return web.json_response(h, status=200 if h.get("status") != "failed" else 503, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def metrics(request: web.Request) -> web.Response:
    room = request.app[ROOM]
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, v in samples:
            lab = ",".join(f'{k}="{_esc(str(x))}"' for k, x in labels.items())
            lines.append(f"{name}{{{lab}}} {v}" if lab else f"{name} {v}")

    st, hs = room.stats, room.hub.stats
    metric("shelfcast_signage_sets_total", "counter", "recommendation sets received from the board",
           [({}, st["sets"])])
    metric("shelfcast_signage_pushes_total", "counter", "sets pushed after coalescing", [({}, st["pushes"])])
    metric("shelfcast_signage_coalesced_total", "counter", "sets replaced by a newer one in the same tick",
           [({}, st["coalesced"])])
    metric("shelfcast_signage_sse_clients", "gauge", "connected SSE clients per screen",
           [({"screen": s}, room.hub.count(s)) for s in room.screens])
    metric("shelfcast_signage_sse_frames_total", "counter", "SSE frames written", [({}, hs["frames_sent"])])
    metric("shelfcast_signage_sse_superseded_total", "counter", "SSE frames replaced before a slow client took them",
           [({}, hs["superseded"])])
    metric("shelfcast_signage_sse_dropped_clients_total", "counter", "clients dropped for not reading",
           [({}, hs["dropped_slow"])])
    metric("shelfcast_signage_sse_refused_total", "counter", "streams refused (503) by the cap named in 'limit'",
           [({"limit": "max_streams"}, hs["refused_max_streams"]),
            ({"limit": "max_streams_per_ip"}, hs["refused_max_streams_per_ip"])])
    metric("shelfcast_signage_connections", "gauge", "open TCP connections to the screens port",
           [({}, hs["connections"])])
    metric("shelfcast_signage_connections_refused_total", "counter",
           "connections refused (503) by the cap named in 'limit'",
           [({"limit": "max_connections"}, hs["refused_max_connections"]),
            ({"limit": "max_connections_per_ip"}, hs["refused_max_connections_per_ip"]),
            ({"limit": "header_budget"}, hs["refused_header_budget"])])
    metric("shelfcast_signage_connections_stalled_total", "counter",
           "connections dropped for not reading their answers (request_timeout_s)", [({}, hs["closed_stalled"])])
    tls_on = room.tls_port is not None  # the HTTPS site is listening
    metric("shelfcast_signage_tls_enabled", "gauge", "1 when HTTPS (signage.tls_port) is listening",
           [({}, 1 if tls_on else 0)])
    if tls_on and room.tls_not_after is not None:
        metric("shelfcast_signage_tls_cert_expiry_seconds", "gauge",
               "notAfter of the HTTPS certificate in use, Unix time", [({}, int(room.tls_not_after))])
    metric("shelfcast_signage_tls_reloads_total", "counter",
           "renewed HTTPS certificates switched to without a restart", [({}, room.tls_reloads)])
    q = room.push_quantiles()
    metric("shelfcast_signage_push_latency_seconds", "summary", "set accepted to SSE transport write",
           [({"quantile": "0.5"}, (q["p50_ms"] or 0) / 1e3), ({"quantile": "0.99"}, (q["p99_ms"] or 0) / 1e3)])
    mq = room.mqtt
    metric("shelfcast_signage_mqtt_connected", "gauge", "1 when the local broker is connected",
           [({}, 1 if mq.connected else 0)])
    metric("shelfcast_signage_mqtt_published_total", "counter", "retained screen payloads published",
           [({}, mq.stats["published"])])
    fb = room.feedback.stats
    metric("shelfcast_impressions_total", "counter", "distinct sets shown", [({}, fb["impressions"])])
    metric("shelfcast_conversions_total", "counter", "shown items picked up in the window", [({}, fb["conversions"])])
    metric("shelfcast_shelf_display_shows_total", "counter", "SHOW frames acknowledged",
           [({}, st["display_shows"])])
    rec = room.recommender.stats
    metric("shelfcast_recommend_events_total", "counter", "shopper events ranked", [({}, rec.get("events", 0))])
    metric("shelfcast_recommend_sets_total", "counter", "sets by source",
           [({"source": "model"}, rec.get("model", 0)), ({"source": "fallback"}, rec.get("fallback", 0))])
    metric("shelfcast_active_visits", "gauge", "visits the recommender tracks", [({}, len(room.recommender.visits))])
    metric("shelfcast_store_queue", "gauge", "operations waiting for the SQLite writer",
           [({}, room.store.health().get("queue", 0))])
    metric("shelfcast_up", "gauge", "the signage server answers", [({}, 1)])
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain",
                        headers={"Cache-Control": "no-store"}, charset="utf-8")


def hash_customer(salt: str, raw: str) -> str:
    """The stored form of a customer id (fusion's salted SHA-256, so check-ins match its sessions)."""
    try:
        from edge.fusion import hash_customer as fusion_hash
    except ImportError:
        return hashlib.sha256(salt.encode() + b"\x00" + raw.strip().encode()).hexdigest()
    return fusion_hash(raw, salt)


async def checkin(request: web.Request) -> web.Response:
    room = request.app[ROOM]
    if room.config.refuses_raw_checkins():  # the demo salt's hashes must not reach the cloud (docs/privacy.md)
        return web.json_response({"error": DEMO_SALT_CHECKINS_REFUSED}, status=409)
    wait = room.cfg.request_timeout_s
    try:
        async with asyncio.timeout(wait):
            raw = await request.read()
    except TimeoutError:
        resp = web.json_response({"error": f"the request body did not arrive within {wait:g} s "
                                           "(signage.request_timeout_s); send the whole body at once, with a "
                                           "Content-Length that matches it"}, status=408)
        resp.force_close()
        return resp
    try:
        body = json.loads(raw.decode(request.charset or "utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, LookupError, RecursionError):
        raise BadParam(f"the body must be JSON like {CHECKIN_SHAPE}") from None
    if not isinstance(body, dict) or not isinstance(body.get("customer"), str) or not body["customer"].strip():
        raise BadParam("'customer' (the loyalty id as a string) is required")
    session = body.get("session")
    screen = body.get("screen")
    if screen is not None and not isinstance(screen, str):
        raise BadParam("'screen' must be a screen id (a string, e.g. \"dairy-screen\"); see GET /api/screens")
    if session is None and screen is not None:
        if screen not in room.screens:
            return _not_found_screen(room, str(screen), as_json=True)
        v = room.recommender.serving(screen)
        session = v.session if v is not None else None
    if session is not None and not isinstance(session, str):
        raise BadParam("'session' must be a string")
    salt = room.config.fusion.customer_salt.get_secret_value()
    ev = CheckIn(customer=hash_customer(salt, body["customer"].strip()), session=session, screen=screen,
                 t=time.time())
    room.bus.publish(ev)
    if session is not None and room.recommender.check_in_refused(ev.id):  # fusion: ended/another's, and no screen
        screens = ", ".join(s.id for s in room.screens.values() if s.kind != "shelf_display")
        fix = (f'check in again at the screen the shopper stands at: POST /api/checkin with {{"customer": ..., '
               f'"screen": "<id>"}} (screens: {screens})')
        named = room.recommender.visits.get(session)
        if named is not None and not named.ended and named.customer not in (None, ev.customer):
            return web.json_response({"error": f"visit {session[:40]} is another customer's; {fix}"}, status=409)
        return web.json_response({"error": f"visit {session[:40]} has ended; {fix}"}, status=410)
    session = room.recommender.check_in_session(ev.id) or session  # the visit fusion bound (maybe a new one)
    if screen in room.screens:
        room.bus.publish(room.recommender.refresh(screen))
    return web.json_response({"ok": True, "session": session, "customer": ev.customer, "id": ev.id})


async def refresh(request: web.Request) -> web.Response:
    room = request.app[ROOM]
    sid = request.match_info["id"]
    if sid not in room.screens:
        return _not_found_screen(room, sid, as_json=True)
    rs = room.recommender.refresh(sid)
    room.bus.publish(rs)
    return web.json_response({"ok": True, "screen": sid, "session": rs.session, "seq": rs.seq})


def build_app(room: SignageRoom) -> web.Application:
    # keepalive_timeout: aiohttp closes a connection that has not sent a whole request this long after it opened
    # or after its last response (a slow-header client, an idle one); its default is an hour. lingering_time: how
    # long it reads and drops the unread rest of a refused body (a 401, 408, 413) before closing; default 10 s.
    # max_headers/max_field_size: a request's header block is held until it is whole; aiohttp's 128 x 8 KiB let a
    # client park ~1.9 MB of RSS per connection for request_timeout_s (60 of them: +111 MB); a browser sends ~15
    # headers of well under 1 KiB, and the node sets no cookies. Past them a request is a 400 naming the header.
    app = web.Application(middlewares=[_errors_and_auth], client_max_size=MAX_BODY,
                          handler_args={"keepalive_timeout": room.cfg.request_timeout_s, "lingering_time": 2.0,
                                        "max_headers": MAX_HEADERS, "max_field_size": MAX_FIELD,
                                        "logger": HTTP_LOG})
    app[ROOM] = room
    app[REFUSALS] = {}
    app[GATE] = Gate(room)
    app.cleanup_ctx.append(_lingering)
    app.on_response_prepare.append(_static_headers)
    app.on_response_prepare.append(_server_headers)
    app.router.add_get("/", index)
    app.router.add_get("/screens/{id}", screen_page)
    app.router.add_get("/api/screens", api_screens)
    app.router.add_get("/api/screens/{id}/recommendations", api_recommendations)
    app.router.add_get("/api/screens/{id}/stream", api_stream)
    app.router.add_get("/api/health", api_health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/api/checkin", checkin)
    app.router.add_post("/api/screens/{id}/refresh", refresh)
    app.router.add_static("/static", STATIC, show_index=False)
    return app


# -- connections: the gate in front of aiohttp ---------------------------------------------------------------------


async def _server_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every routed response (pages, JSON, SSE, static files, 404s and 503s): ``Server: shelfcast`` in place of
    aiohttp's ``Python/3.11 aiohttp/<version>``, and never sniffed as another type. Responses to requests aiohttp
    could not parse get the same from ``_Handler.handle_error``."""
    h = response.headers
    h["Server"] = SERVER
    h["X-Content-Type-Options"] = "nosniff"


class _Handler(RequestHandler):
    """aiohttp's connection handler; its error answers (a 400 for a request it cannot parse, a 500) carry the same
    headers as the rest (they are prepared without the app, so ``on_response_prepare`` never sees them)."""

    __slots__ = ()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        resp = super().handle_error(request, status, exc, message)
        resp.headers.update({"Server": SERVER, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})
        return resp


def _handler(server: web.Server) -> RequestHandler:
    """What ``server()`` makes (``web.Server.__call__``), as a ``_Handler``."""
    try:
        return _Handler(server, loop=server._loop, **server._kwargs)
    except (AttributeError, TypeError):  # an aiohttp that builds its handlers otherwise: its own, headers as it sets
        return cast(RequestHandler, server())


async def _static_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``/static/...`` (screen.js, screen.css): always revalidated. Without a Cache-Control a browser keeps a file
    "fresh" for a tenth of its age (Last-Modified), so after an upgrade a kiosk restart ran days-old screen.js
    under the new page; with ``no-cache`` every use is a conditional request, a 304 of ~200 bytes while the ETag
    (mtime + size) is the same, the new file once it changed."""
    if request.path.startswith("/static/") and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-cache" if response.status < 400 else "no-store"


class Gate:
    """Every TCP connection to the screens port, before aiohttp parses a byte: admitted (counted in the hub, handed
    to aiohttp's handler) or refused (a 503 naming the cap, closed).

    An admitted socket gets ``TCP_USER_TIMEOUT`` = ``request_timeout_s``: the kernel drops it once data it sent
    has gone unacknowledged, or sat behind a zero receive window, that long. A client that stopped reading used to
    hold its socket (and the static file being sent) for as long as it stayed connected: aiohttp's timeouts do not
    cover an answer being written, and a file goes out by sendfile, past the transport's buffer."""

    def __init__(self, room: SignageRoom) -> None:
        self.room = room
        self.open: dict[_Conn, None] = {}  # admitted, not yet lost (insertion-ordered set)
        self.by_transport: dict[asyncio.BaseTransport, _Conn] = {}  # admitted ones, for ``started``
        self.lingering: set[_Conn] = set()
        self.last_log: dict[str, float] = {}
        self.pooled = 0  # HEAD_POOL bytes taken (connections holding more than HEAD_FREE)
        self.trusted = [ipaddress.ip_network(t, strict=False) for t in room.cfg.trusted_clients]
        self._exempt: dict[str, bool] = {}
        room.hub.per_ip_exempt = self.exempt

    def exempt(self, peer: str) -> bool:
        """``peer`` is left out of the per-device caps: loopback, or in ``signage.trusted_clients``. Asked only for an
        address already at a cap; remembered (up to 4096 addresses)."""
        known = self._exempt.get(peer)
        if known is not None:
            return known
        ok = is_loopback(peer)
        if not ok and self.trusted:
            try:
                ip = ipaddress.ip_address(peer)
            except ValueError:
                ip = None
            if ip is not None:
                mapped = getattr(ip, "ipv4_mapped", None)
                ip = mapped or ip
                ok = any(ip.version == net.version and ip in net for net in self.trusted)
        if len(self._exempt) >= 4096:
            self._exempt.clear()
        self._exempt[peer] = ok
        return ok

    def started(self, transport: asyncio.BaseTransport | None) -> None:
        """aiohttp hands a request from ``transport`` to the app: its header block is no longer held in its queue."""
        conn = self.by_transport.get(transport) if transport is not None else None
        if conn is not None:
            conn.started()

    def budget_refusal(self, peer: str) -> bytes:
        msg = (f"refused: this node already holds {HEAD_POOL // (1024 * 1024)} MiB of unfinished requests, the most "
               f"it keeps (each connection may send {HEAD_FREE // 1024} KiB at once, a screen's request is well under "
               f"1 KiB); send smaller requests and fewer at once, or find the device flooding the screens port "
               f"(logged, and counted in /api/health as sse.refused_header_budget); retry in {RETRY_AFTER_S} s")
        now = time.monotonic()
        if now - self.last_log.get("header_budget", -1e9) >= 60.0:
            self.last_log["header_budget"] = now
            log.warning("connection from %s %s (more are counted in health and /metrics, logged once a minute)",
                        peer, msg)
        return self.answer(503, "Service Unavailable", msg)

    @staticmethod
    def answer(status: int, reason: str, msg: str) -> bytes:
        body = (msg + "\n").encode()
        return (b"HTTP/1.1 %d %b\r\nServer: %b\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"X-Content-Type-Options: nosniff\r\nContent-Length: %d\r\nRetry-After: %d\r\n"
                b"Cache-Control: no-store\r\nConnection: close\r\n\r\n%b"
                % (status, reason.encode(), SERVER.encode(), len(body), RETRY_AFTER_S, body))

    def refusal(self, which: str, peer: str) -> bytes:
        return self.answer(503, "Service Unavailable", self.refusal_text(which, peer, f"connection from {peer}"))

    def refusal_text(self, which: str, peer: str, subject: str) -> str:
        """The line saying which cap ``peer`` is past and the key to raise (logged once a minute per cap, both
        ports together)."""
        cfg = self.room.cfg
        if which == "total":
            key, cap = "signage.max_connections", cfg.max_connections
            what = f"this node already has {cap} open connections on its screens port, its limit ({key})"
            fix = "close screen pages and players that are not in use"
        else:
            key, cap = "signage.max_connections_per_ip", cfg.max_connections_per_ip
            what = f"{peer} already has {cap} open connections to this node, the limit per device ({key})"
            fix = "close that device's screen pages that are not in use"
        return _cap_refusal(what, fix, key, self.last_log, which, subject)

    def close_all(self) -> None:
        for c in list(self.lingering):
            c.close()


async def _lingering(app: web.Application) -> AsyncIterator[None]:
    yield
    app[GATE].close_all()  # the port is closing: refused connections still lingering go at once


def _peer(transport: asyncio.BaseTransport) -> str:
    pn = transport.get_extra_info("peername")
    return str(pn[0]) if isinstance(pn, (list, tuple)) and pn else str(pn)  # what ``request.remote`` says


class _Conn(asyncio.Protocol):
    """One connection: forwards to aiohttp's ``RequestHandler`` when admitted, else answers the 503 and lingers
    (reads and drops the request, up to ``LINGER_S``) so closing does not reset the answer away."""

    __slots__ = ("carry", "current", "gate", "heads", "held", "inner", "over", "partial", "peer", "requests", "seen",
                 "server", "timer", "transport")

    def __init__(self, gate: Gate, server: web.Server) -> None:
        self.gate, self.server = gate, server
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.seen = b""
        self.timer: asyncio.TimerHandle | None = None
        # the header budget: bytes received that aiohttp holds (``held``): the header block of the request being
        # handled (``current``), the whole ones queued behind it (``heads``; a body counts with the block after it)
        # and the one arriving (``partial``, its last bytes in ``carry`` to find an end split across reads);
        # ``over``: HEAD_POOL bytes taken; ``requests``: header blocks seen whole
        self.heads: deque[int] = deque()
        self.held = self.current = self.partial = self.over = self.requests = 0
        self.carry = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = cast(asyncio.Transport, transport)
        self.transport, self.peer = tr, _peer(tr)
        gate = self.gate
        cfg, hub = gate.room.cfg, gate.room.hub
        which = hub.refuse_connection(self.peer, cfg.max_connections, cfg.max_connections_per_ip)
        if which is None:
            hub.connection_opened(self.peer)
            gate.open[self] = None
            sock = tr.get_extra_info("socket")
            if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(cfg.request_timeout_s * 1000))
            gate.by_transport[tr] = self
            self.inner = _handler(self.server)
            self.inner.connection_made(tr)
            return
        tr.write(gate.refusal(which, self.peer))
        if len(gate.lingering) >= MAX_LINGERING:
            tr.close()
            return
        gate.lingering.add(self)
        self.timer = asyncio.get_running_loop().call_later(LINGER_S, self.close)

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if inner is not None:
            if self.account(data):
                inner.data_received(data)
            return
        seen = self.seen + data  # the request is read and dropped; its end (a blank line) ends the linger
        if b"\r\n\r\n" in seen:
            self.close()
        self.seen = seen[-3:]

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        return False  # refused: the client is done, close

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def account(self, data: bytes) -> bool:
        """Counts ``data`` as held until the request it belongs to starts; False when that would take the connection
        past its budget: then it is refused (a 503 if it has not sent a whole request yet) and closed."""
        n = len(data)
        start, partial, carry, whole_before = 0, self.partial, self.carry, self.requests
        if carry:  # an end of headers split across two reads
            j = (carry + data[:3]).find(_EOH)
            if j >= 0:
                start = j + 4 - len(carry)
                self.heads.append(partial + start)
                partial = 0
                self.requests += 1
        i = data.find(_EOH, start)
        while i >= 0:
            end = i + 4
            self.heads.append(partial + end - start)
            partial, start = 0, end
            self.requests += 1
            i = data.find(_EOH, end)
        self.partial = partial + n - start
        self.carry = (carry + data[-3:])[-3:] if start == 0 else data[start:][-3:]
        self.held += n
        over = self.held - HEAD_FREE
        if over <= self.over:
            return True
        gate = self.gate
        if gate.pooled + over - self.over <= HEAD_POOL:
            gate.pooled += over - self.over
            self.over = over
            return True
        gate.room.hub.stats["refused_header_budget"] += 1
        answer = gate.budget_refusal(self.peer)
        if self.transport is not None:
            if whole_before == 0:  # aiohttp has no whole request of it, so has not answered: this is the answer
                self.transport.write(answer)
            self.transport.close()
        return False

    def started(self) -> None:
        """aiohttp handed one of this connection's requests to a handler: the one before it is answered (a
        connection's requests are handled in turn), its header block is no longer held; this one's is, until the next
        starts or the connection closes (a screen's stream holds its ~600 bytes for as long as it is open)."""
        if self.heads:
            self.held -= self.current
            self.current = self.heads.popleft()
            over = max(0, self.held - HEAD_FREE)
            if over != self.over:
                self.gate.pooled += over - self.over
                self.over = over

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        gate = self.gate
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        gate.lingering.discard(self)
        if self.inner is not None:
            gate.pooled -= self.over
            self.over = 0
            if self.transport is not None:
                gate.by_transport.pop(self.transport, None)
            if gate.open.pop(self, 0) is None:
                hub = gate.room.hub
                hub.connection_closed(self.peer)
                if isinstance(exc, TimeoutError):  # ETIMEDOUT: TCP_USER_TIMEOUT, the client stopped reading
                    hub.stats["closed_stalled"] += 1
            self.inner.connection_lost(exc)
        self.transport = None


class _TLSConn(_Conn):
    """An HTTPS connection once its handshake is done: ``_TLSAccept`` admitted and counted it at TCP accept, so
    here it is only handed to aiohttp (the header budget and the release at ``connection_lost`` are ``_Conn``'s)."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = cast(asyncio.Transport, transport)  # the TLS transport asyncio's SSLProtocol gives its app
        self.transport = tr
        self.gate.by_transport[tr] = self
        self.inner = _handler(self.server)
        self.inner.connection_made(tr)

    def handshake_lost(self) -> None:
        """The TCP connection ended before its handshake was done (no hello within ``request_timeout_s``, a failed
        handshake, the client left): its place under the caps is given back. Once aiohttp has it, ``connection_lost``
        does that."""
        if self.inner is None and self.gate.open.pop(self, 0) is None:
            self.gate.room.hub.connection_closed(self.peer)


class _TLSProtocol(sslproto.SSLProtocol):
    """asyncio's own server-side TLS protocol (what ``create_server(ssl=...)`` uses), told when the TCP connection
    under it is lost, which its app never hears of before the handshake is done.

    ``max_size``: asyncio reads the socket into a buffer of this size that every connection allocates at once and
    zero-fills, 256 KiB, so each connection still in its handshake held 256 KiB of RSS. A TLS record is at most
    16 KiB + 256 bytes; 32 KiB reads two at a time (a check-in, a page: one or two records)."""

    max_size = 32 * 1024

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: _TLSConn, ctx: ssl.SSLContext,
                 handshake_timeout_s: float) -> None:
        # no waiter (a future failed by every handshake that fails, logged when nobody reads it); typeshed wants
        # one, and the timeout as an int (asyncio takes any positive number, as create_server does)
        super().__init__(loop, conn, ctx, None, server_side=True,  # type: ignore[arg-type]
                         ssl_handshake_timeout=handshake_timeout_s)  # type: ignore[arg-type]
        self.conn = conn

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)  # schedules the app's connection_lost if its handshake was done
        self.conn.handshake_lost()


class _TLSAccept(asyncio.Protocol):
    """Every TCP connection to the HTTPS port, at accept, before any TLS work: through the same caps as the plain
    port (``signage.max_connections``, ``max_connections_per_ip``; loopback and ``trusted_clients`` as there) and
    counted from now, so a device opening silent connections that never say hello is held to its cap instead of
    the descriptor limit. A refused one is closed at once (no TLS yet to carry a 503; the refusal is counted and
    logged once a minute as on the plain port); an admitted one is handed to ``_TLSProtocol`` (the handshake within
    ``request_timeout_s``), which hands it to the gate's ``_TLSConn`` once the handshake is done."""

    __slots__ = ("ctx", "gate", "handshake_timeout_s", "server")

    def __init__(self, gate: Gate, server: web.Server, ctx: ssl.SSLContext, handshake_timeout_s: float) -> None:
        self.gate, self.server, self.ctx, self.handshake_timeout_s = gate, server, ctx, handshake_timeout_s

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = cast(asyncio.Transport, transport)
        peer = _peer(tr)
        gate = self.gate
        cfg, hub = gate.room.cfg, gate.room.hub
        which = hub.refuse_connection(peer, cfg.max_connections, cfg.max_connections_per_ip)
        if which is not None:
            gate.refusal_text(which, peer, f"HTTPS connection from {peer} closed before its TLS handshake:")
            tr.close()
            return
        hub.connection_opened(peer)
        conn = _TLSConn(gate, self.server)
        conn.peer = peer
        gate.open[conn] = None
        sock = tr.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(cfg.request_timeout_s * 1000))
        proto = _TLSProtocol(asyncio.get_running_loop(), conn, self.ctx, self.handshake_timeout_s)
        tr.set_protocol(proto)  # as ``loop.start_tls`` does: the socket's bytes go to TLS from now on
        proto.connection_made(tr)


class _GatedServer:
    """aiohttp's ``Server`` (the protocol factory ``loop.create_server`` calls) with the gate in front; the rest
    (shutdown, connections) is the server's own."""

    def __init__(self, server: web.Server, gate: Gate) -> None:
        self._server, self._gate = server, gate

    def __call__(self) -> _Conn:
        return _Conn(self._gate, self._server)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)

    def tls(self, ctx: ssl.SSLContext, handshake_timeout_s: float) -> Callable[[], _TLSAccept]:
        """The protocol factory of an HTTPS site on this server: the gate at TCP accept, then TLS."""
        gate, server = self._gate, self._server
        return lambda: _TLSAccept(gate, server, ctx, handshake_timeout_s)


class ScreensRunner(web.AppRunner):
    """``web.AppRunner`` whose sites accept connections through the app's gate (``build_app``)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return cast(web.Server, _GatedServer(server, self.app[GATE]))


class TLSSite(web.TCPSite):
    """``web.TCPSite`` for HTTPS on a ``ScreensRunner``: every TCP connection goes through the gate at accept
    (``_TLSAccept``: the connection caps count it from then on, not from the end of its handshake), and the TLS
    handshake must be done within ``handshake_timeout_s`` (``signage.request_timeout_s``; asyncio's default is
    60 s)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, ssl_context: ssl.SSLContext,
                 handshake_timeout_s: float, reuse_address: bool = True) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_address=reuse_address)
        self.handshake_timeout_s = handshake_timeout_s

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner, as TCPSite.start does
        server = self._runner.server
        assert isinstance(server, _GatedServer), "TLSSite needs a ScreensRunner (the gate)"
        assert self._ssl_context is not None
        # no ssl= here: TLS starts in _TLSAccept, after the gate (asyncio would start it before any protocol runs)
        self._server = await asyncio.get_running_loop().create_server(
            server.tls(self._ssl_context, self.handshake_timeout_s), self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        socks = self._server.sockets
        self._bound_port = socks[0].getsockname()[1] if socks else self._port

"""One MQTT 5 connection to the cloud broker, kept up by its own thread.

Why it looks like this:
- A fresh paho client per connection attempt. paho keeps unacknowledged QoS 1
  messages in memory and re-sends them after a reconnect; our durable queue is
  the SQLite outbox, so a fresh client means nothing is sent twice by two
  queues and nothing lives only in RAM.
- Persistent session (clean start off, session expiry) under a unique client
  id, so downstream QoS 1 messages (commands, release chunks) wait at the
  broker while the node is away.
- Availability: last will ``offline`` (retained), ``online`` (retained) after
  every CONNACK, ``stopped`` on a clean shutdown.
- Reconnect with exponential backoff and full jitter, forever; the node never
  exits because the broker is gone.
- Every failure to connect becomes one plain sentence naming the fix
  (``explain_connect_error``). paho says nothing when a TLS broker silently
  drops a client without a certificate, so a missing CONNACK after
  ``connack_timeout_s`` is reported as such. Passwords never reach a log.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.clock import CLOCK_FIX, clock_problem

__all__ = ["LinkSettings", "MqttLink", "explain_connect_error", "settings_from_broker"]

log = logging.getLogger(__name__)


@dataclass
class LinkSettings:
    url: str
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 86400
    connack_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    will_topic: str | None = None
    will_payload: str = "offline"
    manual_ack: bool = False  # ack QoS 1 messages only when the application says so (cloud ingest)
    config_key: str = "mqtt.cloud"  # for error messages

    @property
    def tls(self) -> bool:
        return self.url.startswith("mqtts://")

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "localhost"

    @property
    def port(self) -> int:
        return urlparse(self.url).port or (8883 if self.tls else 1883)

    def __str__(self) -> str:  # never shows the password
        return f"{self.url} as {self.client_id}"


def settings_from_broker(section: Any, client_id: str, **kw: Any) -> LinkSettings:
    """Build from a config ``BrokerSection`` (the password is unwrapped here and nowhere else)."""
    pw = section.password.get_secret_value() if section.password is not None else None
    return LinkSettings(url=section.url, client_id=section.client_id or client_id, username=section.username,
                        password=pw, ca_file=section.ca_file, cert_file=section.cert_file,
                        key_file=section.key_file, keepalive_s=section.keepalive_s, **kw)


_VERIFY_EXPIRED = 10
_VERIFY_NOT_YET_VALID = 9
_VERIFY_UNKNOWN_CA = {2, 18, 19, 20, 21, 27}
_VERIFY_HOSTNAME = 62


def explain_connect_error(exc: BaseException, s: LinkSettings) -> str:
    """One sentence: what went wrong connecting to the broker and how to fix it."""
    where = f"{s.host}:{s.port}"
    key = s.config_key
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        msg = str(getattr(exc, "verify_message", "") or exc)
        if code == _VERIFY_EXPIRED or "expired" in msg:
            return (f"TLS handshake with {where} failed: certificate expired — the broker's certificate has "
                    "expired; renew it on the broker (and check this node's clock with `date`)")
        if code == _VERIFY_NOT_YET_VALID or "not yet valid" in msg:
            return (f"TLS handshake with {where} failed: the broker's certificate is not yet valid — "
                    f"{clock_problem()}; {CLOCK_FIX}")
        if code == _VERIFY_HOSTNAME or "hostname mismatch" in msg.lower() or "ip address mismatch" in msg.lower():
            return (f"TLS handshake with {where} failed: hostname mismatch — the broker's certificate is not "
                    f"valid for {s.host!r}; use the host name in its certificate in {key}.url, or reissue the "
                    "certificate with that name in subjectAltName")
        if code in _VERIFY_UNKNOWN_CA or "issuer" in msg or "self-signed" in msg or "self signed" in msg:
            ca = s.ca_file or "the system CA store"
            return (f"TLS handshake with {where} failed: unknown CA — the broker's certificate is not signed "
                    f"by a CA in {ca}; put the broker's CA certificate in {key}.ca_file")
        return f"TLS handshake with {where} failed: certificate rejected ({msg})"
    if isinstance(exc, ssl.SSLError):
        low = str(exc).lower()
        if "alert certificate expired" in low:
            return (f"TLS handshake with {where} failed: the broker rejected our client certificate as "
                    f"expired; renew {key}.cert_file ({s.cert_file})")
        if "alert unknown ca" in low:
            return (f"TLS handshake with {where} failed: the broker does not trust the CA that signed our "
                    f"client certificate ({key}.cert_file); have it signed by the broker's client CA")
        if "certificate required" in low or ("handshake failure" in low and s.cert_file is None):
            return (f"TLS handshake with {where} failed: missing client certificate — the broker requires "
                    f"one; set {key}.cert_file and {key}.key_file")
        if "eof" in low or "connection reset" in low:  # closed during/right after the handshake
            if s.cert_file is None:
                return (f"TLS handshake with {where} failed: missing client certificate — the broker closed the "
                        f"connection; it requires one: set {key}.cert_file and {key}.key_file")
            why = _client_cert_problem(s)
            if why is not None:
                return f"TLS handshake with {where} failed: the broker closed the connection: {why}"
            return (f"TLS handshake with {where} failed: the broker closed the connection; it may have rejected "
                    f"our client certificate ({key}.cert_file) — check the broker's log")
        if "alert bad certificate" in low or "certificate unknown" in low:
            return f"TLS handshake with {where} failed: the broker rejected our client certificate ({key}.cert_file)"
        if "wrong version number" in low or "record layer failure" in low or "packet length too long" in low:
            return (f"TLS handshake with {where} failed: the port does not speak TLS; use mqtt:// for a plain "
                    "port or the broker's TLS port (usually 8883)")
        return f"TLS error talking to {where}: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"broker unreachable: nothing is listening at {where} (is the broker running? is {key}.url right?)"
    if isinstance(exc, ConnectionResetError) and s.tls:
        return (f"TLS handshake with {where} failed: the port reset the connection — it does not speak TLS "
                "(a plain MQTT port? use mqtt://, or the broker's TLS port, usually 8883)")
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve broker host {s.host!r} (check {key}.url and DNS)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return (f"no answer from {where} within {s.connect_timeout_s:.0f} s "
                "(broker down, or a firewall drops the traffic)")
    if isinstance(exc, OSError):
        return f"cannot reach broker at {where}: {exc.strerror or exc}"
    return f"cannot connect to {where}: {type(exc).__name__}: {exc}"


def _client_cert_problem(s: LinkSettings) -> str | None:
    """Why a broker would reject our client certificate, found locally (TLS 1.3 brokers often just hang up)."""
    if s.cert_file is None:
        return None
    try:
        import datetime as dt

        from cryptography import x509

        cert = x509.load_pem_x509_certificate(Path(s.cert_file).read_bytes())
        now = dt.datetime.now(dt.UTC)
        if cert.not_valid_after_utc < now:
            return (f"the broker rejected our client certificate as expired — {s.config_key}.cert_file "
                    f"({s.cert_file}) expired on {cert.not_valid_after_utc:%Y-%m-%d}; renew it")
        if cert.not_valid_before_utc > now:
            return (f"our client certificate ({s.config_key}.cert_file) is not valid before "
                    f"{cert.not_valid_before_utc:%Y-%m-%d}: {clock_problem()}; {CLOCK_FIX}")
        if s.ca_file is not None:
            cas = x509.load_pem_x509_certificates(Path(s.ca_file).read_bytes())
            for ca in cas:
                try:
                    cert.verify_directly_issued_by(ca)
                    return None
                except Exception:
                    continue
            return (f"the broker does not trust the CA that signed our client certificate "
                    f"({s.config_key}.cert_file is not issued by the CA in {s.config_key}.ca_file); have it signed "
                    "by the broker's client CA")
    except Exception:
        return None
    return None


def _tls_context(s: LinkSettings) -> ssl.SSLContext:
    key = s.config_key
    for name, p in (("ca_file", s.ca_file), ("cert_file", s.cert_file), ("key_file", s.key_file)):
        if p is not None and not Path(p).is_file():
            raise ValueError(f"{key}.{name} {p} does not exist or is not a file; fix the path")
    if (s.cert_file is None) != (s.key_file is None):
        raise ValueError(f"{key}.cert_file and {key}.key_file go together; set both or neither")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(s.ca_file) if s.ca_file else None)
    except ssl.SSLError as exc:
        raise ValueError(f"{key}.ca_file {s.ca_file} is not a PEM CA certificate ({exc.reason})") from None
    if s.cert_file is not None and s.key_file is not None:
        try:
            ctx.load_cert_chain(str(s.cert_file), str(s.key_file))
        except ssl.SSLError as exc:
            raise ValueError(f"{key}.cert_file/key_file cannot be loaded ({exc.reason}); they must be PEM and "
                             "the key must match the certificate") from None
    return ctx


Callback = Callable[..., None]


class MqttLink:
    """Keeps one connection up; ``on_tick`` runs on the link thread between network rounds."""

    def __init__(self, settings: LinkSettings, *, on_message: Callback | None = None,
                 on_connected: Callback | None = None, on_disconnected: Callback | None = None,
                 on_publish: Callback | None = None, on_tick: Callable[[], None] | None = None,
                 subscriptions: list[str] | None = None, name: str = "mqtt-link") -> None:
        self.s = settings
        self.on_message_cb = on_message
        self.on_connected_cb = on_connected
        self.on_disconnected_cb = on_disconnected
        self.on_publish_cb = on_publish
        self.on_tick = on_tick
        self.subscriptions = subscriptions or []
        self.name = name
        self._client: mqtt.Client | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._final: tuple[str, str] | None = None  # (topic, payload) published retained at clean stop
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # our subscriptions are in place (SUBACK, or a resumed session)
        self.last_error: str | None = None
        self.last_error_t: float | None = None
        self.stats = {"connects": 0, "disconnects": 0, "failures": 0, "published": 0, "received": 0}
        self.max_packet: int | None = None
        self.receive_max: int = 65535
        self._log_errors: list[str] = []
        self._attempt = 0
        self.connected_since: float | None = None

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, final: tuple[str, str] | None = None, timeout: float = 3.0) -> None:
        """Publish ``final`` (retained) if connected, disconnect cleanly (no last will), join the thread."""
        self._final = final
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout + 2.0)
        self._thread = None

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    # -- publishing (any thread) --------------------------------------------------
    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False,
                properties: Properties | None = None) -> int | None:
        """The message id, or None when not connected (nothing is queued in memory then)."""
        c = self._client
        if c is None or not self.connected.is_set():
            return None
        info = c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        self.stats["published"] += 1
        return int(info.mid)

    def subscribe(self, filters: list[str], *, if_new: bool = True) -> bool:
        """Subscribe ``filters`` (QoS 1) on the live connection; False when not connected (nothing is remembered:
        the caller subscribes again from its ``on_connected``). ``if_new``: the broker sends the retained messages
        only for a filter this session did not have yet (MQTT 5 retain handling 1), so renewing a subscription
        after a reconnect does not download them again."""
        c = self._client
        if not filters or c is None or not self.connected.is_set():
            return False
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB if if_new
                                else SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
        rc, _ = c.subscribe([(t, opts) for t in filters])
        return bool(rc == mqtt.MQTT_ERR_SUCCESS)

    def unsubscribe(self, filters: list[str]) -> bool:
        """Drop ``filters`` from the session (one that was not subscribed is fine); False when not connected."""
        c = self._client
        if not filters or c is None or not self.connected.is_set():
            return False
        rc, _ = c.unsubscribe(filters)
        return bool(rc == mqtt.MQTT_ERR_SUCCESS)

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a message (``manual_ack`` only); call on the link thread (``on_tick``)."""
        c = self._client
        if c is not None and self.connected.is_set():
            c.ack(mid, qos)

    # -- the thread ------------------------------------------------------------------
    def _backoff(self) -> None:
        self._attempt += 1
        cap = min(self.s.backoff_max_s, self.s.backoff_min_s * (2 ** min(self._attempt, 16)))
        self._stop.wait(random.uniform(self.s.backoff_min_s, cap))  # full jitter: fleets don't stampede

    def _fail(self, message: str) -> None:
        self.stats["failures"] += 1
        if message != self.last_error:
            log.warning("cloud broker: %s; retrying with backoff", message)
        self.last_error = message
        self.last_error_t = time.time()

    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.s.client_id, protocol=mqtt.MQTTv5,
                        manual_ack=self.s.manual_ack)
        c.on_message = self._on_message  # before connect: queued messages flood in right after CONNACK
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_log = self._on_log
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.connect_timeout = self.s.connect_timeout_s
        c.max_inflight_messages_set(0)  # the outbox drainer bounds what is in flight
        c.max_queued_messages_set(0)
        if self.s.username is not None:
            c.username_pw_set(self.s.username, self.s.password)
        if self.s.will_topic is not None:
            c.will_set(self.s.will_topic, self.s.will_payload, qos=1, retain=True)
        if self.s.tls:
            c.tls_set_context(_tls_context(self.s))
        return c

    def _run(self) -> None:
        while not self._stop.is_set():
            self._log_errors = []
            try:
                client = self._make_client()
            except ValueError as exc:  # a configuration problem: say it, keep trying (files may appear)
                self._fail(str(exc))
                self._backoff()
                continue
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.s.session_expiry_s
            try:
                client.connect(self.s.host, self.s.port, keepalive=self.s.keepalive_s, clean_start=False,
                               properties=props)
            except Exception as exc:
                self._fail(explain_connect_error(exc, self.s))
                self._close(client)
                self._backoff()
                continue
            self._client = client
            t0 = time.monotonic()
            reason: str | None = None
            while not self._stop.is_set():
                rc = client.loop(0.02)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    reason = self._lost_reason(rc)
                    break
                if not self.connected.is_set():
                    if self._refused is not None:
                        reason = self._refused
                        break
                    if time.monotonic() - t0 > self.s.connack_timeout_s:
                        reason = self._no_connack()
                        break
                    continue
                if self.on_tick is not None:
                    try:
                        self.on_tick()
                    except Exception:
                        log.exception("sync tick failed")
            if self._stop.is_set():
                self._shutdown(client)
                break
            was_connected = self.connected.is_set()
            self._mark_down()
            self._close(client)
            if reason is not None:
                self._fail(reason)
            if not was_connected or reason is not None:
                self._backoff()
            else:
                self._stop.wait(random.uniform(0, self.s.backoff_min_s))

    _refused: str | None = None

    def _lost_reason(self, rc: int) -> str | None:
        if not self.connected.is_set():
            detail = self._tls_log_error()
            if detail is not None:
                return detail
            if self._refused is not None:
                return self._refused
            return f"connection to {self.s.host}:{self.s.port} closed before CONNACK ({mqtt.error_string(rc)})"
        return f"connection to {self.s.host}:{self.s.port} lost ({mqtt.error_string(rc)})"

    def _tls_log_error(self) -> str | None:
        for line in self._log_errors:
            low = line.lower()
            if "alert" in low or "ssl" in low or "tls" in low:
                return explain_connect_error(ssl.SSLError(line), self.s)
        return None

    def _no_connack(self) -> str:
        detail = self._tls_log_error()
        if detail is not None:
            return detail
        where = f"{self.s.host}:{self.s.port}"
        if self.s.tls and self.s.cert_file is None:
            return (f"TLS connection to {where} opened but the broker sent no CONNACK within "
                    f"{self.s.connack_timeout_s:.0f} s: missing client certificate — the broker most likely "
                    f"requires one; set {self.s.config_key}.cert_file and {self.s.config_key}.key_file")
        if self.s.tls:
            return (f"TLS connection to {where} opened but the broker sent no CONNACK within "
                    f"{self.s.connack_timeout_s:.0f} s: it may have rejected our client certificate "
                    f"({self.s.config_key}.cert_file) without saying so; check the broker's log")
        return (f"{where} accepted the TCP connection but sent no MQTT CONNACK within "
                f"{self.s.connack_timeout_s:.0f} s: is it an MQTT broker? (a TLS port needs mqtts://)")

    def _mark_down(self) -> None:
        if self.connected.is_set():
            self.stats["disconnects"] += 1
            self.connected.clear()
            self.subscribed.clear()
            self.connected_since = None
            if self.on_disconnected_cb is not None:
                try:
                    self.on_disconnected_cb()
                except Exception:
                    log.exception("on_disconnected failed")
        self._client = None
        self._refused = None

    def _close(self, client: mqtt.Client) -> None:
        try:
            sock = client.socket()
            if sock is not None:
                sock.close()
        except Exception:
            pass

    def _shutdown(self, client: mqtt.Client) -> None:
        if self.connected.is_set():
            if self._final is not None:
                info = client.publish(self._final[0], self._final[1], qos=1, retain=True)
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline and not info.is_published():
                    if client.loop(0.02) != mqtt.MQTT_ERR_SUCCESS:
                        break
            client.disconnect()  # a normal DISCONNECT: the broker drops the last will
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and client.loop(0.02) == mqtt.MQTT_ERR_SUCCESS:
                pass
        self._mark_down()
        self._close(client)

    # -- paho callbacks (link thread) ----------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            text = str(reason)
            hint = ""
            if reason.value in (134, 135):
                hint = f" (check {self.s.config_key}.username/password and the broker's ACL)"
            elif reason.value == 133:
                hint = f" (set a valid {self.s.config_key}.client_id)"
            self._refused = f"broker {self.s.host}:{self.s.port} refused the connection: {text}{hint}"
            return
        self._attempt = 0
        self.stats["connects"] += 1
        self.last_error = None
        self.max_packet = getattr(props, "MaximumPacketSize", None)
        self.receive_max = int(getattr(props, "ReceiveMaximum", 65535))
        if not flags.session_present and self.subscriptions:  # a new session has no subscriptions
            client.subscribe([(t, 1) for t in self.subscriptions])
        else:
            self.subscribed.set()
        self.connected_since = time.time()
        self.connected.set()
        if self.on_connected_cb is not None:
            try:
                self.on_connected_cb(bool(flags.session_present))
            except Exception:
                log.exception("on_connected failed")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        pass  # handled by the loop (it sees the error code) so the order of events stays simple

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if self.on_publish_cb is not None:
            self.on_publish_cb(mid, not reason.is_failure, str(reason))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.stats["received"] += 1
        if self.on_message_cb is not None:
            try:
                self.on_message_cb(msg.topic, msg.payload, msg)
            except Exception:  # a handler bug must not kill the link
                log.exception("handling %s failed", msg.topic)

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        if level in (mqtt.MQTT_LOG_ERR, mqtt.MQTT_LOG_WARNING) and len(self._log_errors) < 20:
            self._log_errors.append(buf)

    def health(self) -> dict[str, Any]:
        return {
            "connected": self.connected.is_set(),
            "broker": f"{self.s.host}:{self.s.port}",
            "tls": self.s.tls,
            "client_id": self.s.client_id,
            "last_error": self.last_error,
            **self.stats,
        }

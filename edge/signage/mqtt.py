"""Retained per-screen topics on the store's LOCAL broker, for third-party players.

Topic: ``<topic_prefix>/<store>/<node>/screens/<screen>/recommendations``
(retained, QoS 1, payload schema 1: see ``payload`` and ``docs/signage.md``),
plus ``<topic_prefix>/<store>/<node>/signage/status`` (retained ``online`` /
``offline``, the latter as the broker-side will).

Only the latest set per screen matters, so nothing is queued while the broker
is away: the publisher keeps the latest payload per screen and republishes all
of them (retained) on every (re)connect. paho's network thread reconnects with
exponential backoff (1 s … ``reconnect_max_s``); the HTTP side never waits on
it. No broker configured: the publisher is disabled and says so in health.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

__all__ = ["ScreenPublisher", "screen_topic"]

log = logging.getLogger("shelfcast.signage.mqtt")


def screen_topic(prefix: str, store: str, node: str, screen: str) -> str:
    return f"{prefix}/{store}/{node}/screens/{screen}/recommendations"


class ScreenPublisher:
    def __init__(self, url: str | None, *, prefix: str, store: str, node: str, client_id: str | None = None,
                 username: str | None = None, password: str | None = None, keepalive_s: int = 30,
                 ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                 reconnect_max_s: float = 30.0) -> None:
        self.url = url
        self.prefix, self.store, self.node = prefix, store, node
        self.status_topic = f"{prefix}/{store}/{node}/signage/status"
        self._latest: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.connected = False
        self.stats = {"published": 0, "skipped_offline": 0, "connects": 0, "disconnects": 0, "errors": 0}
        self.last_error: str | None = None
        self._client: mqtt.Client | None = None
        self._keepalive = keepalive_s
        self._reconnect_max = max(1, int(reconnect_max_s))
        self._topic_cache: dict[str, str] = {}
        self._stopping = False
        if url is None:
            return
        u = urlparse(url)
        self._host = u.hostname or "127.0.0.1"
        self._port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                        client_id=client_id or f"shelfcast-signage-{store}-{node}", clean_session=True)
        if username:
            c.username_pw_set(username, password)
        if u.scheme == "mqtts":
            c.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
        c.will_set(self.status_topic, b"offline", qos=1, retain=True)
        c.reconnect_delay_set(1, self._reconnect_max)
        c.max_queued_messages_set(1000)  # only while connected (we skip publishing when offline)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        self._client = c

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def topic(self, screen: str) -> str:
        t = self._topic_cache.get(screen)
        if t is None:
            t = self._topic_cache[screen] = screen_topic(self.prefix, self.store, self.node, screen)
        return t

    def start(self) -> None:
        if self._client is None:
            return
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        c = self._client
        if c is None:
            return
        self._stopping = True
        try:
            if self.connected:
                c.publish(self.status_topic, b"offline", qos=1, retain=True).wait_for_publish(1.0)
        except Exception:  # best effort on the way out
            pass
        c.disconnect()
        c.loop_stop()
        self.connected = False

    def publish(self, screen: str, data: bytes) -> bool:
        """Remember ``data`` as the screen's latest and publish it retained if connected. Never blocks."""
        with self._lock:
            self._latest[screen] = data
        c = self._client
        if c is None:
            return False
        if not self.connected:
            self.stats["skipped_offline"] += 1
            return False
        info = c.publish(self.topic(screen), data, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.stats["errors"] += 1
            return False
        self.stats["published"] += 1
        return True

    # -- paho callbacks (its network thread) ---------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            self.last_error = f"broker refused the connection: {reason}"
            log.warning("local broker %s refused the connection: %s", self.url, reason)
            return
        self.connected = True
        self.stats["connects"] += 1
        self.last_error = None
        client.publish(self.status_topic, b"online", qos=1, retain=True)
        with self._lock:
            latest = list(self._latest.items())
        for screen, data in latest:
            client.publish(self.topic(screen), data, qos=1, retain=True)
            self.stats["published"] += 1
        log.info("local broker %s connected; %d screen topics republished", self.url, len(latest))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self.connected and not self._stopping:
            self.stats["disconnects"] += 1
            log.warning("local broker %s lost (%s); reconnecting with backoff", self.url, reason)
        self.connected = False
        self.last_error = f"disconnected: {reason}"
        self.since = time.time()

    def health(self) -> dict[str, Any]:
        if self._client is None:
            return {"status": "disabled", "detail": "no local broker configured (mqtt.local.url)"}
        return {"status": "ok" if self.connected else "degraded", "url": self.url, "connected": self.connected,
                "error": self.last_error, "screens": len(self._latest), **self.stats}

"""The publisher's side of releases: keys, packaging, signing and chunked publishing.

A model release is a directory (``model.tflite`` + ``manifest.json``, sent as
a tar) or a single ``.tflite`` file; catalogue, planogram, stock and profile
snapshots are JSON documents (sent zlib-compressed). The manifest (version,
sha256, size, chunk count, Ed25519 signature) and every chunk are published
retained, QoS 1, so a node that joins or comes back later still gets them.

The chunks go first and the manifest last: a node subscribes to a kind's chunk
topic when a manifest it accepts arrives, and then gets the chunks the broker
retains. Published the other way round, an online node would get the previous
release's chunks (still retained at that moment) as well as the new ones. Chunk
topics the previous release of that kind used beyond the new chunk count are
cleared (an empty retained message), so no node downloads them again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.sync.link import LinkSettings, _tls_context, explain_connect_error
from edge.sync.release import pack_chunk, sign_manifest
from edge.sync.schemas import MAX_MESSAGE_BYTES, ReleaseManifest
from edge.sync.topics import Topics

__all__ = ["Release", "build_release", "keygen", "load_private_key", "publish_release"]

DEFAULT_CHUNK = 120 * 1024  # + header + topic stays under 128 KB
WINDOW = 32  # chunks sent and not yet acknowledged by the broker (the rest are made as these are acknowledged)


@dataclass(frozen=True)
class Release:
    manifest: dict[str, Any]
    blob: bytes
    chunk_size: int

    def chunks(self) -> list[bytes]:
        return list(self.iter_chunks())

    def iter_chunks(self) -> Iterator[bytes]:
        """The chunks one at a time (``publish_release`` sends them so: never all of them in RAM at once)."""
        m = self.manifest
        size = self.chunk_size
        for i in range(m["chunks"]):
            yield pack_chunk(m["kind"], m["version"], i, m["chunks"], self.blob[i * size:(i + 1) * size])


def keygen(out_dir: Path, name: str = "release-signing") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    priv = out_dir / f"{name}.key"
    pub = out_dir / f"{name}.pub"
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key (make one with `shelfcast model keygen`)")
    return key


def _tar_dir(d: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for p in sorted(d.iterdir()):
            if p.is_file():
                info = tf.gettarinfo(str(p), arcname=p.name)
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(p, "rb") as f:
                    tf.addfile(info, f)
    return buf.getvalue()


def build_release(kind: str, source: Path | bytes, version: str | None, key: Ed25519PrivateKey | None, *,
                  chunk_size: int = DEFAULT_CHUNK, fmt: str | None = None) -> Release:
    """Package, hash and sign. ``key=None`` builds an unsigned release (for tests of refusal)."""
    if isinstance(source, bytes):
        blob, fmt = source, fmt or ("file" if kind == "model" else "json")
    elif Path(source).is_dir():
        if kind != "model":
            raise ValueError("only a model release can be a directory")
        blob, fmt = _tar_dir(Path(source)), "tar"
        if version is None:
            mf = Path(source) / "manifest.json"
            if mf.exists():
                version = str(json.loads(mf.read_text()).get("version") or "") or None
    elif kind == "model":
        blob, fmt = Path(source).read_bytes(), "file"
    else:
        raw = Path(source).read_bytes()
        json.loads(raw)  # a snapshot must at least be JSON
        blob, fmt = zlib.compress(raw, 9), "json+zlib"
    if not 1024 <= chunk_size <= MAX_MESSAGE_BYTES - 1024:
        raise ValueError(f"chunk size must be between 1024 and {MAX_MESSAGE_BYTES - 1024} bytes")
    sha = hashlib.sha256(blob).hexdigest()
    version = version or sha[:12]
    fields: dict[str, Any] = {"kind": kind, "version": version, "sha256": sha, "size": len(blob),
                              "chunks": max(1, -(-len(blob) // chunk_size)), "chunk_size": chunk_size,
                              "format": fmt, "created": time.time()}
    if key is not None:
        fields = sign_manifest(fields, key)
    else:
        fields["signature"] = None
    ReleaseManifest.model_validate({**fields, "signature": fields["signature"] or "unsigned"})
    return Release(manifest=fields, blob=blob, chunk_size=chunk_size)


def _retained_chunk_count(c: mqtt.Client, topic: str, wait_s: float) -> int:
    """The chunk count of the manifest the broker retains on ``topic`` (0: none, or unreadable)."""
    got: list[bytes] = []
    subscribed, arrived = threading.Event(), threading.Event()

    def on_message(client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == topic and msg.retain:
            got.append(bytes(msg.payload))
            arrived.set()

    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()
    c.subscribe(topic, qos=1)
    if subscribed.wait(wait_s * 5):
        arrived.wait(wait_s)  # a retained message follows the SUBACK at once; none: nothing retained
    c.unsubscribe(topic)
    c.on_message = None
    try:
        n = json.loads(got[-1]).get("chunks") if got else 0
    except (ValueError, AttributeError):
        return 0
    return n if isinstance(n, int) and 0 < n <= 100_000 else 0


def publish_release(settings: LinkSettings, topics: Topics, release: Release, *, everyone: bool = False,
                    chunks: list[bytes] | None = None, manifest: dict[str, Any] | bytes | None = None,
                    chunk_interval_s: float = 0.0, retain: bool = True, timeout: float = 30.0,
                    manifest_first: bool = False, stale_wait_s: float = 0.5) -> dict[str, Any]:
    """Publish the chunks, then the manifest (QoS 1, retained), waiting for every PUBACK; clear the chunk topics
    the retained release of that kind used beyond this one's count. Raises RuntimeError: the broker acknowledged
    nothing for ``timeout`` seconds. At most ``WINDOW`` chunks wait for their PUBACK at a time, so the chunks of
    a big release are never all in RAM (paho keeps every unacknowledged message).

    ``manifest_first``: the order before 2026-12-01 (a node online then downloads the previous release's
    retained chunks too; kept for tests of a slow upload). ``retain=False`` reaches only nodes that listen to
    the chunk topic already, since a node subscribes to it when the manifest comes."""
    kind = release.manifest["kind"]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=mqtt.MQTTv5)
    if settings.username is not None:
        c.username_pw_set(settings.username, settings.password)
    if settings.tls:
        c.tls_set_context(_tls_context(settings))
    try:
        c.connect(settings.host, settings.port, keepalive=30)
    except Exception as exc:
        raise RuntimeError(explain_connect_error(exc, settings)) from None
    c.loop_start()
    try:
        body = manifest if isinstance(manifest, bytes) else json.dumps(manifest or release.manifest).encode()
        manifest_topic = topics.release_manifest(kind, everyone=everyone)
        old_count = _retained_chunk_count(c, manifest_topic, stale_wait_s) if retain and stale_wait_s > 0 else 0
        infos: deque[mqtt.MQTTMessageInfo] = deque()

        def settle(keep: int) -> None:
            """Wait until at most ``keep`` messages are unacknowledged (each may take ``timeout``)."""
            while len(infos) > keep:
                info = infos[0]
                info.wait_for_publish(timeout)
                if not info.is_published():
                    raise RuntimeError(f"broker {settings.host}:{settings.port} did not acknowledge the release "
                                       f"in {timeout:.0f} s")
                infos.popleft()

        if manifest_first:
            infos.append(c.publish(manifest_topic, body, qos=1, retain=retain))
        payloads: Iterable[bytes] = chunks if chunks is not None else release.iter_chunks()
        sent = 0
        for i, payload in enumerate(payloads):
            if chunk_interval_s:
                time.sleep(chunk_interval_s)
            infos.append(c.publish(topics.release_chunk(kind, i, everyone=everyone), payload, qos=1, retain=retain))
            sent += 1
            settle(WINDOW)
        for i in range(max(sent, release.manifest["chunks"]), old_count):  # the previous release's rest
            infos.append(c.publish(topics.release_chunk(kind, i, everyone=everyone), b"", qos=1, retain=True))
            settle(WINDOW)
        if not manifest_first:  # the broker handles one client's messages in order: the chunks are retained first
            infos.append(c.publish(manifest_topic, body, qos=1, retain=retain))
        settle(0)
    finally:
        c.disconnect()
        c.loop_stop()
    return {"kind": kind, "version": release.manifest["version"], "sha256": release.manifest["sha256"],
            "size": release.manifest["size"], "chunks": release.manifest["chunks"],
            "topic": topics.release_manifest(kind, everyone=everyone)}

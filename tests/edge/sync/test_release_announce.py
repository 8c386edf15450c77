"""A release the node will refuse is refused at its announcement, before its chunks cross the store's uplink.

Over a real Mosquitto with real Ed25519 keys; the node's link runs through a byte-counting TCP relay, so what is
asserted is what the store's (metered) line would carry. Before 2026-12-01 the node listened to every release
chunk for good: an older release cost its full size on every announcement and on every new MQTT session (and every
retained release was downloaded again on each new session), even when it had been refused before.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.sync.link import LinkSettings
from edge.sync.publish import build_release, publish_release
from edge.sync.room import SyncOptions
from edge.sync.topics import Topics

TOPICS = Topics("shelfcast/v1", "s1", "node-1")
NOV30 = "2026-11-30T19:28:55+00:00"
OCT01 = "2026-10-01T08:00:00+00:00"


class LinkMeter:
    """A TCP relay between the node and the broker counting the bytes each way; it can cut the connection and
    turn new ones away (the store's line down)."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.down = 0  # broker -> node
        self.refuse = False
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.srv.accept()
            except OSError:
                return
            if self.refuse:
                a.close()
                continue
            b = socket.create_connection(self.target)
            with self._lock:
                self._conns += [a, b]
            threading.Thread(target=self._pump, args=(a, b, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(b, a, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            if down:
                with self._lock:
                    self.down += len(data)
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            _close(s)

    def quiet(self, at_least: float = 0.8) -> int:
        """Wait until nothing has come down for ``at_least`` s; the bytes so far."""
        last, deadline = -1, time.monotonic() + 20
        while last != self.down and time.monotonic() < deadline:
            last = self.down
            time.sleep(at_least)
        return self.down

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            _close(s)

    def close(self) -> None:
        self.cut()
        self.srv.close()


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@pytest.fixture
def meter(mosquitto: Any) -> Any:
    m = LinkMeter(mosquitto.port)
    yield m
    m.close()


def publish(mosquitto: Any, rel: Any) -> None:
    publish_release(LinkSettings(url=mosquitto.url, client_id="announce-publisher"), TOPICS, rel)


def catalogue(tmp: Path, name: str, n: int = 3000) -> Path:
    """A catalogue snapshot of ~100 KB compressed (random names do not compress): several 16 KB chunks."""
    f = tmp / f"{name}.json"
    f.write_text(json.dumps({"products": [{"sku": f"sku-{i}", "name": f"{name} {os.urandom(16).hex()}", "price": 1.0}
                                          for i in range(n)]}))
    return f


def model_dir(fakes: Any, tmp: Path, version: str, created: str) -> Path:
    d = fakes.write_model(tmp / f"m-{version}", version)
    man = json.loads((d / "manifest.json").read_text())
    man["created"] = created
    (d / "manifest.json").write_text(json.dumps(man))
    return d


def reports(upstream: Any, steps: Any, version: str, step: str) -> list[Any]:
    return [s for s in steps(upstream, version) if s[0] == step]


def wait_report(upstream: Any, steps: Any, version: str, step: str, timeout: float = 15.0) -> tuple[str, bool, str]:
    got = upstream.wait_for(lambda: reports(upstream, steps, version, step), timeout)
    assert got, f"no {step!r} report for {version}; got {steps(upstream, version)}"
    return got[-1]  # type: ignore[no-any-return]


def new_session(node: Any, meter: Any, expiry_s: float) -> None:
    """The store's line is down longer than the session expiry: the node comes back on a new MQTT session, and
    the broker sends it every retained message again."""
    connects = node.room.link.stats["connects"]
    meter.refuse = True
    meter.cut()
    time.sleep(expiry_s + 2.0)
    meter.refuse = False
    deadline = time.monotonic() + 15
    while node.room.link.stats["connects"] == connects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.room.link.stats["connects"] > connects, "the node did not reconnect"


def test_an_older_snapshot_is_refused_at_its_announcement_and_its_replays_cost_nothing(
        mosquitto: Any, meter: Any, node_config: Any, keys: Any, start_node: Any, upstream: Any, steps: Any,
        tmp_path: Path) -> None:
    node = start_node(node_config(meter.url, public_key=keys.public_path),
                      options=SyncOptions(session_expiry_s=1, backoff_max_s=1.0))
    new = build_release("catalogue", catalogue(tmp_path, "new"), "2026.12.01-000000", keys.private,
                        chunk_size=16 * 1024)
    old = build_release("catalogue", catalogue(tmp_path, "old"), "2026.11.01-000000", keys.private,
                        chunk_size=16 * 1024)
    size = old.manifest["size"]
    assert size > 60_000 and old.manifest["chunks"] >= 4
    publish(mosquitto, new)
    wait_report(upstream, steps, "2026.12.01-000000", "applied")
    b0 = meter.quiet()
    # last month's catalogue, correctly signed, announced (captured and re-published, or a cloud job gone wrong)
    publish(mosquitto, old)
    detail = wait_report(upstream, steps, "2026.11.01-000000", "refused")[2]
    first = meter.quiet() - b0
    assert first < 2_000, f"{first} bytes came down for a {size}-byte release refused at its announcement"
    assert "older than the newest accepted 2026.12.01-000000" in detail and "nothing was downloaded" in detail, detail
    assert "--kind catalogue" in detail, detail  # still names how to roll back on purpose
    # replayed twice more: no download, no second report
    for _ in range(2):
        publish(mosquitto, old)
    replays = meter.quiet() - b0 - first
    assert replays < 2_000, f"{replays} bytes came down for two replays of a refused {size}-byte release"
    assert node.room.releases.stats["chunks"] == new.manifest["chunks"]  # only the accepted one was staged
    assert len(reports(upstream, steps, "2026.11.01-000000", "refused")) == 1
    assert "manifest" not in [s[0] for s in steps(upstream, "2026.11.01-000000")]
    assert node.room.releases.listening() == set()  # not listening to any chunk topic now
    # the line is down past the session expiry: a new session gets every retained message again
    b1 = meter.quiet()
    new_session(node, meter, 1.0)
    again = meter.quiet() - b1
    assert again < 3_000, f"{again} bytes came down on a new session (retained: the refused {size}-byte release)"
    assert len(reports(upstream, steps, "2026.11.01-000000", "refused")) == 1  # reported once, not per reconnect
    node.store.flush()
    product = node.store.product("sku-0")
    assert product is not None and product.name.startswith("new ")
    # and a newer release after all that is still downloaded and applied
    newer = build_release("catalogue", catalogue(tmp_path, "newer", n=50), "2026.12.02-000000", keys.private)
    publish(mosquitto, newer)
    wait_report(upstream, steps, "2026.12.02-000000", "applied")
    assert node.store.product("sku-0").name.startswith("newer ")  # type: ignore[union-attr]
    assert node.room.releases.listening() == set()


def test_an_older_model_is_downloaded_once_and_its_replays_are_not(
        mosquitto: Any, meter: Any, node_config: Any, keys: Any, start_node: Any, upstream: Any, steps: Any,
        fakes: Any, tmp_path: Path) -> None:
    node = start_node(node_config(meter.url, public_key=keys.public_path),
                      options=SyncOptions(session_expiry_s=1, backoff_max_s=1.0))
    publish(mosquitto, build_release("model", model_dir(fakes, tmp_path, "2026.11.30-v5", NOV30), None,
                                     keys.private))
    wait_report(upstream, steps, "2026.11.30-v5", "swapped")
    old = build_release("model", model_dir(fakes, tmp_path, "2026.10.01", OCT01), None, keys.private)
    size = old.manifest["size"]
    b0 = meter.quiet()
    publish(mosquitto, old)
    # a model is ordered by the created inside its archive (the announcement's is not signed): downloaded once
    detail = wait_report(upstream, steps, "2026.10.01", "refused")[2]
    assert f"(created {OCT01}) is older than the serving 2026.11.30-v5" in detail, detail
    node.room.releases.wait_idle()
    first = meter.quiet() - b0
    assert first > size  # the one download the rule needs
    for _ in range(2):
        publish(mosquitto, old)
    replays = meter.quiet() - b0 - first
    assert replays < 2_000, f"{replays} bytes came down for two replays of a refused {size}-byte model"
    b1 = meter.quiet()
    new_session(node, meter, 1.0)
    again = meter.quiet() - b1
    assert again < 3_000, f"{again} bytes came down on a new session (retained: the refused {size}-byte model)"
    assert len(reports(upstream, steps, "2026.10.01", "refused")) == 1
    assert node.rec.model.version == "2026.11.30-v5"


def test_an_upgraded_node_on_its_old_session_drops_the_chunk_wildcard(
        mosquitto: Any, meter: Any, node_config: Any, keys: Any, start_node: Any, upstream: Any, steps: Any,
        tmp_path: Path) -> None:
    # the session a node from before 2026-12-01 left at the broker: every chunk topic, subscribed for good
    old = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="shelfcast-s1-node-1", protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    old.connect("127.0.0.1", mosquitto.port, clean_start=False, properties=props)
    old.loop_start()
    done = threading.Event()
    old.on_subscribe = lambda *a: done.set()
    subs = TOPICS.subscriptions()  # as the node subscribed them before 2026-12-01: chunks included
    assert TOPICS.base + "/release/+/chunk/+" in subs and TOPICS.store_base + "/release/+/chunk/+" in subs
    old.subscribe([(t, 1) for t in subs])
    assert done.wait(5)
    old.disconnect()
    old.loop_stop()
    node = start_node(node_config(meter.url, public_key=keys.public_path))
    publish(mosquitto, build_release("stock", _stock(tmp_path, "new"), "2026.12.01-0900", keys.private))
    wait_report(upstream, steps, "2026.12.01-0900", "applied")
    b0 = meter.quiet()
    older = build_release("stock", _stock(tmp_path, "old", n=4000), "2026.11.01-0900", keys.private,
                          chunk_size=16 * 1024)
    assert older.manifest["size"] > 50_000
    publish(mosquitto, older)
    wait_report(upstream, steps, "2026.11.01-0900", "refused")
    got = meter.quiet() - b0
    assert got < 2_000, f"{got} bytes came down: the session's old chunk wildcard is still there"
    assert node.room.link.stats["connects"] >= 1


def _stock(tmp: Path, name: str, n: int = 10) -> Path:
    f = tmp / f"stock-{name}.json"
    f.write_text(json.dumps({"levels": {f"sku-{os.urandom(12).hex()}": i for i in range(n)}}))
    return f


def test_an_unsigned_release_is_refused_unread_and_does_not_claim_its_version(
        mosquitto: Any, meter: Any, node_config: Any, keys: Any, start_node: Any, upstream: Any, steps: Any,
        tmp_path: Path) -> None:
    node = start_node(node_config(meter.url, public_key=keys.public_path))
    b0 = meter.quiet()
    # anyone who can publish on the release topics, with no signing key, under the version the cloud will use
    forged = build_release("catalogue", catalogue(tmp_path, "forged"), "2026.12.01-000000", None,
                           chunk_size=16 * 1024)
    publish(mosquitto, forged)
    detail = wait_report(upstream, steps, "2026.12.01-000000", "refused")[2]
    got = meter.quiet() - b0
    assert got < 2_000, f"{got} bytes came down for an unsigned {forged.manifest['size']}-byte release"
    assert "unsigned" in detail and "nothing was downloaded" in detail, detail
    # the signed release under that version gets in (before: "handled here already, with another sha256")
    real = build_release("catalogue", catalogue(tmp_path, "real", n=50), "2026.12.01-000000", keys.private)
    publish(mosquitto, real)
    wait_report(upstream, steps, "2026.12.01-000000", "applied")
    node.store.flush()
    assert node.store.product("sku-0").name.startswith("real ")  # type: ignore[union-attr]


def test_a_release_refused_for_want_of_a_key_is_installed_once_the_key_is_provisioned(
        mosquitto: Any, node_config: Any, keys: Any, start_node: Any, upstream: Any, steps: Any,
        tmp_path: Path) -> None:
    rel = build_release("catalogue", catalogue(tmp_path, "c", n=50), "2026.12.01-000000", keys.private)
    first = start_node(node_config(mosquitto.url))  # model.public_key not set yet
    publish(mosquitto, rel)
    detail = wait_report(upstream, steps, "2026.12.01-000000", "refused")[2]
    assert "no signing key provisioned" in detail and "model.public_key" in detail, detail
    first.close()
    first.close = lambda: None  # stopped here; the fixture's teardown must not stop it again
    # the technician sets model.public_key and restarts; the cloud publishes the release again
    node = start_node(node_config(mosquitto.url, public_key=keys.public_path))
    publish(mosquitto, rel)
    wait_report(upstream, steps, "2026.12.01-000000", "applied")  # before: skipped for good as "handled"
    node.store.flush()
    assert node.store.product("sku-0").name.startswith("c ")  # type: ignore[union-attr]


def test_a_release_with_no_room_on_the_disk_is_not_downloaded(
        mosquitto: Any, meter: Any, node_config: Any, keys: Any, start_node: Any, upstream: Any, steps: Any,
        fakes: Any, tiny_disk: Path) -> None:
    node = start_node(node_config(meter.url, data_dir=tiny_disk, public_key=keys.public_path))
    rel = build_release("model", model_dir(fakes, tiny_disk.parent, "2026.12.01-v6", NOV30), None, keys.private)
    b0 = meter.quiet()
    publish(mosquitto, rel)
    detail = wait_report(upstream, steps, "2026.12.01-v6", "refused")[2]
    assert "no room" in detail and "free some space" in detail and "re-publish" in detail, detail
    got = meter.quiet() - b0
    assert got < 2_000, f"{got} bytes came down for a release the disk has no room for"
    publish(mosquitto, rel)  # announced again: not reported again
    meter.quiet()
    assert len(reports(upstream, steps, "2026.12.01-v6", "refused")) == 1
    assert not (tiny_disk / "sync" / "staging" / "model" / "2026.12.01-v6").exists()
    assert node.rec.model.version == "v1"


def test_a_reupload_whose_chunks_come_after_the_old_retained_ones_is_installed(
        mosquitto: Any, node_config: Any, keys: Any, start_node: Any, upstream: Any, steps: Any, fakes: Any,
        tmp_path: Path) -> None:
    import paho.mqtt.publish as pub

    from edge.sync.release import pack_chunk

    node = start_node(node_config(mosquitto.url, public_key=keys.public_path))
    rel = build_release("model", fakes.write_model(tmp_path / "v6", "v6"), None, keys.private, chunk_size=64 * 1024)
    chunks = rel.chunks()
    last = len(chunks) - 1
    broken = [*chunks[:last], pack_chunk("model", "v6", last, len(chunks), rel.blob[last * rel.chunk_size:][:-1000])]
    publish_release(LinkSettings(url=mosquitto.url, client_id="announce-publisher"), TOPICS, rel, chunks=broken)
    assert "truncated" in wait_report(upstream, steps, "v6", "refused")[2]
    node.room.releases.wait_idle()
    # the re-upload: its manifest first (the node listens again and the broker sends it the old chunks it retains,
    # the broken one too), its chunks a moment later
    publish_release(LinkSettings(url=mosquitto.url, client_id="announce-publisher"), TOPICS, rel, chunks=[])
    time.sleep(1.0)
    node.room.releases.wait_idle()
    for i, c in enumerate(chunks):
        pub.single(TOPICS.release_chunk("model", i), c, qos=1, retain=True, hostname="127.0.0.1",
                   port=mosquitto.port, protocol=5)
    wait_report(upstream, steps, "v6", "swapped")
    assert node.rec.model.version == "v6"
    assert len(reports(upstream, steps, "v6", "refused")) == 1  # the old chunks were not refused a second time
    assert node.room.releases.listening() == set()


def test_a_download_stalled_for_a_day_is_dropped_and_its_chunk_topic_left(tmp_path: Path, keys: Any,
                                                                          fakes: Any) -> None:
    from edge.sync.release import ReleaseManager

    mono = [1000.0]
    subs: list[list[str]] = []
    unsubs: list[list[str]] = []
    rm = ReleaseManager(tmp_path / "node", public_key=keys.public_path, loader=None, get_model=lambda: None,
                        set_model=lambda m: None, report=lambda *a: None, mono=lambda: mono[0], topics=TOPICS,
                        subscribe=subs.append, unsubscribe=unsubs.append)
    try:
        rm.on_connected(False)
        rel = build_release("model", fakes.write_model(tmp_path / "v4", "v4"), None, keys.private,
                            chunk_size=64 * 1024)
        rm.on_manifest("model", json.dumps(rel.manifest).encode(), source=TOPICS.release_manifest("model"))
        chunk_filter = TOPICS.base + "/release/model/chunk/+"
        assert subs == [[chunk_filter]] and rm.listening() == {chunk_filter}
        for i, c in enumerate(rel.chunks()[:2]):  # the line drops before the rest
            rm.on_chunk("model", i, c)
        mono[0] += 3600
        assert any("stalled: 2 of" in x for x in rm.check_stalled())
        assert rm.listening() == {chunk_filter}  # an hour: still waiting for the rest
        mono[0] += 86400
        dropped = rm.check_stalled()
        assert dropped and "dropped: 2 of" in dropped[0] and "re-publish" in dropped[0], dropped
        assert not (rm.staging / "model" / "v4").exists()
        assert unsubs[-1] == [chunk_filter] and rm.listening() == set()
    finally:
        rm.close()


def test_a_new_release_costs_its_own_size_and_leaves_no_older_chunks_retained(
        mosquitto: Any, meter: Any, node_config: Any, keys: Any, start_node: Any, upstream: Any, steps: Any,
        tmp_path: Path, retained: Any) -> None:
    node = start_node(node_config(meter.url, public_key=keys.public_path))
    settings = LinkSettings(url=mosquitto.url, client_id="announce-publisher")
    a = build_release("catalogue", catalogue(tmp_path, "a"), "2026.12.01-000000", keys.private, chunk_size=8 * 1024)
    publish_release(settings, TOPICS, a, chunk_interval_s=0.02)  # an upload that takes a while, as over a WAN
    wait_report(upstream, steps, "2026.12.01-000000", "applied")
    b0 = meter.quiet()
    b = build_release("catalogue", catalogue(tmp_path, "b", n=1000), "2026.12.02-000000", keys.private,
                      chunk_size=8 * 1024)
    assert b.manifest["chunks"] < a.manifest["chunks"] - 2
    publish_release(settings, TOPICS, b, chunk_interval_s=0.02)
    wait_report(upstream, steps, "2026.12.02-000000", "applied")
    got = meter.quiet() - b0
    # its own chunks once; with the manifest published first, the node subscribed while the broker still retained
    # most of the previous release's chunks, and got those too
    assert got < b.manifest["size"] * 1.1 + 4_000, f"{got} bytes came down for a {b.manifest['size']}-byte release"
    # the previous release's chunks beyond the new count are no longer retained: no node downloads them again
    assert retained(mosquitto.port, TOPICS.release_chunk("catalogue", b.manifest["chunks"]), 1.0) is None
    assert retained(mosquitto.port, TOPICS.release_chunk("catalogue", a.manifest["chunks"] - 1), 1.0) is None
    assert retained(mosquitto.port, TOPICS.release_chunk("catalogue", b.manifest["chunks"] - 1), 1.0) is not None
    assert node.room.releases.stats["chunks_skipped"] == 0


def test_a_release_refused_for_its_signature_after_the_download_is_checked_again_under_another_key(
        tmp_path: Path, keys: Any) -> None:
    """The key file changed while the release was downloading (a technician fixing model.public_key): the
    refusal holds for the key it was made under only."""
    from edge.sync.release import ReleaseManager

    applied: list[str] = []
    got: list[tuple[str, str, str, bool, str]] = []
    rm = ReleaseManager(tmp_path / "node", public_key=keys.public_path, loader=None, get_model=lambda: None,
                        set_model=lambda m: None, report=lambda *a: got.append(a),
                        apply_snapshot=lambda kind, snap: applied.append(kind))
    try:
        rel = build_release("catalogue", catalogue(tmp_path, "c", n=50), "2026.12.01-000000", keys.private,
                            chunk_size=1024)
        good = keys.public_path.read_bytes()
        rm.on_manifest("catalogue", json.dumps(rel.manifest).encode())  # passes: signed by the trusted key
        keys.public_path.write_bytes(keys.other.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        for i, c in enumerate(rel.chunks()):
            rm.on_chunk("catalogue", i, c)
        rm.wait_idle()
        refused = [a[4] for a in got if a[2] == "refused"]
        assert len(refused) == 1 and "bad signature" in refused[0], got
        assert applied == []
        keys.public_path.write_bytes(good)  # the right key again; the cloud publishes the release again
        rm.on_manifest("catalogue", json.dumps(rel.manifest).encode())
        for i, c in enumerate(rel.chunks()):
            rm.on_chunk("catalogue", i, c)
        rm.wait_idle()
        assert applied == ["catalogue"], got  # before: skipped for good as handled
    finally:
        rm.close()

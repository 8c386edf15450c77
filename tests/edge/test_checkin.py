"""A check-in always reaches the shopper's screen, on a real node (``shelfcast run`` on the demo layout, camera
off, the dairy shelves' controllers simulated behind real ptys, real HTTP, the real SQLite file).

Old code: at a screen that served nobody (camera off, or nobody near it) the answer had ``"session": null``,
fusion opened a visit with the customer, the recommender's visit never got the customer: the screen kept the
zone's popular items, nothing was stored or sent up, and the shopper's next picks went to an anonymous visit.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.app import bundled_catalogue
from edge.fusion import hash_customer
from edge.store import Profile, Store
from firmware_bridge.sim import SimulatedStore

SALT = "acme-checkin-salt-5d1e8f0a9b7c3e21"
TOKEN = "tok-checkin-0123456789abcdef"
# the ranker's reasons that come from the customer's profile history (edge/ranking/ranker.py ``_reasons``)
PERSONAL = {"you buy this often", "bought before", "picked for you"}
DAIRY = {"ctrl-dairy-1": "dairy-1", "ctrl-dairy-2": "dairy-2"}
# CARD-A buys dairy, CARD-B bakery and drinks; CARD-NEW has no profile (cold start)
HISTORY = {"CARD-A": ["1029743", "995242", "1106523", "840361", "1126899"],
           "CARD-B": ["883404", "826249", "951590", "5569230", "1053690"]}


def h(card: str) -> str:
    return hash_customer(card, SALT)


class Node:
    """A ``shelfcast run`` process on the demo layout with profiles in its store cache."""

    def __init__(self, procs: Any, tmp: Path, demo_yaml: Any, sim: SimulatedStore, *, cloud: str | None = None,
                 **fusion: Any) -> None:
        (tmp / "salt").write_text(SALT + "\n")
        (tmp / "token").write_text(TOKEN + "\n")
        self.data = tmp / "data"
        self.db = self.data / "shelfcast.db"
        now = time.time()
        with Store(self.db) as st:  # the store cache's profiles (the cloud's profile sync puts them there)
            st.upsert_profiles([Profile(h(card), {"age": "35-44"},
                                        tuple((sku, now - 86400.0 * (i + 1), 2.0) for i, sku in enumerate(skus * 3)),
                                        visits=6, updated=now) for card, skus in HISTORY.items()]).result()
        sections: dict[str, Any] = dict(
            node={"store_id": "s1", "node_id": "n1", "data_dir": str(self.data), "timezone": "America/New_York"},
            camera={"enabled": False},
            shelves={"enabled": True, "ports": [{"port": sim.port(c)} for c in DAIRY], "reconnect_max_s": 0.5},
            signage={"host": "127.0.0.1", "port": 0, "admin_token": f"file:{tmp / 'token'}"},
            fusion={"customer_salt": f"file:{tmp / 'salt'}", **fusion})
        if cloud is not None:
            sections["mqtt"] = {"cloud": {"url": cloud}}
        self.cfg = demo_yaml(tmp, **sections)
        self.procs = procs
        self.p = procs.start(self.cfg)
        self.out = procs.wait_running(self.p)
        found = re.search(r"signage on http://127\.0\.0\.1:(\d+)/", self.out)  # port 0: the one it bound
        assert found, self.out
        self.port = int(found.group(1))

    def stop(self) -> str:
        self.out += self.procs.stop(self.p)
        return self.out

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def screen(self, sid: str = "dairy-screen") -> Any:
        return self.get(f"/api/screens/{sid}/recommendations")

    def check_in(self, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/checkin", data=json.dumps(body).encode(),
                                     method="POST", headers={"Authorization": f"Bearer {TOKEN}",
                                                             "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{e.code}: {e.read()!r}") from None

    def wait_screen(self, pred: Any, sid: str = "dairy-screen", timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        cur = self.screen(sid)
        while not pred(cur):
            if time.monotonic() > deadline:
                raise AssertionError(f"{sid} never matched; it shows {cur}")
            time.sleep(0.2)
            cur = self.screen(sid)
        return cur

    def pick(self, sim: SimulatedStore, controller: str, slot: int) -> None:
        """A shopper takes one unit off ``slot``; returns once the node has turned it into a shopper event."""
        deadline = time.monotonic() + 20
        # the slot's detector needs a settled baseline first (~3 s of samples at 20 Hz)
        while (sh := self.get("/api/health")["rooms"])["shelves"]["controllers"][controller]["frames"] < 60:
            assert time.monotonic() < deadline, f"{controller} sends no samples: {sh['shelves']}"
            time.sleep(0.2)
        seen = sh["recommend"]["events"]
        sim.pick(controller, slot)
        while (sh := self.get("/api/health")["rooms"])["recommend"]["events"] <= seen:
            assert time.monotonic() < deadline, f"the pick never reached the node: {sh['shelves']}"
            time.sleep(0.2)

    def rows(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        """After ``stop``: rows of the node's real SQLite file."""
        conn = sqlite3.connect(self.db)
        conn.row_factory = sqlite3.Row
        try:
            return list(conn.execute(sql, args))
        finally:
            conn.close()


class Stream:
    """A screen's SSE stream read on a thread: the ``recommendations`` frames as they arrive."""

    def __init__(self, port: int, sid: str = "dairy-screen") -> None:
        self.frames: list[dict[str, Any]] = []
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.request("GET", f"/api/screens/{sid}/stream")
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        event = ""
        try:
            for raw in self.resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "recommendations":
                    self.frames.append(json.loads(line[5:]))
        except (OSError, ValueError, http.client.HTTPException):
            pass

    def wait(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.frames) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.frames) >= n, f"{len(self.frames)} frames, wanted {n}: {self.frames}"
        return self.frames

    def close(self) -> None:
        sock = self.conn.sock
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)  # the reader sees the end of the stream and returns
        self.t.join(5)
        self.conn.close()


def personal(rec: dict[str, Any]) -> list[str]:
    return [i["reason"] for i in rec["items"] if i["reason"] in PERSONAL]


@pytest.fixture
def sim() -> Iterator[SimulatedStore]:
    """The demo's two dairy shelf controllers, stocked with the catalogue's unit weights, behind real ptys."""
    weights = {p.sku: p.unit_weight_g for p in bundled_catalogue()}
    slots = {"ctrl-dairy-1": ["1029743", "995242", "1106523", "981760", "1133018", "908531"],
             "ctrl-dairy-2": ["840361", "1126899", "862349", "1058997", "1070820", "923746"]}
    with SimulatedStore(seed=7) as s:
        for cid, skus in slots.items():
            s.add_controller(cid, slot_count=6, unit_g=[float(weights.get(k) or 250.0) for k in skus], stock=[40] * 6)
        yield s


def test_a_check_in_at_a_screen_that_serves_nobody_shows_the_shoppers_items_at_the_next_push(
        tmp_path: Path, node_process: Any, demo_yaml: Any, sim: SimulatedStore) -> None:
    node = Node(node_process, tmp_path, demo_yaml, sim)
    try:
        before = node.screen()
        assert before["session"] is None and not personal(before), before  # nobody there: popular items
        stream = Stream(node.port)
        try:
            first = stream.wait(1)[0]
            answer = node.check_in({"customer": "CARD-A", "screen": "dairy-screen"})
            frames = stream.wait(2)
        finally:
            stream.close()
        pushed = next(f for f in frames if f["seq"] > first["seq"])  # the first push after the check-in
        assert personal(pushed), f"the screen still shows the zone's popular items: {pushed}"
        sid = answer["session"]
        assert sid and pushed["session"] == sid, (answer, pushed)
        now = node.screen()
        assert now["session"] == sid and len(personal(now)) >= 2, now
        # the same customer scanning again keeps their visit
        assert node.check_in({"customer": "CARD-A", "screen": "dairy-screen"})["session"] == sid
        # a later pick at a dairy shelf (camera off: shelf data alone) lands on the checked-in visit
        node.pick(sim, "ctrl-dairy-2", 0)  # 840361
        after = node.screen()
        assert after["session"] == sid and personal(after), after
    finally:
        node.stop()
    checkins = node.rows("SELECT session, payload FROM events WHERE type = 'checkin'")
    assert [r["session"] for r in checkins] == [sid, sid], "each check-in is stored once, on the visit it bound"
    assert all(json.loads(r["payload"])["customer"] == h("CARD-A") for r in checkins)
    picks = node.rows("SELECT session, payload FROM events WHERE type = 'shopper'")
    assert [(r["session"], json.loads(r["payload"])["sku"]) for r in picks] == [(sid, "840361")], \
        "the later pick went to another visit"


def test_two_shoppers_at_one_screen_an_ended_visit_and_a_cold_start(tmp_path: Path, node_process: Any,
                                                                    demo_yaml: Any, sim: SimulatedStore) -> None:
    node = Node(node_process, tmp_path, demo_yaml, sim, session_idle_s=4.0)
    try:
        a = node.check_in({"customer": "CARD-A", "screen": "dairy-screen"})["session"]
        b = node.check_in({"customer": "CARD-B", "screen": "dairy-screen"})["session"]
        on_b = node.screen()
        assert personal(on_b), f"the second shopper's screen shows no items of theirs: {on_b}"
        assert a and b and a != b, "the second shopper took over the first one's visit"
        assert on_b["session"] == b, on_b
        assert node.check_in({"customer": "CARD-A", "screen": "dairy-screen"})["session"] == a  # A's own again
        assert node.screen()["session"] == a
        # A's visit ends (no activity for session_idle_s): the screen goes back to the zone's popular items
        node.wait_screen(lambda r: r["session"] is None, timeout=30)
        # a check-in naming the ended visit opens a new one at the screen; the ended one is not reopened
        again = node.check_in({"customer": "CARD-A", "session": a, "screen": "dairy-screen"})["session"]
        assert again and again not in (a, b), again
        rec = node.screen()
        assert rec["session"] == again and personal(rec), rec
        # a customer without a profile: still bound (stored, the screen serves the visit), popular items for now
        cold = node.check_in({"customer": "CARD-NEW", "screen": "bakery-screen"})["session"]
        assert cold, "a cold-start customer got no visit"
        rec = node.screen("bakery-screen")
        assert rec["session"] == cold and rec["items"] and not personal(rec), rec
        node.wait_screen(lambda r: r["session"] is None, sid="bakery-screen", timeout=30)
    finally:
        node.stop()
    stored = {r["id"]: r for r in node.rows("SELECT id, customer, ended FROM sessions")}
    for sid, card in ((a, "CARD-A"), (b, "CARD-B"), (again, "CARD-A"), (cold, "CARD-NEW")):
        assert sid in stored and stored[sid]["customer"] == h(card), (sid, card, dict(stored.get(sid) or {}))
    checkins = [(r["session"], json.loads(r["payload"])["customer"])
                for r in node.rows("SELECT session, payload FROM events WHERE type = 'checkin' ORDER BY t")]
    assert checkins == [(a, h("CARD-A")), (b, h("CARD-B")), (a, h("CARD-A")), (again, h("CARD-A")),
                        (cold, h("CARD-NEW"))], checkins


def _dicts(obj: Any) -> Iterator[dict[str, Any]]:
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _dicts(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _dicts(v)


def upstream_check_ins(spy: Any) -> dict[str, str | None]:
    """customer hash -> session of each check-in the node sent up (outbox batches on ``…/events``)."""
    out: dict[str, str | None] = {}
    for topic, data in spy.messages():
        if topic != "shelfcast/v1/s1/n1/events":
            continue
        for line in data.splitlines() or [data]:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            for d in _dicts(obj):
                if d.get("type") == "checkin" and "customer" in d:
                    out[d["customer"]] = d.get("session")
    return out


def test_the_cloud_check_in_and_the_http_one_behave_the_same(tmp_path: Path, node_process: Any, demo_yaml: Any,
                                                             sim: SimulatedStore, mosquitto: Any,
                                                             mqtt_spy: Any) -> None:
    spy = mqtt_spy(mosquitto.port, "shelfcast/v1/s1/n1/#")
    node = Node(node_process, tmp_path, demo_yaml, sim, cloud=mosquitto.url)
    try:
        deadline = time.monotonic() + 20
        while node.get("/api/health")["rooms"]["sync"]["status"] != "ok":  # linked to the cloud broker
            assert time.monotonic() < deadline, "the node did not reach the cloud broker"
            time.sleep(0.2)
        # the cloud: a loyalty app's check-in at the drinks screen, already hashed (``cmd`` ``check_in``)
        cmd = {"id": "c0ffee42", "command": "check_in", "args": {"customer": h("CARD-B"), "screen": "drinks-screen"}}
        spy.client.publish("shelfcast/v1/s1/n1/cmd", json.dumps(cmd), qos=1)
        # the store's scanner: a raw loyalty id at the dairy screen (``POST /api/checkin``)
        by_http = node.check_in({"customer": "CARD-A", "screen": "dairy-screen"})["session"]
        drinks = node.wait_screen(lambda r: bool(personal(r)), sid="drinks-screen", timeout=15)
        dairy = node.screen()
        assert dairy["session"] == by_http and personal(dairy), dairy
        deadline = time.monotonic() + 20
        sent = upstream_check_ins(spy)
        while len(sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            sent = upstream_check_ins(spy)
        results = [json.loads(d) for t, d in spy.messages() if t.endswith("/cmd/result")]
    finally:
        node.stop()
    by_cloud = drinks["session"]
    assert by_cloud and by_http and by_cloud != by_http
    assert sent == {h("CARD-B"): by_cloud, h("CARD-A"): by_http}, f"sent up: {sent}"
    done = [r for r in _flat(results) if r.get("cmd") == "c0ffee42"]
    assert done and done[0]["ok"] and by_cloud in done[0]["detail"], results
    stored = {r["session"]: json.loads(r["payload"])["customer"]
              for r in node.rows("SELECT session, payload FROM events WHERE type = 'checkin'")}
    assert stored == {by_cloud: h("CARD-B"), by_http: h("CARD-A")}, stored


def _flat(results: list[Any]) -> list[dict[str, Any]]:
    return [d for r in results for d in _dicts(r) if d.get("type") == "cmd_result"]

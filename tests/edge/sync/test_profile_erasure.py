"""A shopper's right to erasure reaches the node: ``profiles/delta`` with ``delete`` (salted hashes) removes the
profile and clears the hash from stored visits, over a real Mosquitto. Before (found by the privacy audit) a
profile could only be added or replaced, never removed from a node."""

from __future__ import annotations

import json
import time
from typing import Any

import paho.mqtt.publish as pub

from edge.sync.topics import Topics

TOPICS = Topics("shelfcast/v1", "s1", "node-1")
A, B = "a1" * 32, "b2" * 32


def send(mosquitto: Any, payload: Any) -> None:
    pub.single(TOPICS.delta("profiles"), json.dumps(payload).encode(), qos=1, hostname="127.0.0.1",
               port=mosquitto.port, protocol=5)


def test_a_profiles_delta_with_delete_erases_the_shopper(node: Any, mosquitto: Any, upstream: Any,
                                                         wait_for: Any) -> None:
    send(mosquitto, {"id": "p1", "profiles": [{"customer": A, "demographics": {"age": "35-44"}},
                                              {"customer": B, "demographics": {"age": "25-34"}}]})
    assert wait_for(lambda: node.store.profile(A) is not None and node.store.profile(B) is not None)
    node.store.save_session("visit-a", started=time.time() - 600, ended=time.time() - 60, zone="dairy",
                            customer=A, items=["p1"])
    node.store.flush()
    send(mosquitto, {"id": "p2", "delete": [A]})
    assert wait_for(lambda: node.store.profile(A) is None), "the profile was not erased"
    node.store.flush()
    assert node.store.query("SELECT customer FROM profiles") == [{"customer": B}]
    assert node.store.query("SELECT customer, items FROM sessions WHERE id = 'visit-a'") == [
        {"customer": None, "items": '["p1"]'}]  # the visit stays anonymous; the hash is gone
    # a raw id in delete is refused whole (and echoed nowhere), as in profiles[]
    send(mosquitto, {"id": "p3", "delete": [B, "4242424242"]})
    errs = upstream.wait_for(lambda: [e for e in upstream.of("/error") if "64 lowercase hex" in e["reason"]], 10)
    assert errs and errs[-1]["topic"].endswith("profiles/delta") and "4242424242" not in str(errs[-1]), errs
    assert node.store.profile(B) is not None
    # nothing to do is an error too, not a silent no-op
    send(mosquitto, {"id": "p4"})
    assert upstream.wait_for(lambda: [e for e in upstream.of("/error") if "'profiles' or 'delete'" in e["reason"]], 10)
